//! A reversed-label trie over rule patterns: `api.github.com` is stored as com -> github ->
//! api. A lookup visits one node per label of the queried name, so it costs O(labels)
//! whatever the number of rules.
//!
//! Memory is the constraint at a million rules, so nodes hold no `String`s: labels live in
//! one byte arena, and the nodes themselves sit in one open-addressing hash table, inline,
//! so that a probe costs one cache miss rather than two (control bytes, then the slot).
//!
//! Latency is the other constraint: walking parent to child makes each label's cache misses
//! wait for the previous label's. So a node is keyed by a hash of its whole name, chained
//! label by label (`h(com)`, `h(h(com), github)`, ...), which needs no memory access: the
//! lookup probes every level without waiting on the others. The hash is randomly seeded,
//! and compiling makes sure no two nodes share a hash (it starts over with a new seed if
//! they do), so a node's parent is named by its hash and a found node whose parent and
//! label check out is exactly the name looked up: no false match, whatever the queries.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;

/// The most rules the trie can number (slot values keep two flag bits).
pub const MAX_RULES: usize = (1 << 30) - 1;

/// The chained hash of the root (the empty name). Node hashes are odd, so they never equal
/// it, and an empty table slot (hash 0) is never mistaken for a node.
const ROOT_HASH: u64 = 0;

/// Which of a node's rule lists a pattern goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Rules that match the node's name itself (`example.com`, `.example.com`).
    Exact,
    /// Rules that match names strictly below the node (`*.example.com`, `.example.com`).
    Below,
}

/// Two names hashed alike under this trie's seed; build the trie again with a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCollision;

/// A node's rule list, packed into a u32: empty, one rule, or an index into the trie's
/// overflow lists. Most nodes hold one rule, so most lookups touch no list at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rules(u32);

impl Default for Rules {
    fn default() -> Self {
        Rules::EMPTY
    }
}

impl Rules {
    const EMPTY: Rules = Rules(u32::MAX);
    /// Set when the value indexes `NameTrie::lists`.
    const LIST: u32 = 1 << 31;
    /// Set when the list ends with a rule without conditions: later rules can never win.
    const CLOSED: u32 = 1 << 30;
    const INDEX: u32 = Self::CLOSED - 1;
}

/// One name in the trie (the root, the empty name, is implicit).
#[derive(Debug, Clone, Copy, Default)]
struct Node {
    /// The chained hash of the whole name (see the module docs); unique in the trie.
    hash: u64,
    /// The parent's hash, which names the parent.
    parent: u64,
    /// Rules matching this name.
    exact: Rules,
    /// Rules matching names below this one.
    below: Rules,
    /// Where this node's label starts in the arena.
    label_start: u32,
    /// The label's length (at most 63).
    label_len: u8,
    /// Whether any name below this one is in the trie. Most nodes are leaves, and a lookup
    /// that stops at one saves probing a random slot for a child that cannot exist.
    has_children: bool,
}

/// The trie; see the module docs.
#[derive(Default)]
pub struct NameTrie {
    /// Every node, by the hash of its name.
    nodes: Table,
    /// Every node's label, back to back.
    labels: Vec<u8>,
    /// The name hash, randomly seeded per trie.
    hasher: RandomState,
    /// Rule lists of nodes with more than one candidate rule, each sorted ascending.
    lists: Vec<Vec<u32>>,
}

impl NameTrie {
    /// An empty trie with room for about `nodes` nodes.
    pub fn with_capacity(nodes: usize) -> NameTrie {
        NameTrie {
            nodes: Table::with_capacity(nodes),
            ..NameTrie::default()
        }
    }

    /// Adds rule `rule` to the `slot` list of the node for `name` (a normalised name).
    /// Rules must be added in ascending order; `unconditional` says the rule has no
    /// conditions besides the name, which closes the list to later rules.
    pub fn insert(
        &mut self,
        name: &str,
        slot: Slot,
        rule: u32,
        unconditional: bool,
    ) -> Result<(), HashCollision> {
        debug_assert!((rule as usize) < MAX_RULES);
        let mut hash = ROOT_HASH;
        for label in name.rsplit('.') {
            hash = self.child_or_insert(hash, label.as_bytes())?;
        }
        let Some(node) = self.nodes.find_mut(hash) else {
            unreachable!("the node was just found or added");
        };
        let rules = match slot {
            Slot::Exact => &mut node.exact,
            Slot::Below => &mut node.below,
        };
        *rules = add(&mut self.lists, *rules, rule, unconditional);
        Ok(())
    }

