//! Random writes, compactions, watches and readers that return credit at random: every
//! watcher's stream must be exactly the changes in its range from its start revision on
//! (no gap, no duplicate, in order, each revision in one response), or such a prefix
//! followed by a compaction cancel at a revision it had not reached.
use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    Txn(u8, u8),
    Compact,
    Watch {
        stream: u8,
        key: u8,
        span: u8,
        back: u8,
    },
    Credit(u8, u16),
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..8, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0u8..8).prop_map(Step::Delete),
        2 => (0u8..8, 0u8..8).prop_map(|(a, b)| Step::Txn(a, b)),
        1 => Just(Step::Compact),
        2 => (0u8..3, 0u8..7, 0u8..3, 0u8..20)
            .prop_map(|(stream, key, span, back)| Step::Watch { stream, key, span, back }),
        3 => (0u8..3, 0u16..4).prop_map(|(s, n)| Step::Credit(s, n)),
        1 => Just(Step::Tick),
    ]
}

fn key(k: u8) -> String {
    format!("k{k}")
}

/// (key, range end) of a watch: a single key, or `span` keys from `key`.
fn range(k: u8, span: u8) -> (String, String) {
    if span == 0 {
        (key(k), String::new())
    } else {
        (key(k), key(k + span))
    }
}

fn in_range(k: &str, (start, end): &(String, String)) -> bool {
    if end.is_empty() {
        k == start
    } else {
        k >= start.as_str() && k < end.as_str()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn every_watcher_gets_exactly_its_changes(steps in proptest::collection::vec(step(), 1..160)) {
        // A small window, so readers that return no credit really fall behind.
        let mut h = start_with(|cfg| cfg.stream_window(3));
        let mut truth: Vec<(i64, String, &'static str, String)> = Vec::new();
        let mut compacted_to = 0i64;
        for s in &steps {
            let before = revision(&h);
            match s {
                Step::Put(k, v) => {
                    put(&mut h, &key(*k), &v.to_string());
                    truth.push((revision(&h), key(*k), "put", v.to_string()));
                }
                Step::Delete(k) => {
                    delete(&mut h, &key(*k));
                    if revision(&h) > before {
                        truth.push((revision(&h), key(*k), "delete", String::new()));
                    }
                }
                Step::Txn(a, b) => {
                    let ops = vec![
                        RequestOp { request: Some(Op::RequestPut(PutRequest {
                            key: key(*a).into(), value: "t".into(), ..Default::default()
                        })) },
                        RequestOp { request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                            key: key(*b).into(), ..Default::default()
                        })) },
                    ];
                    if a == b {
                        continue; // etcd refuses duplicate keys in a txn
                    }
                    let existed_b = h.node(MEMBER).store().kv_at(key(*b).as_bytes(), 0).is_some();
                    request(&mut h, Request::Txn(TxnRequest { success: ops, ..Default::default() }));
                    let rev = revision(&h);
                    truth.push((rev, key(*a), "put", "t".to_string()));
                    if existed_b {
                        truth.push((rev, key(*b), "delete", String::new()));
                    }
                }
                Step::Compact => {
                    let to = (compacted_to + revision(&h)) / 2;
                    if to > compacted_to {
                        request(&mut h, Request::Compaction(CompactionRequest { revision: to, physical: false }));
                        compacted_to = to;
                    }
                }
                Step::Watch { stream, key: k, span, back } => {
                    let (start_key, end) = range(*k, *span);
                    let start = (revision(&h) - i64::from(*back)).max(0);
                    watch(&mut h, u64::from(*stream), create(&start_key, &end, start));
                }
                Step::Credit(stream, n) => input(&mut h, WatchInput::Credit {
                    stream: u64::from(*stream),
                    responses: u32::from(*n),
                }),
                Step::Tick => {
                    h.tick();
                }
            }
        }
        // Finally every reader catches up.
        for _ in 0..50 {
            for stream in 0..3 {
                input(&mut h, WatchInput::Credit { stream, responses: STREAM_WINDOW });
            }
        }
        let sent = std::mem::take(&mut h.watch_sent);
        // Per watch: its responses in order.
        let mut per: BTreeMap<(u64, i64), Vec<WatchResponse>> = BTreeMap::new();
        for (stream, r) in sent {
            if r.created {
                continue;
            }
            per.entry((stream, r.watch_id)).or_default().push(r);
        }
        // Re-derive each watch's range and start from the steps, in creation order.
        let mut next_id: BTreeMap<u64, i64> = BTreeMap::new();
        let mut created: BTreeMap<(u64, i64), ((String, String), i64)> = BTreeMap::new();
        {
            // Replay revisions to know the revision when each watch was created.
            let mut h2 = start();
            for s in &steps {
                match s {
                    Step::Put(k, v) => put(&mut h2, &key(*k), &v.to_string()),
                    Step::Delete(k) => delete(&mut h2, &key(*k)),
                    Step::Txn(a, b) if a != b => request(&mut h2, Request::Txn(TxnRequest {
                        success: vec![
                            RequestOp { request: Some(Op::RequestPut(PutRequest {
                                key: key(*a).into(), value: "t".into(), ..Default::default()
                            })) },
                            RequestOp { request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                                key: key(*b).into(), ..Default::default()
                            })) },
                        ],
                        ..Default::default()
                    })),
                    Step::Watch { stream, key: k, span, back } => {
                        let revision_at_step = revision(&h2);
                        let id = next_id.entry(u64::from(*stream)).or_insert(0);
                        let start = (revision_at_step - i64::from(*back)).max(0);
                        let effective = if start == 0 || start > revision_at_step { revision_at_step + 1 } else { start };
                        created.insert((u64::from(*stream), *id), (range(*k, *span), effective));
                        *id += 1;
                    }
                    _ => {}
                }
            }
        }
        for (id, (rng, start)) in &created {
            let responses = per.get(id).cloned().unwrap_or_default();
            let mut got: Vec<(i64, String, &'static str, String)> = Vec::new();
            let mut canceled_at = None;
            let mut last_rev_seen = 0;
            for r in &responses {
                prop_assert!(canceled_at.is_none(), "response after cancel on {:?}", id);
                if r.canceled {
                    prop_assert!(r.compact_revision > 0, "only compaction cancels here");
                    canceled_at = Some(r.compact_revision);
                    continue;
                }
                // One revision never spans two responses.
                let first = r.events.first().and_then(|e| e.kv.as_ref()).map_or(0, |kv| kv.mod_revision);
                prop_assert!(first > last_rev_seen, "revision {} split or repeated on {:?}", first, id);
                for (kind, k, v, rev) in events(std::slice::from_ref(r)) {
                    got.push((rev, k, kind, v));
                    last_rev_seen = rev;
                }
            }
            let want: Vec<_> = truth
                .iter()
                .filter(|(rev, k, _, _)| *rev >= *start && in_range(k, rng))
                .cloned()
                .collect();
            match canceled_at {
                None => prop_assert_eq!(&got, &want, "watch {:?} from {}", id, start),
                Some(c) => {
                    prop_assert!(got.len() <= want.len());
                    prop_assert_eq!(&got[..], &want[..got.len()], "watch {:?} prefix", id);
                    let next = got.last().map_or(*start, |g| g.0 + 1);
                    prop_assert!(next < c, "cancelled at {} though it reached {}", c, next);
                }
            }
        }
    }
}
