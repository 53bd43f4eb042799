//! etcd's alarms, driven sans-I/O: an alarm changes through the log so every member agrees;
//! a `NOSPACE` alarm refuses Put, Txn with a put and LeaseGrant (before the log and at apply,
//! as etcd 3.4's quota check and capped applier do) while reads, deletes, compaction and
//! lease revokes go on; disarm lets writes resume; the table survives a snapshot and restart;
//! and a member whose driver reports its disk full raises its own alarm and refuses writes.

mod common;

use common::{delete, put, range, value, Cluster, TestConfig};
use keel_engine::error::Error;
use keel_engine::node::{Input, Request, Response};
use keel_engine::state_snapshot::{
    decode_known, encode_sections, SECTION_ALARMS, SECTION_LEASES, SECTION_MEMBERS, SECTION_MVCC,
};
use keel_proto::etcdserverpb::alarm_request::AlarmAction;
use keel_proto::etcdserverpb::{
    request_op, AlarmMember, AlarmRequest, AlarmType, CompactionRequest, LeaseGrantRequest,
    LeaseRevokeRequest, RangeRequest, RequestOp, TxnRequest,
};

/// Ticks a request may take before the test gives up on it.
const TICKS_MAX: usize = 60;

fn alarm(action: AlarmAction, member_id: u64, alarm: AlarmType) -> Request {
    Request::Alarm(AlarmRequest {
        action: action as i32,
        member_id,
        alarm: alarm as i32,
    })
}

fn nospace(member_id: u64) -> AlarmMember {
    AlarmMember {
        member_id,
        alarm: AlarmType::Nospace as i32,
    }
}

/// The alarms of a Maintenance.Alarm response.
fn alarms_of(result: Result<Response, Error>) -> Vec<AlarmMember> {
    match result.expect("the alarm request succeeds") {
        Response::Alarm(r) => {
            assert!(
                r.header.is_none(),
                "etcd 3.4 answers Alarm without a header"
            );
            r.alarms
        }
        other => panic!("expected an alarm response, got {other:?}"),
    }
}

fn txn_putting(key: &str) -> Request {
    let op = |r| RequestOp { request: Some(r) };
    Request::Txn(TxnRequest {
        success: vec![op(request_op::Request::RequestRange(RangeRequest {
            key: key.to_owned().into(),
            ..Default::default()
        }))],
        failure: vec![op(request_op::Request::RequestPut(
            keel_proto::etcdserverpb::PutRequest {
                key: key.to_owned().into(),
                value: "v".into(),
                ..Default::default()
            },
        ))],
        ..Default::default()
    })
}

fn grant(id: i64) -> Request {
    Request::LeaseGrant(LeaseGrantRequest { ttl: 600, id })
}

fn three() -> Cluster {
    let mut c = Cluster::new(&[1, 2, 3], |id| {
        TestConfig::new(id, &[1, 2, 3]).seed(id * 7)
    });
    c.tick_until(TICKS_MAX, |c| c.leader().is_some());
    c
}

/// What an active NOSPACE alarm refuses and what it lets through, on member `on`.
fn check_capped(c: &mut Cluster, on: u64, key: &str) {
    let refused = [put(key, "v"), txn_putting(key), grant(0)];
    for request in refused {
        let name = request.name();
        assert_eq!(
            c.request(on, request, TICKS_MAX),
            Err(Error::NoSpace),
            "{name} refused on {on}"
        );
    }
    assert!(value(c.request(on, range(key, false), TICKS_MAX)).is_some());
    assert!(value(c.request(on, range(key, true), TICKS_MAX)).is_some());
    // (Compaction to revision 1 succeeds once; later members find it done already.)
    let compact = Request::Compaction(CompactionRequest {
        revision: 1,
        ..Default::default()
    });
    let compacted = c.request(on, compact, TICKS_MAX);
    assert!(
        matches!(compacted, Ok(_) | Err(Error::Compacted)),
        "compaction goes on: {compacted:?}"
    );
    assert!(
        c.request(on, delete("gone"), TICKS_MAX).is_ok(),
        "deletes go on"
    );
}