    /// Calls `visit` with every rule list that applies to `name` (a normalised name): the
    /// `Below` lists of its proper ancestors and the `Exact` list of the name itself. Each
    /// list is sorted ascending.
    pub fn lookup(&self, name: &str, mut visit: impl FnMut(&[u32])) {
        let (mut parent, mut labels) = (ROOT_HASH, name.rsplit('.').peekable());
        while let Some(label) = labels.next() {
            let label = label.as_bytes();
            let hash = self.name_hash(parent, label);
            // Only the hash is compared here, so the next level's probe need not wait for
            // this node's label; hashes are unique, so checking parent and label after is
            // enough.
            let Some(n) = self.nodes.find(hash) else {
                return;
            };
            if n.parent != parent || self.label(n) != label {
                return;
            }
            let deeper = labels.peek().is_some();
            self.visit_rules(if deeper { n.below } else { n.exact }, &mut visit);
            if !n.has_children {
                return;
            }
            parent = hash;
        }
    }

    /// The number of nodes, the root included.
    pub fn node_count(&self) -> usize {
        self.nodes.len + 1
    }

    /// Releases spare capacity once every rule is in.
    pub fn shrink_to_fit(&mut self) {
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

    /// The hash of the child of `parent` labelled `label`, added if missing.
    fn child_or_insert(&mut self, parent: u64, label: &[u8]) -> Result<u64, HashCollision> {
        let hash = self.name_hash(parent, label);
        if let Some(n) = self.nodes.find(hash) {
            return if n.parent == parent && self.label(n) == label {
                Ok(hash)
            } else {
                Err(HashCollision)
            };
        }
        let label_len = u8::try_from(label.len()).expect("labels are at most 63 bytes");
        let label_start = u32::try_from(self.labels.len()).expect("label arena below 4 GiB");
        self.labels.extend_from_slice(label);
        let node = Node {
            hash,
            parent,
            label_start,
            label_len,
            ..Node::default()
        };
        self.nodes.insert(node);
        if let Some(p) = self.nodes.find_mut(parent) {
            p.has_children = true;
        }
        Ok(hash)
    }

    /// The chained hash of the name `label`.`parent`, forced odd (see [`ROOT_HASH`]).
    fn name_hash(&self, parent: u64, label: &[u8]) -> u64 {
        self.hasher.hash_one((parent, label)) | 1
    }
}

/// An open-addressing table of nodes with linear probing: a probe reads consecutive slots,
/// and the first is usually the one. Empty slots have hash 0.
#[derive(Default)]
struct Table {
    /// A power of two of slots, or none.
    slots: Vec<Node>,
    /// How many slots hold a node.
    len: usize,
}

impl Table {
    /// Room for `nodes` nodes before the table grows.
    fn with_capacity(nodes: usize) -> Table {
        if nodes == 0 {
            return Table::default();
        }
        let slots = (nodes * 5 / 4 + 1).next_power_of_two().max(16);
        Table {
            slots: super::huge_pages::filled(slots, Node::default()),
            len: 0,
        }
    }

