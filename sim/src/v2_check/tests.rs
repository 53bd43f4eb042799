//! Histories the v2 checker must accept and reject.

use super::*;

/// A history under construction: each op gets the next 10 ms slot unless given times.
#[derive(Default)]
struct H(Vec<V2Entry>);

fn st(value: &str, modified: u64) -> NodeState {
    NodeState {
        value: value.to_string(),
        modified,
    }
}

fn set(key: &str, value: &str) -> V2Op {
    V2Op::Set {
        key: key.into(),
        value: value.into(),
    }
}

fn create(key: &str, value: &str) -> V2Op {
    V2Op::Create {
        key: key.into(),
        value: value.into(),
    }
}

fn cas(key: &str, compare: Compare, value: &str) -> V2Op {
    V2Op::Cas {
        key: key.into(),
        compare,
        value: value.into(),
    }
}

fn get(key: &str) -> V2Op {
    V2Op::Get {
        key: key.into(),
        quorum: true,
    }
}

fn plain_get(key: &str) -> V2Op {
    V2Op::Get {
        key: key.into(),
        quorum: false,
    }
}

fn del(key: &str) -> V2Op {
    V2Op::Delete { key: key.into() }
}

/// A write's answer: index, prevNode.
fn wrote(index: u64, prev: Option<NodeState>) -> V2Outcome {
    V2Outcome::Ok {
        index,
        node: None,
        prev,
    }
}

/// A read's answer: the store's index, the key's state.
fn read(index: u64, node: NodeState) -> V2Outcome {
    V2Outcome::Ok {
        index,
        node: Some(node),
        prev: None,
    }
}

fn err(code: u32, index: u64) -> V2Outcome {
    V2Outcome::Error { code, index }
}

fn doubt() -> V2Outcome {
    V2Outcome::InDoubt("timeout".into())
}

impl H {
    /// An op over [start, end] (ms).
    fn at(mut self, start: u64, end: u64, op: V2Op, outcome: V2Outcome) -> H {
        let seq = self.0.len();
        self.0.push(V2Entry {
            seq,
            client: seq,
            member: 0,
            op,
            invoke_ns: start * 1_000_000,
            complete_ns: end * 1_000_000,
            outcome,
        });
        self
    }

    /// An op after every earlier one.
    fn then(self, op: V2Op, outcome: V2Outcome) -> H {
        let t = 10 * (self.0.len() as u64 + 1);
        self.at(t, t + 5, op, outcome)
    }

    fn ok(&self) -> bool {
        let verdict = check_v2(&self.0);
        if let Some(f) = &verdict {
            eprintln!("{f}");
        }
        verdict.is_none()
    }

    fn rejected(&self) -> Failure {
        check_v2(&self.0).expect("the checker must reject this history")
    }
}

#[test]
fn a_sequential_history_passes() {
    let h = H::default()
        .then(set("k", "a"), wrote(1, None))
        .then(get("k"), read(1, st("a", 1)))
        .then(cas("k", Compare::Index(1), "b"), wrote(2, Some(st("a", 1))))
        .then(cas("k", Compare::Value("a".into()), "c"), err(101, 2))
        .then(create("k", "d"), err(105, 2))
        .then(get("k"), read(2, st("b", 2)))
        .then(del("k"), wrote(3, Some(st("b", 2))))
        .then(get("k"), err(100, 3))
        .then(create("k", "e"), wrote(4, None));
    assert!(h.ok(), "a correct sequential history");
    assert!(H::default().ok(), "the empty history");
}

#[test]
fn in_doubt_writes_may_land_or_not() {
    let landed = H::default()
        .then(set("k", "a"), wrote(1, None))
        .then(set("k", "b"), doubt())
        .then(get("k"), read(2, st("b", 2)));
    assert!(landed.ok(), "an in-doubt write seen by a later read");
    let lost = H::default()
        .then(set("k", "a"), wrote(1, None))
        .then(set("k", "b"), doubt())
        .then(get("k"), read(1, st("a", 1)));
    assert!(lost.ok(), "an in-doubt write that never took effect");
    let unseen = H::default()
        .then(set("k", "a"), wrote(1, None))
        .then(del("k"), doubt())
        .then(set("k", "c"), wrote(3, None));
    assert!(
        unseen.ok(),
        "an unseen in-doubt delete fills index 2 (c's prevNode: absent)"
    );
}

#[test]
fn a_plain_read_may_be_stale_but_a_quorum_read_may_not() {
    let base = H::default()
        .then(set("k", "a"), wrote(1, None))
        .then(set("k", "b"), wrote(2, Some(st("a", 1))));
    let plain = H(base.0.clone()).then(plain_get("k"), read(1, st("a", 1)));
    assert!(plain.ok(), "a plain read names an older index");
    let quorum = base.then(get("k"), read(1, st("a", 1)));
    let f = quorum.rejected();
    assert_eq!(f.kind, FailureKind::V2Linearizability);
    assert!(f.what.contains("stale read"), "{}", f.what);
}

