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

use std::ops::Range;

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

/// One sweep of a bug's check: `nodes` members on `seeds`, stopping at `enough` catches; at
/// least `required` must catch it.
struct Sweep {
    nodes: usize,
    seeds: Range<u64>,
    enough: usize,
    required: usize,
}

fn sweep(nodes: usize, seeds: Range<u64>, enough: usize, required: usize) -> Sweep {
    Sweep {
        nodes,
        seeds,
        enough,
        required,
    }
}

/// Runs each sweep with `bug` on; each must catch it as `kind` on its required number of
/// seeds. The catching seeds, a list per sweep.
fn bug_is_caught<const N: usize>(bug: Bug, kind: FailureKind, sweeps: [Sweep; N]) -> [Vec<u64>; N] {
    let caught = sweeps
        .each_ref()
        .map(|s| catching_bug(bug, kind, s.nodes, s.seeds.clone(), s.enough));
    let seen: Vec<String> = sweeps
        .iter()
        .zip(&caught)
        .map(|(s, seeds)| format!("{}-member seeds {seeds:?}", s.nodes))
        .collect();
    eprintln!("{} caught by {}", bug.name(), seen.join(", "));
    for (s, seeds) in sweeps.iter().zip(&caught) {
        let (n, range) = (s.nodes, &s.seeds);
        if s.required == 1 {
            assert!(
                !seeds.is_empty(),
                "no {n}-member seed in {range:?} caught it"
            );
        } else {
            assert!(
                seeds.len() >= s.required,
                "only {seeds:?} of {n}-member seeds {range:?}"
            );
        }
    }
    caught
}

/// Seeds whose run catches `bug` as `kind` among `seeds`, at most `enough`.
fn catching_bug(
    bug: Bug,
    kind: FailureKind,
    nodes: usize,
    seeds: Range<u64>,
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
    // One member: a write must arrive between a change's proposal and its apply (one
    // fsync). 7 of 0..300 at the time of writing (149, 154, 165, 195, 203, 254, 265: since
    // the workload also creates watches and the churn changes passwords, fewer writes meet
    // that window than the 4 of 0..60 before); the search stops at the first.
    let kind = FailureKind::AuthServedWithoutPermission;
    let sweeps = [sweep(3, 0..10, 2, 1), sweep(1, 0..200, 1, 1)];
    let [three, _one] = bug_is_caught(Bug::SkipApplyAuthCheck, kind, sweeps);
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
    let sweeps = [sweep(1, 0..10, 10, 8), sweep(3, 0..6, 6, 4)];
    bug_is_caught(Bug::WatchCreateSkipAuth, kind, sweeps);
}

#[test]
fn keep_tokens_on_password_change_is_caught() {
    // A client keeps using its token after its user's password changed: 12 of 20 one-member
    // seeds and 5 of 20 three-member seeds (0..20) at the time of writing.
    let kind = FailureKind::AuthTokenOutlivedInvalidation;
    let sweeps = [sweep(1, 0..10, 10, 3), sweep(3, 0..20, 1, 1)];
    let [one, three] = bug_is_caught(Bug::KeepTokensOnPasswordChange, kind, sweeps);
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
    let sweeps = [sweep(1, 0..10, 3, 3), sweep(3, 0..20, 2, 2)];
    let [one, _three] = bug_is_caught(Bug::LeaseRevokeSkipAuth, kind, sweeps);
    // Revokes are served and refused in a run without the bug, and the run passes.
    let r = run_seed(&auth(one[0], 1));
    assert!(r.passed(), "{}", r.describe());
    assert!(count(&r, "lease revoke") > 0, "the clients revoked leases");
}
