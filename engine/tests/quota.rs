//! The space quota, driven sans-I/O: a write that would take the store's quota bytes to the
//! quota is refused with etcd's "database space exceeded" and raises the member's `NOSPACE`
//! alarm through the log; then the capped applier refuses what grows the store on every
//! member while reads, deletes and compaction go on; a disarm while still over the quota is
//! undone by the next write; compaction frees quota bytes and, once disarmed, writes resume.
//! Entries that pass the proposer's check but not the apply's are refused on every member
//! alike, and every member raises its own alarm (etcd's `applyEntryNormal`).

mod common;

use common::{delete, put, range, value, Cluster, TestConfig};
use keel_engine::error::Error;
use keel_engine::node::{Input, MaintenanceConfig, Request, Response};
use keel_proto::etcdserverpb::alarm_request::AlarmAction;
use keel_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, CompactionRequest, LeaseGrantRequest,
};

const TICKS_MAX: usize = 60;
/// Room for three 1000-byte puts, not four, besides the member's fixed base.
const QUOTA_BYTES: u64 = keel_engine::node::QUOTA_BASE_BYTES + 4 * 1024;

fn three() -> Cluster {
    let mut c = Cluster::new(&[1, 2, 3], |id| {
        TestConfig::new(id, &[1, 2, 3])
            .seed(id * 11)
            .maintenance(MaintenanceConfig {
                quota_bytes: Some(QUOTA_BYTES),
                ..MaintenanceConfig::default()
            })
    });
    c.tick_until(TICKS_MAX, |c| c.leader().is_some());
    c
}

fn alarm(action: AlarmAction, member_id: u64) -> Request {
    Request::Alarm(AlarmRequest {
        action: action as i32,
        member_id,
        alarm: AlarmType::Nospace as i32,
    })
}

fn listed(c: &mut Cluster, on: u64) -> Vec<AlarmMember> {
    match c.request(on, alarm(AlarmAction::Get, 0), TICKS_MAX) {
        Ok(Response::Alarm(r)) => r.alarms,
        other => panic!("alarm list: {other:?}"),
    }
}

fn nospace(member_id: u64) -> AlarmMember {
    AlarmMember {
        member_id,
        alarm: AlarmType::Nospace as i32,
    }
}

fn big() -> String {
    "x".repeat(1000)
}

fn compact_to_current(c: &mut Cluster, on: u64) {
    let revision = c.node(on).store().current_revision();
    let compact = Request::Compaction(CompactionRequest {
        revision,
        ..Default::default()
    });
    c.request(on, compact, TICKS_MAX)
        .expect("compaction goes on");
}

#[test]
fn going_over_the_quota_raises_nospace_and_compaction_plus_disarm_lets_writes_resume() {
    let mut c = three();
    let leader = c.the_leader();
    let mut written = 0;
    let refused = loop {
        match c.request(leader, put("k", &big()), TICKS_MAX) {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 10, "the quota never refused a write");
    };
    assert_eq!(refused, Error::NoSpace);
    assert!(
        c.node(leader).alarms().has(leader, AlarmType::Nospace),
        "as in etcd, the refusal is answered once the alarm is raised"
    );
    assert_eq!(
        written, 3,
        "three 1000-byte revisions fit in 4 KiB, not four"
    );
    assert_eq!(
        refused.to_string(),
        "etcdserver: mvcc: database space exceeded"
    );
    c.tick_until(TICKS_MAX, |c| {
        (1..=3).all(|id| c.node(id).alarms().has(leader, AlarmType::Nospace))
    });
    assert_eq!(listed(&mut c, leader), vec![nospace(leader)]);
    // Capped: a small put and a lease grant are refused on every member; reads, deletes
    // and compaction go on.
    for on in 1..=3 {
        assert_eq!(c.request(on, put("s", "1"), TICKS_MAX), Err(Error::NoSpace));
        let grant = Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 0 });
        assert_eq!(c.request(on, grant, TICKS_MAX), Err(Error::NoSpace));
        assert_eq!(
            value(c.request(on, range("k", false), TICKS_MAX)),
            Some(big().into_bytes())
        );
    }
    c.request(leader, delete("none"), TICKS_MAX)
        .expect("deletes go on");
    // Disarmed while still over the quota: the next big write is refused and raises it again.
    c.request(leader, alarm(AlarmAction::Deactivate, leader), TICKS_MAX)
        .expect("disarm");
    assert_eq!(
        c.request(leader, put("k", &big()), TICKS_MAX),
        Err(Error::NoSpace)
    );
    c.tick_until(TICKS_MAX, |c| {
        c.node(leader).alarms().has(leader, AlarmType::Nospace)
    });
    // Compaction frees the old revisions at once; then disarm, and writes work again.
    let before = c.node(leader).store().quota_bytes();
    compact_to_current(&mut c, leader);
    let after = c.node(leader).store().quota_bytes();
    assert!(after < before / 2, "compaction freed {before} → {after}");
    c.request(leader, alarm(AlarmAction::Deactivate, leader), TICKS_MAX)
        .expect("disarm");
    assert!(listed(&mut c, leader).is_empty());
    for on in 1..=3 {
        c.request(on, put("s", "small"), TICKS_MAX)
            .expect("writes resume on every member");
    }
    c.caught_up(&[1, 2, 3], TICKS_MAX);
    let used: Vec<u64> = (1..=3)
        .map(|id| c.node(id).status().quota_bytes_used)
        .collect();
    assert!(
        used.iter().all(|&u| u == used[0]),
        "every member counts the same bytes: {used:?}"
    );
}

#[test]
fn entries_over_the_quota_at_apply_are_answered_nospace_and_every_member_raises_its_alarm() {
    let mut c = three();
    let leader = c.the_leader();
    c.request(leader, put("k", &big()), TICKS_MAX)
        .expect("one fits");
    // Three more proposed before any applies: each passes the proposer's check (one fits),
    // but at apply only the first does.
    for token in 1000..1003 {
        c.node_mut(leader).step(Input::Request {
            token,
            request: put("k", &big()),
        });
    }
    c.tick_until(TICKS_MAX, |c| (1000..1003).all(|t| c.has_reply(t)));
    let results: Vec<bool> = (1000..1003).map(|t| c.take_reply(t).is_ok()).collect();
    assert_eq!(
        results,
        [true, true, false],
        "the third is over the quota at apply"
    );
    c.tick_until(TICKS_MAX, |c| {
        (1..=3).all(|id| c.node(1).alarms().has(id, AlarmType::Nospace))
    });
    assert_eq!(
        listed(&mut c, leader),
        vec![nospace(1), nospace(2), nospace(3)]
    );
    c.caught_up(&[1, 2, 3], TICKS_MAX);
    let revisions: Vec<i64> = (1..=3)
        .map(|id| c.node(id).store().current_revision())
        .collect();
    // etcd's quota applier: the entry is applied all the same, on every member (members may
    // have different quotas; all must build the same state), and only its client is told.
    assert_eq!(
        revisions,
        [5, 5, 5],
        "the entry over the quota is applied everywhere, the same way"
    );
}
