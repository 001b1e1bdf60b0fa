//! A reversed-label trie over rule patterns: `api.github.com` is stored as com -> github ->
//! api. A lookup walks one node per label of the queried name, so it costs O(labels)
//! whatever the number of rules.
//!
//! Memory is the constraint at a million rules, so nodes hold no `String`s: labels live in
//! one byte arena, and the child edges are a single hash table of node ids.
//!
//! Latency is the other constraint: walking parent to child makes each label's cache misses
//! wait for the previous label's. So a node is keyed by a hash of its whole name, chained
//! label by label (`h(com)`, `h(h(com), github)`, ...), which needs no memory access. The
//! lookup probes every level without waiting, and then checks the chain (parents and
//! labels); a 64-bit collision only costs a slower exact walk.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

/// The most rules the trie can number (slot values keep two flag bits).
pub const MAX_RULES: usize = (1 << 30) - 1;

/// The most labels in a name (253 octets, one-octet labels and dots).
const MAX_LABELS: usize = 127;
/// The chained hash of the root (the empty name).
const ROOT_HASH: u64 = 0;

/// Which of a node's rule lists a pattern goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Rules that match the node's name itself (`example.com`, `.example.com`).
    Exact,
    /// Rules that match names strictly below the node (`*.example.com`, `.example.com`).
    Below,
}

/// A node's rule list, packed into a u32: empty, one rule, or an index into the trie's
/// overflow lists. Most nodes hold one rule, so most lookups touch no list at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rules(u32);

impl Rules {
    const EMPTY: Rules = Rules(u32::MAX);
    /// Set when the value indexes `NameTrie::lists`.
    const LIST: u32 = 1 << 31;
    /// Set when the list ends with a rule without conditions: later rules can never win.
    const CLOSED: u32 = 1 << 30;
    const INDEX: u32 = Self::CLOSED - 1;
}

/// One name in the trie.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// The chained hash of the whole name (see the module docs); the table's key.
    hash: u64,
    /// The parent node's id (the root is its own parent).
    parent: u32,
    /// Where this node's label starts in the arena.
    label_start: u32,
    /// The label's length (at most 63).
    label_len: u8,
    /// Rules matching this name.
    exact: Rules,
    /// Rules matching names below this one.
    below: Rules,
}

/// The trie; see the module docs.
pub struct NameTrie {
    /// All nodes; node 0 is the root (the empty name).
    nodes: Vec<Node>,
    /// Every node's label, back to back.
    labels: Vec<u8>,
    /// Every node but the root, by the hash of its name.
    children: HashTable<u32>,
    /// The edge hash, randomly seeded per process against crafted collisions.
    hasher: DefaultHashBuilder,
    /// Rule lists of nodes with more than one candidate rule, each sorted ascending.
    lists: Vec<Vec<u32>>,
}

impl Default for NameTrie {
    fn default() -> Self {
        let root = Node {
            hash: ROOT_HASH,
            parent: 0,
            label_start: 0,
            label_len: 0,
            exact: Rules::EMPTY,
            below: Rules::EMPTY,
        };
        Self {
            nodes: vec![root],
            labels: Vec::new(),
            children: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            lists: Vec::new(),
        }
    }
}

impl NameTrie {
    /// Adds rule `rule` to the `slot` list of the node for `name` (a normalised name).
    /// Rules must be added in ascending order; `unconditional` says the rule has no
    /// conditions besides the name, which closes the list to later rules.
    pub fn insert(&mut self, name: &str, slot: Slot, rule: u32, unconditional: bool) {
        debug_assert!((rule as usize) < MAX_RULES);
        let (mut node, mut hash) = (0, ROOT_HASH);
        for label in name.rsplit('.') {
            (node, hash) = self.child_or_insert(node, hash, label.as_bytes());
        }
        let n = &mut self.nodes[node as usize];
        let rules = match slot {
            Slot::Exact => &mut n.exact,
            Slot::Below => &mut n.below,
        };
        *rules = add(&mut self.lists, *rules, rule, unconditional);
    }

