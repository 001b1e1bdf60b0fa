//! A reversed-label trie over rule patterns: `api.github.com` is stored as com -> github ->
//! api. A lookup visits one node per label of the queried name, so it costs O(labels)
//! whatever the number of rules.
//!
//! Memory is the constraint at a million rules, so nodes hold no `String`s: they sit inline
//! in one open-addressing table of 32-byte slots, a node names its parent by slot number,
//! and a label sits inside its node when it is short (most are) or in a byte arena.
//!
//! Latency is the other constraint: a cache miss costs ~200 ns, and walking parent to child
//! would make each label's miss wait for the one before. So a node's slot is found from a
//! hash of its whole name, chained label by label (`h(com)`, `h(h(com), github)`, ...),
//! which needs no memory access: a lookup first computes every level's slot and prefetches
//! it, then walks the levels, so their misses overlap. The hash only says where to look: a
//! node is the one looked for when its parent slot and its label are equal, so a hash
//! collision costs a longer probe, never a false match.
//!
//! A node's rules are stored as [`Candidate`]s that carry what a decision needs (the
//! action of a rule without conditions; the guard of one with), so deciding reads no rule
//! record.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;

mod candidate;

pub use candidate::{Candidate, Candidates};
use candidate::{Rules, add};

/// The most rules (and guards) the trie can number: entries keep three flag bits.
pub const MAX_RULES: usize = (1 << 29) - 1;

/// The `parent` of a top-level node: the root, the empty name, has no slot.
const ROOT: u32 = u32::MAX;
/// The chained hash of the root.
const ROOT_HASH: u64 = 0;
/// Labels up to this long sit inside their node.
const INLINE_LABEL: usize = 15;
/// How many levels a lookup hashes and prefetches before it walks them. Names rarely have
/// more labels; a deeper one takes more rounds.
const BATCH: usize = 16;

/// Which of a node's rule lists a pattern goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Rules that match the node's name itself (`example.com`, `.example.com`).
    Exact,
    /// Rules that match names strictly below the node (`*.example.com`, `.example.com`).
    Below,
}

/// One name in the trie (the root, the empty name, is implicit), or an empty slot. One
/// aligned 32-byte slot, so a probe that hits its home slot reads one cache line.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
struct Node {
    /// 32 bits of the name's chained hash, never 0; 0 marks an empty slot.
    tag: u32,
    /// The parent's slot, or `ROOT`.
    parent: u32,
    /// Rules matching this name.
    exact: Rules,
    /// Rules matching names below this one.
    below: Rules,
    /// The label's length (`LEN` bits, at most 63) and the `HAS_CHILDREN` flag.
    meta: u8,
    /// The label if it is at most `INLINE_LABEL` long; else its start in
    /// `NameTrie::long_labels`, as a little-endian u32.
    label: [u8; INLINE_LABEL],
}

const _: () = assert!(size_of::<Node>() == 32);

impl Node {
    const EMPTY: Node = Node {
        tag: 0,
        parent: ROOT,
        exact: Rules::EMPTY,
        below: Rules::EMPTY,
        meta: 0,
        label: [0; INLINE_LABEL],
    };
    const LEN: u8 = 0x3f;
    /// Some name below this one is in the trie. Most nodes are leaves, and a lookup that
    /// stops at one need not wait for a deeper slot whose node cannot exist.
    const HAS_CHILDREN: u8 = 0x80;

    fn label_len(&self) -> usize {
        usize::from(self.meta & Self::LEN)
    }

    fn has_children(&self) -> bool {
        self.meta & Self::HAS_CHILDREN != 0
    }
}

/// One level of a lookup: a label of the queried name, and where its node would be.
#[derive(Clone, Copy, Default)]
struct Level<'n> {
    /// The tag of the name from this label down.
    tag: u32,
    /// The home slot of that tag.
    home: usize,
    /// The label.
    label: &'n [u8],
}

/// The trie; see the module docs. `S` builds the name hash (tests inject a bad one).
pub struct NameTrie<S = RandomState> {
    /// Every node, placed by its tag.
    nodes: Table,
    /// Labels longer than `INLINE_LABEL`, back to back.
    long_labels: Vec<u8>,
    /// The name hash, randomly seeded per trie.
    hasher: S,
    /// Entry lists of nodes with more than one candidate rule, each in rule order.
    lists: Vec<Vec<u32>>,
}

impl Default for NameTrie {
    fn default() -> Self {
        NameTrie::with_capacity(0)
    }
}

impl NameTrie {
    /// An empty trie with room for about `nodes` nodes.
    pub fn with_capacity(nodes: usize) -> NameTrie {
        NameTrie::with_hasher(nodes, RandomState::default())
    }
}

