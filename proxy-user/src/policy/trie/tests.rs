use std::collections::BTreeMap;
use std::hash::{BuildHasherDefault, Hasher};

use proptest::prelude::*;

use super::*;

/// A hasher that gives every name the same hash: every node then has the same tag and the
/// same home slot, so every probe walks one cluster and only parent and label tell nodes
/// apart.
#[derive(Default)]
struct Constant;

impl Hasher for Constant {
    fn finish(&self) -> u64 {
        0x1234_5678_9abc_def0
    }

    fn write(&mut self, _: &[u8]) {}
}

type Colliding = BuildHasherDefault<Constant>;

fn one(rule: u32) -> Candidate {
    Candidate::Unconditional { rule, deny: false }
}

/// A rule with conditions; in these tests its guard number stands for the rule.
fn conditional(rule: u32) -> Candidate {
    Candidate::Guarded(rule)
}

/// The numbers (rule or guard) of each node's candidates that `lookup` visits.
fn lists<S: BuildHasher>(t: &NameTrie<S>, name: &str) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    t.lookup(name, |candidates| {
        out.push(
            candidates
                .iter()
                .map(|c| match c {
                    Candidate::Unconditional { rule, .. } => rule,
                    Candidate::Guarded(guard) => guard,
                })
                .collect(),
        );
    });
    out
}

#[test]
fn exact_below_and_shared_prefixes() {
    let mut t = NameTrie::default();
    t.insert("github.com", Slot::Exact, one(0));
    t.insert("github.com", Slot::Below, one(1));
    t.insert("api.github.com", Slot::Exact, one(2));
    t.insert("com", Slot::Below, conditional(3));
    assert_eq!(t.node_count(), 4);
    assert_eq!(lists(&t, "github.com"), [vec![3], vec![0]]);
    assert_eq!(lists(&t, "api.github.com"), [vec![3], vec![1], vec![2]]);
    assert_eq!(lists(&t, "x.api.github.com"), [vec![3], vec![1]]);
    assert_eq!(lists(&t, "com"), Vec::<Vec<u32>>::new());
    assert_eq!(lists(&t, "gitlab.com"), [vec![3]]);
    assert_eq!(lists(&t, "github.org"), Vec::<Vec<u32>>::new());
    assert!(lists(&NameTrie::default(), "github.com").is_empty());
}

#[test]
fn a_presized_trie_grows_past_its_size() {
    let mut t = NameTrie::with_capacity(2);
    let slots = t.nodes.slots.len();
    for i in 0..100 {
        t.insert(&format!("n{i}.zone{}.com", i % 7), Slot::Exact, one(i));
    }
    assert!(t.nodes.slots.len() > slots);
    // Growing renumbered every parent: deep names still resolve, shallow ones still stop.
    for i in 0..100 {
        assert_eq!(lists(&t, &format!("n{i}.zone{}.com", i % 7)), [vec![i]]);
        assert!(lists(&t, &format!("n{i}.zone{}.com", (i + 1) % 7)).is_empty());
    }
    assert!(NameTrie::with_capacity(0).nodes.slots.is_empty());
}

#[test]
fn candidates_come_back_as_inserted() {
    let mut t = NameTrie::default();
    let deny = Candidate::Unconditional {
        rule: 7,
        deny: true,
    };
    let last = Candidate::Unconditional {
        rule: MAX_RULES as u32 - 1,
        deny: false,
    };
    t.insert("a.com", Slot::Exact, deny);
    t.insert("b.com", Slot::Exact, conditional(8));
    t.insert("c.com", Slot::Exact, conditional(9));
    t.insert("c.com", Slot::Exact, one(10));
    t.insert("d.com", Slot::Exact, conditional(11));
    t.insert("d.com", Slot::Exact, conditional(12));
    t.insert("e.com", Slot::Exact, conditional(MAX_RULES as u32 - 1));
    t.insert("e.com", Slot::Exact, last);
    let seen = |name| {
        let mut out = Vec::new();
        t.lookup(name, |c| out.push(c.iter().collect::<Vec<_>>()));
        out
    };
    assert_eq!(seen("a.com"), [vec![deny]]);
    assert_eq!(seen("b.com"), [vec![conditional(8)]]);
    assert_eq!(seen("c.com"), [vec![conditional(9), one(10)]]);
    assert_eq!(seen("d.com"), [vec![conditional(11), conditional(12)]]);
    assert_eq!(
        seen("e.com"),
        [vec![conditional(MAX_RULES as u32 - 1), last]]
    );
}

#[test]
fn lists_grow_until_closed() {
    let mut t = NameTrie::default();
    t.insert("a.com", Slot::Exact, conditional(0));
    t.insert("a.com", Slot::Exact, conditional(1));
    t.insert("a.com", Slot::Exact, conditional(1));
    t.insert("a.com", Slot::Exact, one(2));
    t.insert("a.com", Slot::Exact, conditional(3));
    assert_eq!(lists(&t, "a.com"), [vec![0, 1, 2]]);
    t.insert("b.com", Slot::Exact, one(4));
    t.insert("b.com", Slot::Exact, conditional(5));
    assert_eq!(lists(&t, "b.com"), [vec![4]]);
}