#[test]
fn an_alarm_goes_through_the_log_and_every_member_refuses_what_grows_the_store() {
    let mut c = three();
    let leader = c.the_leader();
    let follower = [1, 2, 3]
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    c.ok_on_leader(put("k", "v"), TICKS_MAX);
    let lease = c.ok_on_leader(grant(55), TICKS_MAX);
    assert!(matches!(lease, Response::LeaseGrant(_)));

    // Raised through a follower, for the follower.
    let raised = c.request(
        follower,
        alarm(AlarmAction::Activate, follower, AlarmType::Nospace),
        TICKS_MAX,
    );
    assert_eq!(alarms_of(raised), vec![nospace(follower)]);
    c.caught_up(&[1, 2, 3], TICKS_MAX);
    for id in [1, 2, 3] {
        assert!(
            c.node(id).alarms().has(follower, AlarmType::Nospace),
            "{id} agrees"
        );
        assert_eq!(c.node(id).status().alarms, vec![nospace(follower)]);
        check_capped(&mut c, id, "k");
    }
    let revoke = Request::LeaseRevoke(LeaseRevokeRequest { id: 55 });
    assert!(
        c.request(leader, revoke, TICKS_MAX).is_ok(),
        "lease revokes go on"
    );
    let listed = c.request(
        leader,
        alarm(AlarmAction::Get, 0, AlarmType::None),
        TICKS_MAX,
    );
    assert_eq!(alarms_of(listed), vec![nospace(follower)]);

    // Disarmed through the leader: answered with the alarm cleared, then nothing.
    let disarm = alarm(AlarmAction::Deactivate, follower, AlarmType::Nospace);
    assert_eq!(
        alarms_of(c.request(leader, disarm.clone(), TICKS_MAX)),
        vec![nospace(follower)]
    );
    assert_eq!(alarms_of(c.request(leader, disarm, TICKS_MAX)), vec![]);
    c.caught_up(&[1, 2, 3], TICKS_MAX);
    for id in [1, 2, 3] {
        assert!(c.node(id).alarms().is_empty());
        assert!(
            c.request(id, put("k", "again"), TICKS_MAX).is_ok(),
            "writes resume on {id}"
        );
    }
}

#[test]
fn a_put_proposed_before_the_alarm_is_refused_when_applied_after_it() {
    let mut c = Cluster::single(TestConfig::new(1, &[1]));
    let node = c.node_mut(1);
    let activate = alarm(AlarmAction::Activate, 1, AlarmType::Nospace);
    node.step(Input::Request {
        token: 1,
        request: activate,
    });
    // Not yet applied, so the check before the log lets it in; the apply refuses it.
    node.step(Input::Request {
        token: 2,
        request: put("late", "v"),
    });
    c.settle();
    assert_eq!(alarms_of(c.take_reply(1)), vec![nospace(1)]);
    assert_eq!(c.take_reply(2), Err(Error::NoSpace));
    assert_eq!(value(c.request(1, range("late", true), TICKS_MAX)), None);
    assert_eq!(
        c.node(1).status().revision,
        1,
        "the refused put took no revision"
    );
}

#[test]
fn corrupt_alarms_are_kept_and_listed_by_type() {
    let mut c = Cluster::single(TestConfig::new(1, &[1]));
    for (member, kind) in [(9, AlarmType::Corrupt), (1, AlarmType::Nospace)] {
        let raised = c.request(1, alarm(AlarmAction::Activate, member, kind), TICKS_MAX);
        assert_eq!(alarms_of(raised).len(), 1);
    }
    let corrupt = AlarmMember {
        member_id: 9,
        alarm: AlarmType::Corrupt as i32,
    };
    let all = c.request(1, alarm(AlarmAction::Get, 0, AlarmType::None), TICKS_MAX);
    assert_eq!(alarms_of(all), vec![nospace(1), corrupt]);
    let only = c.request(1, alarm(AlarmAction::Get, 0, AlarmType::Corrupt), TICKS_MAX);
    assert_eq!(alarms_of(only), vec![corrupt]);
}

#[test]
fn the_alarm_table_survives_a_snapshot_and_a_restart_and_older_snapshots_load() {
    let cfg = TestConfig::new(1, &[1]).snapshot_count(10);
    let mut c = Cluster::single(cfg.clone());
    c.request(1, put("k", "v"), TICKS_MAX).expect("put");
    c.request(
        1,
        alarm(AlarmAction::Activate, 1, AlarmType::Nospace),
        TICKS_MAX,
    )
    .expect("raised");
    // Deletes go on under the alarm; enough of them for a snapshot.
    for i in 0..12 {
        c.request(1, delete(&format!("d{i}")), TICKS_MAX)
            .expect("delete");
    }
    let disk = c.disks[&1].clone();
    let snapshot = disk.snapshot.clone().expect("a snapshot was saved");
    let sections = decode_known(&snapshot.data).expect("decodes");
    assert!(
        sections.contains_key(&SECTION_ALARMS),
        "the snapshot carries the alarms"
    );

    let mut restarted = Cluster::single_from(cfg.clone(), disk.clone());
    assert!(
        restarted.node(1).alarms().has(1, AlarmType::Nospace),
        "back after restart"
    );
    assert_eq!(
        restarted.request(1, put("k", "w"), TICKS_MAX),
        Err(Error::NoSpace)
    );

    // A snapshot written before the alarm section existed: no alarms, writes go.
    let mut older = disk;
    let data = encode_sections(&[
        (SECTION_MVCC, sections[&SECTION_MVCC]),
        (SECTION_LEASES, sections[&SECTION_LEASES]),
        (SECTION_MEMBERS, sections[&SECTION_MEMBERS]),
    ]);
    let mut old_snapshot = snapshot;
    old_snapshot.data = data.into();
    older.snapshot = Some(old_snapshot);
    let index = older
        .snapshot
        .as_ref()
        .map_or(0, |s| s.get_metadata().index);
    older.entries.retain(|e| e.index > index);
    let mut from_older = Cluster::single_from(cfg, older);
    assert!(from_older.node(1).alarms().is_empty());
    assert!(from_older.request(1, put("k", "w"), TICKS_MAX).is_ok());
}