    /// Calls `visit` with every rule list that applies to `name` (a normalised name): the
    /// `Below` lists of its proper ancestors and the `Exact` list of the name itself. Each
    /// list is sorted ascending.
    pub fn lookup(&self, name: &str, mut visit: impl FnMut(&[u32])) {
        // Probe every level by its chained hash; no probe waits for another's result.
        let mut ids = [0u32; MAX_LABELS];
        let (mut depth, mut labels, mut hash) = (0, 0, ROOT_HASH);
        for label in name.rsplit('.') {
            labels += 1;
            if depth == ids.len() {
                return self.lookup_exact(name, visit);
            }
            if depth + 1 < labels {
                continue;
            }
            hash = self.hasher.hash_one((hash, label.as_bytes()));
            if let Some(&id) = self
                .children
                .find(hash, |&id| self.nodes[id as usize].hash == hash)
            {
                ids[depth] = id;
                depth += 1;
            }
        }
        // Check the chain: a hash collision could have found another name's node.
        let mut parent = 0;
        for (&id, label) in ids[..depth].iter().zip(name.rsplit('.')) {
            let n = &self.nodes[id as usize];
            if n.parent != parent || self.label(n) != label.as_bytes() {
                return self.lookup_exact(name, visit);
            }
            parent = id;
        }
        for (level, &id) in ids[..depth].iter().enumerate() {
            let n = &self.nodes[id as usize];
            self.visit_rules(
                if level + 1 < labels { n.below } else { n.exact },
                &mut visit,
            );
        }
    }

    /// [`NameTrie::lookup`] by walking parent to child with exact comparisons.
    fn lookup_exact(&self, name: &str, mut visit: impl FnMut(&[u32])) {
        let (mut node, mut hash) = (0, ROOT_HASH);
        let mut labels = name.rsplit('.').peekable();
        while let Some(label) = labels.next() {
            let label = label.as_bytes();
            hash = self.hasher.hash_one((hash, label));
            let found = self.children.find(hash, |&id| {
                let n = &self.nodes[id as usize];
                n.parent == node && self.label(n) == label
            });
            let Some(&child) = found else { return };
            node = child;
            let n = &self.nodes[node as usize];
            self.visit_rules(
                if labels.peek().is_some() {
                    n.below
                } else {
                    n.exact
                },
                &mut visit,
            );
        }
    }

    /// The number of nodes, the root included.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Releases spare capacity once every rule is in.
    pub fn shrink_to_fit(&mut self) {
        self.nodes.shrink_to_fit();
        self.labels.shrink_to_fit();
        self.lists.shrink_to_fit();
    }

    fn visit_rules(&self, rules: Rules, visit: &mut impl FnMut(&[u32])) {
        if rules == Rules::EMPTY {
            return;
        }
        let index = rules.0 & Rules::INDEX;
        if rules.0 & Rules::LIST != 0 {
            visit(&self.lists[index as usize]);
        } else {
            visit(&[index]);
        }
    }

    fn label(&self, n: &Node) -> &[u8] {
        &self.labels[n.label_start as usize..n.label_start as usize + usize::from(n.label_len)]
    }