    fn slot(&self, hash: u64) -> Option<usize> {
        let mask = self.slots.len().checked_sub(1)?;
        // The low bits pick the slot.
        let mut i = hash as usize & mask;
        loop {
            match self.slots[i].hash {
                h if h == hash => return Some(i),
                0 => return None,
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn find(&self, hash: u64) -> Option<&Node> {
        self.slot(hash).map(|i| &self.slots[i])
    }

    fn find_mut(&mut self, hash: u64) -> Option<&mut Node> {
        self.slot(hash).map(|i| &mut self.slots[i])
    }

    /// Adds a node whose hash is not in the table yet.
    fn insert(&mut self, node: Node) {
        // At most 80% full: linear probing slows down sharply beyond.
        if (self.len + 1) * 5 > self.slots.len() * 4 {
            let old = std::mem::take(&mut self.slots);
            self.slots = super::huge_pages::filled((old.len() * 2).max(16), Node::default());
            for n in old.into_iter().filter(|n| n.hash != 0) {
                self.place(n);
            }
        }
        self.place(node);
        self.len += 1;
    }

    fn place(&mut self, node: Node) {
        let mask = self.slots.len() - 1;
        let mut i = node.hash as usize & mask;
        while self.slots[i].hash != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = node;
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

    impl NameTrie {
        fn insert_ok(&mut self, name: &str, slot: Slot, rule: u32, unconditional: bool) {
            self.insert(name, slot, rule, unconditional)
                .expect("no collision in a tiny trie");
        }
    }

    /// The lists `lookup` visits.
    fn lists(t: &NameTrie, name: &str) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        t.lookup(name, |l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn exact_below_and_shared_prefixes() {
        let mut t = NameTrie::default();
        t.insert_ok("github.com", Slot::Exact, 0, true);
        t.insert_ok("github.com", Slot::Below, 1, true);
        t.insert_ok("api.github.com", Slot::Exact, 2, true);
        t.insert_ok("com", Slot::Below, 3, false);
        assert_eq!(t.node_count(), 4);
        assert_eq!(lists(&t, "github.com"), [vec![3], vec![0]]);
        assert_eq!(lists(&t, "api.github.com"), [vec![3], vec![1], vec![2]]);
        assert_eq!(lists(&t, "x.api.github.com"), [vec![3], vec![1]]);
        assert_eq!(lists(&t, "com"), Vec::<Vec<u32>>::new());
        assert_eq!(lists(&t, "gitlab.com"), [vec![3]]);
        assert_eq!(lists(&t, "github.org"), Vec::<Vec<u32>>::new());
    }

    #[test]
    fn a_presized_trie_grows_past_its_size() {
        let mut t = NameTrie::with_capacity(2);
        let slots = t.nodes.slots.len();
        for i in 0..100 {
            t.insert_ok(&format!("n{i}.com"), Slot::Exact, i, true);
        }
        assert!(t.nodes.slots.len() > slots);
        for i in 0..100 {
            assert_eq!(lists(&t, &format!("n{i}.com")), [vec![i]]);
        }
        assert!(NameTrie::with_capacity(0).nodes.slots.is_empty());
    }

    #[test]
    fn lists_grow_until_closed() {
        let mut t = NameTrie::default();
        t.insert_ok("a.com", Slot::Exact, 0, false);
        t.insert_ok("a.com", Slot::Exact, 1, false);
        t.insert_ok("a.com", Slot::Exact, 1, false);
        t.insert_ok("a.com", Slot::Exact, 2, true);
        t.insert_ok("a.com", Slot::Exact, 3, false);
        assert_eq!(lists(&t, "a.com"), [vec![0, 1, 2]]);
        t.insert_ok("b.com", Slot::Exact, 4, true);
        t.insert_ok("b.com", Slot::Exact, 5, false);
        assert_eq!(lists(&t, "b.com"), [vec![4]]);
    }

    #[test]
    fn hash_collisions_are_caught() {
        let mut t = NameTrie::default();
        t.insert_ok("a.com", Slot::Exact, 0, true);
        // Plant a node of another name ("c", the arena's first label) under the hash of "org".
        let hash = t.name_hash(ROOT_HASH, b"org");
        t.nodes.insert(Node {
            hash,
            parent: ROOT_HASH,
            label_len: 1,
            below: Rules(0),
            ..Node::default()
        });
        // Looking "org" names up finds nothing rather than the planted node's rules...
        assert!(lists(&t, "x.org").is_empty());
        // ...and adding "org" reports the collision, so compiling starts over.
        assert_eq!(t.insert("x.org", Slot::Exact, 1, true), Err(HashCollision));
        assert_eq!(lists(&t, "a.com"), [vec![0]]);
    }
}