#[test]
fn colliding_hashes_never_confuse_names() {
    // Capacity 0: the table also grows (and renumbers parents) with every node colliding.
    let mut t = NameTrie::with_hasher(0, Colliding::default());
    let long = "a-label-longer-than-fifteen-bytes";
    let longer = "a-label-longer-than-fifteen-bytes-too";
    t.insert("a.com", Slot::Exact, one(0));
    t.insert("com.a", Slot::Exact, one(1));
    t.insert("a.org", Slot::Below, one(2));
    t.insert("b.a.com", Slot::Exact, one(3));
    t.insert(&format!("{long}.com"), Slot::Exact, one(4));
    t.insert(&format!("{long}.org"), Slot::Exact, one(5));
    t.insert(&format!("{longer}.com"), Slot::Exact, one(6));
    for i in 0..40 {
        t.insert(&format!("x{i}.a.org"), Slot::Exact, one(100 + i));
    }
    assert_eq!(t.node_count(), 1 + 2 + 2 + 2 + 1 + 3 + 40);
    assert_eq!(lists(&t, "a.com"), [vec![0]]);
    assert_eq!(lists(&t, "com.a"), [vec![1]]);
    assert!(lists(&t, "a.a").is_empty());
    assert!(lists(&t, "com.com").is_empty());
    assert_eq!(lists(&t, "b.a.com"), [vec![3]]);
    assert!(lists(&t, "b.a.net").is_empty());
    assert_eq!(lists(&t, "a.org"), Vec::<Vec<u32>>::new());
    assert_eq!(lists(&t, "b.a.org"), [vec![2]]);
    assert_eq!(lists(&t, "x7.a.org"), [vec![2], vec![107]]);
    assert_eq!(lists(&t, "x7.b.org"), Vec::<Vec<u32>>::new());
    assert_eq!(lists(&t, &format!("{long}.com")), [vec![4]]);
    assert_eq!(lists(&t, &format!("{long}.org")), [vec![5]]);
    assert_eq!(lists(&t, &format!("{longer}.com")), [vec![6]]);
    assert!(lists(&t, &format!("{longer}.org")).is_empty());
    assert!(lists(&t, "a-label-longer-than-fifteen-bytez.com").is_empty());
}

#[test]
fn deep_names_take_several_rounds() {
    let labels: Vec<String> = (0..40).map(|i| format!("l{i}")).collect();
    let name = labels.join(".");
    let mut t = NameTrie::default();
    t.insert(&name, Slot::Exact, one(0));
    // Every suffix of the name, as a `Below` pattern of its own.
    for k in 1..labels.len() {
        t.insert(&labels[k..].join("."), Slot::Below, one(k as u32));
    }
    let want: Vec<Vec<u32>> = (1..labels.len() as u32)
        .rev()
        .map(|k| vec![k])
        .chain([vec![0]])
        .collect();
    assert_eq!(lists(&t, &name), want);
    assert_eq!(lists(&t, &format!("x.{name}")).len(), labels.len() - 1);
}

/// The reference: a map from each name to its two lists, and for a query, the `Below`
/// lists of its proper suffixes and the `Exact` list of the name, in that order.
#[derive(Default)]
struct Reference(BTreeMap<String, [Vec<u32>; 2]>);

impl Reference {
    fn insert(&mut self, name: &str, slot: Slot, rule: u32) {
        let lists = self.0.entry(name.to_owned()).or_default();
        let list = &mut lists[slot as usize];
        if list.last() != Some(&rule) {
            list.push(rule);
        }
    }

    fn lookup(&self, name: &str) -> Vec<Vec<u32>> {
        let labels: Vec<&str> = name.split('.').collect();
        (1..=labels.len())
            .rev()
            .filter_map(|k| {
                let lists = self.0.get(&labels[k - 1..].join("."))?;
                let list = &lists[if k == 1 { 0 } else { 1 }];
                (!list.is_empty()).then(|| list.clone())
            })
            .collect()
    }
}

fn arb_name() -> impl Strategy<Value = String> {
    let label = prop::sample::select(vec![
        "a",
        "b",
        "com",
        "fifteen-bytes-x",
        "sixteen-bytes-xy",
        "sixteen-bytes-xz",
    ]);
    prop::collection::vec(label, 1..5).prop_map(|l| l.join("."))
}

proptest! {
    /// With a working hash and with one where everything collides, lookups agree with the
    /// reference. Rules are conditional, so no list closes early.
    #[test]
    fn lookups_agree_with_a_map(
        patterns in prop::collection::vec((arb_name(), any::<bool>()), 0..30),
        queries in prop::collection::vec(arb_name(), 1..30),
    ) {
        let mut good = NameTrie::with_capacity(patterns.len());
        let mut bad = NameTrie::with_hasher(1, Colliding::default());
        let mut reference = Reference::default();
        for (rule, (name, exact)) in patterns.iter().enumerate() {
            let slot = if *exact { Slot::Exact } else { Slot::Below };
            good.insert(name, slot, conditional(rule as u32));
            bad.insert(name, slot, conditional(rule as u32));
            reference.insert(name, slot, rule as u32);
        }
        for q in queries.iter().chain(patterns.iter().map(|(n, _)| n)) {
            let want = reference.lookup(q);
            prop_assert_eq!(&lists(&good, q), &want, "{}", q);
            prop_assert_eq!(&lists(&bad, q), &want, "{}", q);
        }
    }
}