#[test]
fn a_read_must_match_the_state_at_its_index() {
    let plain_wrong = H::default()
        .then(set("k", "a"), wrote(1, None))
        .then(set("k", "b"), wrote(2, Some(st("a", 1))))
        .then(plain_get("k"), read(2, st("a", 1)));
    assert!(
        plain_wrong.rejected().what.contains("index 2"),
        "even a plain read shows the state at the index it names"
    );
    let phantom = H::default()
        .then(set("k", "a"), wrote(1, None))
        .then(set("j", "x"), doubt())
        .then(get("k"), read(2, st("zz", 2)));
    assert!(
        phantom.rejected().what.contains("no write"),
        "a value nobody wrote"
    );
}

#[test]
fn an_acknowledged_write_cannot_be_lost() {
    // k0's acknowledged write; in-doubt writes of another key fill 2..4; a later read of k0
    // finds it absent, which no delete explains.
    let h = H::default()
        .then(set("k0", "a"), wrote(1, None))
        .then(set("k1", "x"), doubt())
        .then(set("k1", "y"), doubt())
        .then(set("k1", "z"), doubt())
        .then(get("k0"), err(100, 4));
    assert!(h.rejected().what.contains("index 4"), "the lost write");
    let explained = H::default()
        .then(set("k0", "a"), wrote(1, None))
        .then(set("k1", "x"), doubt())
        .then(del("k0"), doubt())
        .then(set("k1", "z"), doubt())
        .then(get("k0"), err(100, 4));
    assert!(explained.ok(), "an in-doubt delete of k0 explains it");
}

#[test]
fn cas_outcomes_must_agree_with_the_state() {
    let wrong_index = H::default()
        .then(set("k", "a"), wrote(1, None))
        .then(set("k", "b"), wrote(2, Some(st("a", 1))))
        .then(cas("k", Compare::Index(1), "c"), wrote(3, Some(st("b", 2))));
    assert!(
        wrong_index.rejected().what.contains("prevIndex=1"),
        "a CAS on a stale index succeeded"
    );
    let failed_but_held = H::default()
        .then(set("k", "a"), wrote(1, None))
        .then(cas("k", Compare::Index(1), "c"), err(101, 1));
    assert!(
        failed_but_held
            .rejected()
            .what
            .contains("failing prevIndex=1"),
        "a CAS refused though its compare held"
    );
    let create_over = H::default()
        .then(set("k", "a"), wrote(1, None))
        .then(create("k", "b"), wrote(2, None));
    assert!(
        create_over.rejected().what.contains("absent"),
        "create over a key"
    );
}

#[test]
fn duplicate_indexes_and_unexplained_gaps_fail() {
    let dup = H::default()
        .then(set("k", "a"), wrote(1, None))
        .then(set("j", "b"), wrote(1, None));
    assert!(
        dup.rejected().what.contains("two acknowledged"),
        "one index, two writes"
    );
    let gap = H::default()
        .then(set("k", "a"), wrote(1, None))
        .then(set("k", "b"), wrote(3, Some(st("a", 1))));
    assert!(
        gap.rejected().what.contains("made by no acknowledged"),
        "index 2 from nowhere"
    );
}

#[test]
fn an_in_doubt_write_lands_after_its_invocation() {
    let late = H::default()
        .at(0, 5, set("k", "a"), wrote(1, None))
        .at(10, 15, get("k"), read(1, st("a", 1)))
        .at(20, 25, set("k", "b"), doubt())
        .at(30, 35, plain_get("k"), read(2, st("b", 2)));
    assert!(
        late.ok(),
        "b invoked after the read at index 1, landing at 2"
    );
    // Index 2 is a gap a read at index 2 saw without b, before b was invoked; a later read
    // names b as index 2.
    let early = H::default()
        .at(0, 5, set("k", "a"), wrote(1, None))
        .at(1, 2, set("j", "y"), doubt())
        .at(10, 15, get("k"), read(2, st("a", 1)))
        .at(20, 25, set("k", "b"), doubt())
        .at(30, 35, plain_get("k"), read(2, st("b", 2)));
    let f = early.rejected();
    assert!(f.what.contains("invoked after"), "{}", f.what);
}

#[test]
fn the_search_backtracks_over_unseen_gaps() {
    // Two unseen in-doubt writes fill 2 and 3; only create-then-cas explains k's state.
    let h = H::default()
        .then(set("j", "a"), wrote(1, None))
        .then(cas("k", Compare::Index(2), "c"), doubt())
        .then(create("k", "b"), doubt())
        .then(set("j", "d"), wrote(4, Some(st("a", 1))))
        .then(get("k"), read(4, st("c", 3)));
    assert!(h.ok(), "create at 2, cas at 3");
    let h = H::default()
        .then(set("j", "a"), wrote(1, None))
        .then(cas("k", Compare::Index(3), "c"), doubt())
        .then(create("k", "b"), doubt())
        .then(set("j", "d"), wrote(4, Some(st("a", 1))))
        .then(get("k"), read(4, st("c", 3)));
    assert!(
        !h.ok(),
        "the CAS compares index 3, which the create cannot have made"
    );
}

#[test]
fn many_interchangeable_in_doubt_writes_stay_fast() {
    // 60 unseen in-doubt sets of one key and 30 gaps: equal effects are tried once.
    let mut h = H::default().then(set("k", "a"), wrote(1, None));
    for i in 0..60 {
        h = h.then(set("j", &format!("x{i}")), doubt());
    }
    h = h.then(set("k", "b"), wrote(32, Some(st("a", 1))));
    assert!(h.ok(), "30 gaps filled by any of 60 equal writes");
}