    /// The child of `parent` (whose name hashes to `parent_hash`) labelled `label`, added if
    /// missing, and its name's hash.
    fn child_or_insert(&mut self, parent: u32, parent_hash: u64, label: &[u8]) -> (u32, u64) {
        let hash = self.hasher.hash_one((parent_hash, label));
        let Self {
            nodes,
            labels,
            children,
            ..
        } = self;
        let label_of = |n: &Node| {
            &labels[n.label_start as usize..n.label_start as usize + usize::from(n.label_len)]
        };
        let entry = children.entry(
            hash,
            |&id| {
                let n = &nodes[id as usize];
                n.hash == hash && n.parent == parent && label_of(n) == label
            },
            |&id| nodes[id as usize].hash,
        );
        let id = match entry {
            hashbrown::hash_table::Entry::Occupied(e) => *e.get(),
            hashbrown::hash_table::Entry::Vacant(e) => {
                let id = u32::try_from(nodes.len()).expect("fewer than 2^32 trie nodes");
                let label_len = u8::try_from(label.len()).expect("labels are at most 63 bytes");
                let label_start = u32::try_from(labels.len()).expect("label arena below 4 GiB");
                e.insert(id);
                labels.extend_from_slice(label);
                nodes.push(Node {
                    hash,
                    parent,
                    label_start,
                    label_len,
                    exact: Rules::EMPTY,
                    below: Rules::EMPTY,
                });
                id
            }
        };
        (id, hash)
    }
}

/// `rules` with `rule` appended, unless a rule without conditions already closes it or
/// `rule` is already last (a rule listing both `a.com` and `.a.com`).
fn add(lists: &mut Vec<Vec<u32>>, rules: Rules, rule: u32, unconditional: bool) -> Rules {
    let closed = if unconditional { Rules::CLOSED } else { 0 };
    if rules == Rules::EMPTY {
        return Rules(rule | closed);
    }
    if rules.0 & Rules::CLOSED != 0 {
        return rules;
    }
    let index = rules.0 & Rules::INDEX;
    if rules.0 & Rules::LIST == 0 {
        if index == rule {
            return Rules(rule | closed);
        }
        let list = u32::try_from(lists.len())
            .ok()
            .filter(|l| *l < Rules::INDEX)
            .expect("fewer than 2^30 lists");
        lists.push(vec![index, rule]);
        return Rules(list | Rules::LIST | closed);
    }
    let list = &mut lists[index as usize];
    if list.last() != Some(&rule) {
        list.push(rule);
    }
    Rules(index | Rules::LIST | closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lists `lookup` visits, checked against the exact walk.
    fn lists(t: &NameTrie, name: &str) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        t.lookup(name, |l| out.push(l.to_vec()));
        let mut exact = Vec::new();
        t.lookup_exact(name, |l| exact.push(l.to_vec()));
        assert_eq!(out, exact, "{name}");
        out
    }

    #[test]
    fn exact_below_and_shared_prefixes() {
        let mut t = NameTrie::default();
        t.insert("github.com", Slot::Exact, 0, true);
        t.insert("github.com", Slot::Below, 1, true);
        t.insert("api.github.com", Slot::Exact, 2, true);
        t.insert("com", Slot::Below, 3, false);
        assert_eq!(t.node_count(), 4);
        assert_eq!(lists(&t, "github.com"), [vec![3], vec![0]]);
        assert_eq!(lists(&t, "api.github.com"), [vec![3], vec![1], vec![2]]);
        assert_eq!(lists(&t, "x.api.github.com"), [vec![3], vec![1]]);
        assert_eq!(lists(&t, "com"), Vec::<Vec<u32>>::new());
        assert_eq!(lists(&t, "gitlab.com"), [vec![3]]);
        assert_eq!(lists(&t, "github.org"), Vec::<Vec<u32>>::new());
    }

    #[test]
    fn lists_grow_until_closed() {
        let mut t = NameTrie::default();
        t.insert("a.com", Slot::Exact, 0, false);
        t.insert("a.com", Slot::Exact, 1, false);
        t.insert("a.com", Slot::Exact, 1, false);
        t.insert("a.com", Slot::Exact, 2, true);
        t.insert("a.com", Slot::Exact, 3, false);
        assert_eq!(lists(&t, "a.com"), [vec![0, 1, 2]]);
        t.insert("b.com", Slot::Exact, 4, true);
        t.insert("b.com", Slot::Exact, 5, false);
        assert_eq!(lists(&t, "b.com"), [vec![4]]);
    }
}