impl<S: BuildHasher> NameTrie<S> {
    /// An empty trie with room for about `nodes` nodes, hashing names with `hasher`.
    fn with_hasher(nodes: usize, hasher: S) -> NameTrie<S> {
        NameTrie {
            nodes: Table::with_capacity(nodes),
            long_labels: Vec::new(),
            hasher,
            lists: Vec::new(),
        }
    }

    /// Adds `rule` to the `slot` list of the node for `name` (a normalised name). Rules
    /// must be added in ascending order; one without conditions closes the list to later
    /// rules.
    pub fn insert(&mut self, name: &str, slot: Slot, rule: Candidate) {
        // Room for every label up front, so that no node moves while the name is walked.
        let labels = name.bytes().filter(|&b| b == b'.').count() + 1;
        self.nodes.reserve(labels);
        let (mut parent, mut hash) = (ROOT, ROOT_HASH);
        for label in name.rsplit('.') {
            hash = self.name_hash(hash, label.as_bytes());
            parent = self.child_or_insert(parent, tag(hash), label.as_bytes());
        }
        let node = &mut self.nodes.slots[parent as usize];
        let rules = match slot {
            Slot::Exact => &mut node.exact,
            Slot::Below => &mut node.below,
        };
        *rules = add(&mut self.lists, *rules, rule);
    }

    /// Calls `visit` with every rule list that applies to `name` (a normalised name): the
    /// `Below` lists of its proper ancestors and the `Exact` list of the name itself, in
    /// that order.
    pub fn lookup(&self, name: &str, mut visit: impl FnMut(Candidates<'_>)) {
        if self.nodes.len == 0 {
            return;
        }
        // The labels not hashed yet, right to left; `None` once all are.
        let mut rest = Some(name.as_bytes());
        let (mut parent, mut hash) = (ROOT, ROOT_HASH);
        loop {
            // Every level's slot follows from the name alone: compute and prefetch them
            // all before reading any, so that their cache misses overlap...
            let mut levels = [Level::default(); BATCH];
            let mut count = 0;
            for level in &mut levels {
                let Some(labels) = rest else { break };
                let label = match labels.iter().rposition(|&b| b == b'.') {
                    Some(dot) => {
                        rest = Some(&labels[..dot]);
                        &labels[dot + 1..]
                    }
                    None => {
                        rest = None;
                        labels
                    }
                };
                hash = self.name_hash(hash, label);
                let tag = tag(hash);
                let home = self.nodes.home(tag);
                // The probe may go on to the next slot, which may start the next line.
                self.nodes.prefetch(home);
                self.nodes.prefetch(self.nodes.next(home));
                *level = Level { tag, home, label };
                count += 1;
            }
            // ...then walk them.
            for (i, level) in levels[..count].iter().enumerate() {
                let Some(slot) = self.find(parent, level) else {
                    return;
                };
                let node = &self.nodes.slots[slot as usize];
                let deeper = i + 1 < count || rest.is_some();
                let rules = if deeper { &node.below } else { &node.exact };
                if let Some(candidates) = self.candidates(rules) {
                    visit(candidates);
                }
                if !node.has_children() {
                    return;
                }
                parent = slot;
            }
            if rest.is_none() {
                return;
            }
        }
    }

    /// The number of nodes, the root included.
    pub fn node_count(&self) -> usize {
        self.nodes.len + 1
    }

    /// Releases spare capacity once every rule is in.
    pub fn shrink_to_fit(&mut self) {
        self.long_labels.shrink_to_fit();
        self.lists.shrink_to_fit();
    }

    fn candidates<'a>(&'a self, rules: &'a Rules) -> Option<Candidates<'a>> {
        match rules.0 {
            _ if *rules == Rules::EMPTY => None,
            list if list & Rules::LIST != 0 => {
                Some(Candidates(&self.lists[(list & !Rules::LIST) as usize]))
            }
            _ => Some(Candidates(std::slice::from_ref(&rules.0))),
        }
    }

    /// The slot of the node labelled as `level` under `parent`, if there is one.
    fn find(&self, parent: u32, level: &Level<'_>) -> Option<u32> {
        let mut i = level.home;
        loop {
            let n = &self.nodes.slots[i];
            if n.tag == 0 {
                return None;
            }
            if n.tag == level.tag && n.parent == parent && self.label(n) == level.label {
                return Some(i as u32);
            }
            i = self.nodes.next(i);
        }
    }

    fn label<'a>(&'a self, n: &'a Node) -> &'a [u8] {
        let len = n.label_len();
        if len <= INLINE_LABEL {
            return &n.label[..len];
        }
        let start = u32::from_le_bytes(n.label[..4].try_into().expect("4 bytes")) as usize;
        &self.long_labels[start..start + len]
    }

    /// The slot of the child of `parent` labelled `label`, added if missing; the table
    /// must have room for it.
    fn child_or_insert(&mut self, parent: u32, tag: u32, label: &[u8]) -> u32 {
        let level = Level {
            tag,
            home: self.nodes.home(tag),
            label,
        };
        if let Some(slot) = self.find(parent, &level) {
            return slot;
        }
        let mut node = Node {
            tag,
            parent,
            meta: u8::try_from(label.len())
                .ok()
                .filter(|len| *len <= Node::LEN)
                .expect("labels are at most 63 bytes"),
            ..Node::EMPTY
        };
        if label.len() <= INLINE_LABEL {
            node.label[..label.len()].copy_from_slice(label);
        } else {
            let start = u32::try_from(self.long_labels.len()).expect("label arena below 4 GiB");
            node.label[..4].copy_from_slice(&start.to_le_bytes());
            self.long_labels.extend_from_slice(label);
        }
        let slot = self.nodes.place(node);
        if parent != ROOT {
            self.nodes.slots[parent as usize].meta |= Node::HAS_CHILDREN;
        }
        slot
    }

    /// The chained hash of the name `label`.`parent`.
    fn name_hash(&self, parent: u64, label: &[u8]) -> u64 {
        self.hasher.hash_one((parent, label))
    }
}

/// The tag of a chained hash: its high half (the low half feeds nothing else, but the high
/// bits of foldhash are the better mixed), never 0.
fn tag(hash: u64) -> u32 {
    ((hash >> 32) as u32).max(1)
}

/// An open-addressing table of nodes with linear probing: a probe reads consecutive slots,
/// and the first is usually the one.
#[derive(Default)]
struct Table {
    /// The slots; at most 80% hold a node, so a probe always ends.
    slots: Vec<Node>,
    /// How many slots hold a node.
    len: usize,
}

impl Table {
    /// Room for `nodes` nodes before the table grows.
    fn with_capacity(nodes: usize) -> Table {
        Table {
            slots: match nodes {
                0 => Vec::new(),
                n => super::huge_pages::filled(Self::slots_for(n), Node::EMPTY),
            },
            len: 0,
        }
    }