#[test]
fn a_member_whose_disk_is_full_raises_its_alarm_and_refuses_writes_but_serves_reads() {
    let mut c = Cluster::single(TestConfig::new(1, &[1]));
    c.request(1, put("k", "v"), TICKS_MAX).expect("put");
    c.node_mut(1).step(Input::DiskFull { full: true });
    c.settle();
    assert!(c.node(1).disk_full());
    // (This harness's disk is perfect, so the alarm it proposed is written and applied.)
    assert!(c.node(1).alarms().has(1, AlarmType::Nospace));
    // Every write is refused while the disk is full, deletes included: nothing can be
    // written here, so nothing would be answered.
    for request in [put("k", "w"), delete("k"), grant(0)] {
        assert_eq!(c.request(1, request, TICKS_MAX), Err(Error::NoSpace));
    }
    let disarm = alarm(AlarmAction::Deactivate, 1, AlarmType::Nospace);
    assert_eq!(c.request(1, disarm.clone(), TICKS_MAX), Err(Error::NoSpace));
    assert_eq!(
        value(c.request(1, range("k", false), TICKS_MAX)),
        Some(b"v".to_vec())
    );
    let listed = c.request(1, alarm(AlarmAction::Get, 0, AlarmType::None), TICKS_MAX);
    assert_eq!(alarms_of(listed), vec![nospace(1)]);

    // Space again: the alarm stays until disarmed, as in etcd.
    c.node_mut(1).step(Input::DiskFull { full: false });
    c.settle();
    assert_eq!(c.request(1, put("k", "w"), TICKS_MAX), Err(Error::NoSpace));
    assert_eq!(alarms_of(c.request(1, disarm, TICKS_MAX)), vec![nospace(1)]);
    assert!(c.request(1, put("k", "w"), TICKS_MAX).is_ok());
}

#[test]
fn a_follower_whose_disk_is_full_gets_its_alarm_raised_cluster_wide() {
    let mut c = three();
    let leader = c.the_leader();
    let full = [1, 2, 3]
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    c.ok_on_leader(put("k", "v"), TICKS_MAX);
    c.node_mut(full).step(Input::DiskFull { full: true });
    c.tick_until(TICKS_MAX, |c| {
        c.node(leader).alarms().has(full, AlarmType::Nospace)
    });
    assert_eq!(
        c.request(leader, put("k", "w"), TICKS_MAX),
        Err(Error::NoSpace)
    );
    assert_eq!(c.request(full, delete("k"), TICKS_MAX), Err(Error::NoSpace));
    assert!(
        c.request(leader, delete("other"), TICKS_MAX).is_ok(),
        "others delete"
    );
    assert_eq!(
        value(c.request(full, range("k", true), TICKS_MAX)),
        Some(b"v".to_vec())
    );
}

#[test]
fn a_corrupt_alarm_stops_every_write_cluster_wide_while_reads_go_on() {
    let mut c = three();
    let leader = c.the_leader();
    c.ok_on_leader(put("k", "v"), TICKS_MAX);
    c.request(
        leader,
        alarm(AlarmAction::Activate, 2, AlarmType::Corrupt),
        TICKS_MAX,
    )
    .expect("raise CORRUPT");
    c.caught_up(&[1, 2, 3], TICKS_MAX);
    for on in 1..=3 {
        for request in [put("k", "w"), delete("k"), txn_putting("k"), grant(0)] {
            let name = request.name();
            assert_eq!(
                c.request(on, request, TICKS_MAX),
                Err(Error::Corrupt),
                "{name} refused on {on}"
            );
        }
        let compact = Request::Compaction(CompactionRequest {
            revision: 1,
            ..Default::default()
        });
        assert_eq!(c.request(on, compact, TICKS_MAX), Err(Error::Corrupt));
        assert_eq!(
            value(c.request(on, range("k", false), TICKS_MAX)),
            Some(b"v".to_vec())
        );
    }
    assert_eq!(Error::Corrupt.to_string(), "etcdserver: corrupt cluster");
    c.request(
        leader,
        alarm(AlarmAction::Deactivate, 2, AlarmType::Corrupt),
        TICKS_MAX,
    )
    .expect("disarm");
    c.request(leader, put("k", "w"), TICKS_MAX)
        .expect("writes resume once disarmed");
}
