//! Auth mode under the seeded nemesis (`keel_sim::auth`, `keel_sim::auth_check`,
//! `keel_sim::auth_token_check`): users log in, read, write and create watches while a churn
//! client grants and revokes permissions and roles, changes passwords and deletes and re-adds
//! users during the faults. No request (watch creation and lease revokes included) may be
//! served without the permission it needed at its apply point, no token may outlive its
//! user's password change, and no login may use a password its user did not have. The
//! `skip-apply-auth-check` (writes checked only on arrival), `watch-create-skip-auth`,
//! `keep-tokens-on-password-change` and `lease-revoke-skip-auth` bugs must be caught, and a
//! seed must replay to the same trace.
#![cfg(madsim)]

use keel_engine::bugs::Bug;
use keel_sim::check::FailureKind;
use keel_sim::run::{catches, run_seed, Report, SimConfig};

fn auth(seed: u64, nodes: usize) -> SimConfig {
    SimConfig {
        nodes,
        auth: true,
        ..SimConfig::new(seed)
    }
}

/// Trace lines containing `what`.
fn count(r: &Report, what: &str) -> usize {
    r.trace_events.iter().filter(|e| e.contains(what)).count()
}

#[test]
fn bounded_auth_sweep_passes() {
    let configs = (0..12u64)
        .map(|seed| auth(seed, 1))
        .chain((0..6u64).map(|seed| auth(seed, 3)));
    let (mut served, mut denied, mut changes, mut failed) = (0, 0, 0, Vec::new());
    let (mut watches, mut watches_denied, mut passwords, mut stale) = (0, 0, 0, 0);
    for config in configs {
        let r = run_seed(&config);
        served += count(&r, "Served {");
        denied += count(&r, "=> Denied");
        changes += count(&r, "=> Applied(");
        let watch = |outcome: &str| {
            let is = |e: &&String| e.contains("] watch ka") && e.contains(outcome);
            r.trace_events.iter().filter(is).count()
        };
        watches += watch("=> Served {");
        watches_denied += watch("=> Denied");
        passwords += r
            .trace_events
            .iter()
            .filter(|e| e.contains("user passwd") && e.contains("=> Applied("))
            .count();
        stale += count(&r, "invalid auth token");
        if !r.passed() {
            failed.push(r.describe());
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    eprintln!(
        "18 auth runs: {served} served, {denied} denied, {changes} auth changes applied; \
         watches {watches} created, {watches_denied} denied; {passwords} password changes, \
         {stale} invalid-token refusals"
    );
    // The mode must exercise what it checks: requests served and refused, changes applied.
    assert!(
        served >= 200 && denied >= 50 && changes >= 200,
        "too little happened: {served} served, {denied} denied, {changes} changes applied"
    );
    assert!(
        watches >= 20 && watches_denied >= 10 && passwords >= 20 && stale >= 10,
        "too little happened: watches {watches} created, {watches_denied} denied; \
         {passwords} password changes, {stale} invalid-token refusals"
    );
}

/// Seeds whose run catches `skip-apply-auth-check` among `seeds`, at most `enough`.
fn catching(nodes: usize, seeds: std::ops::Range<u64>, enough: usize) -> Vec<u64> {
    catching_bug(
        Bug::SkipApplyAuthCheck,
        FailureKind::AuthServedWithoutPermission,
        nodes,
        seeds,
        enough,
    )
}

/// Seeds whose run catches `bug` as `kind` among `seeds`, at most `enough`.
fn catching_bug(
    bug: Bug,
    kind: FailureKind,
    nodes: usize,
    seeds: std::ops::Range<u64>,
    enough: usize,
) -> Vec<u64> {
    seeds
        .filter(|&seed| {
            let config = SimConfig {
                bugs: vec![bug],
                ..auth(seed, nodes)
            };
            catches(&config, &[kind])
        })
        .take(enough)
        .collect()
}

#[test]
fn skip_apply_auth_check_is_caught() {
    // Three members: a write that reaches a follower is checked on arrival against the
    // follower's (lagging) auth store. About half of the seeds catch it.
    let three = catching(3, 0..10, 2);
    // One member: a write must arrive between a change's proposal and its apply (one
    // fsync). 7 of 0..300 at the time of writing (149, 154, 165, 195, 203, 254, 265: since
    // the workload also creates watches and the churn changes passwords, fewer writes meet
    // that window than the 4 of 0..60 before); the search stops at the first.
    let one = catching(1, 0..200, 1);
    eprintln!("caught by three-member seeds {three:?}, one-member seeds {one:?}");
    assert!(!three.is_empty(), "no three-member seed in 0..10 caught it");
    assert!(!one.is_empty(), "no one-member seed in 0..200 caught it");
    // The same seeds pass without the bug: the failure is the bug's.
    for seed in three {
        let r = run_seed(&auth(seed, 3));
        assert!(r.passed(), "{}", r.describe());
    }
}

#[test]
fn an_auth_seed_replays() {
    let a = run_seed(&auth(7, 3));
    let b = run_seed(&auth(7, 3));
    assert_eq!(a.trace_hash, b.trace_hash, "same seed, same trace");
    assert!(count(&a, "=> Applied(") > 20, "the churn ran");
}

#[test]
fn watch_create_skip_auth_is_caught() {
    // A watch on another user's prefix, created while the user may not read it: 20 of 20
    // one-member seeds and 19 of 20 three-member seeds (0..20) at the time of writing.
    let kind = FailureKind::AuthServedWithoutPermission;
    let one = catching_bug(Bug::WatchCreateSkipAuth, kind, 1, 0..10, 10);
    let three = catching_bug(Bug::WatchCreateSkipAuth, kind, 3, 0..6, 6);
    eprintln!("watch-create-skip-auth caught by one-member seeds {one:?}, three {three:?}");
    assert!(one.len() >= 8, "only {one:?} of one-member seeds 0..10");
    assert!(
        three.len() >= 4,
        "only {three:?} of three-member seeds 0..6"
    );
}

#[test]
fn keep_tokens_on_password_change_is_caught() {
    // A client keeps using its token after its user's password changed: 12 of 20 one-member
    // seeds and 5 of 20 three-member seeds (0..20) at the time of writing.
    let kind = FailureKind::AuthTokenOutlivedInvalidation;
    let one = catching_bug(Bug::KeepTokensOnPasswordChange, kind, 1, 0..10, 10);
    let three = catching_bug(Bug::KeepTokensOnPasswordChange, kind, 3, 0..20, 1);
    eprintln!("keep-tokens-on-password-change caught by one-member seeds {one:?}, three {three:?}");
    assert!(one.len() >= 3, "only {one:?} of one-member seeds 0..10");
    assert!(!three.is_empty(), "no three-member seed in 0..20 caught it");
    // The same seeds pass without the bug: the failure is the bug's.
    let runs = one
        .iter()
        .take(2)
        .map(|&s| (s, 1))
        .chain(three.iter().map(|&s| (s, 3)));
    for (seed, nodes) in runs {
        let r = run_seed(&auth(seed, nodes));
        assert!(r.passed(), "{}", r.describe());
    }
}

#[test]
fn lease_revoke_skip_auth_is_caught() {
    // A revoke of a lease whose keys' space the user lost write permission on since it
    // attached them: 5 of one-member seeds 0..10 and 12 of three-member seeds 0..40 (2, 11,
    // 12, 15, 17, ...) at the time of writing (about the same share as the 29 of 0..100 when
    // the test was written; which seeds catch it moves whenever a trace does).
    let kind = FailureKind::AuthServedWithoutPermission;
    let one = catching_bug(Bug::LeaseRevokeSkipAuth, kind, 1, 0..10, 3);
    let three = catching_bug(Bug::LeaseRevokeSkipAuth, kind, 3, 0..20, 2);
    eprintln!("lease-revoke-skip-auth caught by one-member seeds {one:?}, three {three:?}");
    assert!(one.len() >= 3, "only {one:?} of one-member seeds 0..10");
    assert!(
        three.len() >= 2,
        "only {three:?} of three-member seeds 0..20"
    );
    // Revokes are served and refused in a run without the bug, and the run passes.
    let r = run_seed(&auth(one[0], 1));
    assert!(r.passed(), "{}", r.describe());
    assert!(count(&r, "lease revoke") > 0, "the clients revoked leases");
}