    /// How many slots `nodes` nodes get: half full, where linear probing stays short even
    /// for names that are not there.
    fn slots_for(nodes: usize) -> usize {
        (nodes * 2).max(16)
    }

    /// Where a probe for `tag` starts: the tag scaled to the table (no power-of-two size
    /// needed, and growing needs only the tag).
    fn home(&self, tag: u32) -> usize {
        ((u64::from(tag) * self.slots.len() as u64) >> 32) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() { 0 } else { i + 1 }
    }

    /// Starts loading slot `i` into the cache without waiting for it.
    #[inline(always)]
    fn prefetch(&self, i: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let slot = std::ptr::from_ref(&self.slots[i]).cast::<i8>();
            // SAFETY: a prefetch is only a hint; it never faults and changes no state the
            // program can observe, and `slot` points into the table anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(slot) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// Makes room for `more` nodes. Growing moves every node, so callers must not hold
    /// slot numbers across it.
    fn reserve(&mut self, more: usize) {
        if (self.len + more) * 5 <= self.slots.len() * 4 {
            return;
        }
        let size = (self.slots.len() * 2).max(Self::slots_for(self.len + more));
        let old = std::mem::replace(
            &mut self.slots,
            super::huge_pages::filled(size, Node::EMPTY),
        );
        // Nodes name their parents by slot: note where each one went, then renumber.
        let mut moved = vec![ROOT; old.len()];
        for (i, node) in old.iter().enumerate().filter(|(_, n)| n.tag != 0) {
            moved[i] = self.put(*node);
        }
        for node in self
            .slots
            .iter_mut()
            .filter(|n| n.tag != 0 && n.parent != ROOT)
        {
            node.parent = moved[node.parent as usize];
        }
    }

    /// Adds a node that is not in the table yet; there must be room.
    fn place(&mut self, node: Node) -> u32 {
        debug_assert!((self.len + 1) * 5 <= self.slots.len() * 4);
        self.len += 1;
        self.put(node)
    }

    /// Writes `node` into the first free slot from its home.
    fn put(&mut self, node: Node) -> u32 {
        let mut i = self.home(node.tag);
        while self.slots[i].tag != 0 {
            i = self.next(i);
        }
        self.slots[i] = node;
        u32::try_from(i)
            .ok()
            .filter(|&i| i != ROOT)
            .expect("fewer than 2^32 - 1 slots")
    }
}

#[cfg(test)]
mod tests;
