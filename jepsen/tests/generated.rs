//! Random histories from the correct sequential model must be Valid; the same with one injected
//! fault must be Invalid.
use keel_jepsen::check::{check, CheckOptions, Verdict};
use keel_jepsen::gen::{generate, Fault, GenConfig, Workload};
use proptest::prelude::*;

fn config(seed: u64, workload: Workload, clients: usize, fault: Option<Fault>) -> GenConfig {
    GenConfig {
        ops: 300,
        clients,
        keys: 4,
        info_per_mille: 30,
        fail_per_mille: 20,
        latency_max: 60,
        workload,
        fault,
        seed,
    }
}

fn workload() -> impl Strategy<Value = Workload> {
    prop_oneof![Just(Workload::Store), Just(Workload::SingleKey)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn correct_histories_are_valid(seed in any::<u64>(), w in workload(), clients in 1usize..12) {
        let g = generate(&config(seed, w, clients, None));
        let v = check(&g.history, &CheckOptions::default());
        prop_assert!(v.is_valid(), "seed {seed}: {v}\n{}", g.history.to_jsonl());
    }

    #[test]
    fn correct_histories_with_many_in_doubt_ops_are_valid(seed in any::<u64>(), clients in 2usize..20) {
        let cfg = GenConfig {
            info_per_mille: 150,
            ..config(seed, Workload::Store, clients, None)
        };
        let g = generate(&cfg);
        let v = check(&g.history, &CheckOptions::default());
        prop_assert!(v.is_valid(), "seed {seed}: {v}");
    }

    #[test]
    fn histories_with_a_fault_are_invalid(
        seed in any::<u64>(),
        w in workload(),
        clients in 1usize..12,
        f in 0usize..Fault::ALL.len(),
    ) {
        let fault = Fault::ALL[f];
        let g = generate(&config(seed, w, clients, Some(fault)));
        prop_assume!(g.injected.is_some());
        let v = check(&g.history, &CheckOptions::default());
        prop_assert!(
            matches!(v, Verdict::Invalid(_)),
            "seed {seed} {fault:?} at {:?}: {v}", g.injected
        );
    }
}

#[test]
fn every_fault_is_injected_and_caught_in_a_store_history() {
    for fault in Fault::ALL {
        let g = generate(&config(7, Workload::Store, 8, Some(fault)));
        assert!(g.injected.is_some(), "{fault:?} not injected");
        let v = check(&g.history, &CheckOptions::default());
        assert!(matches!(v, Verdict::Invalid(_)), "{fault:?}: {v}");
    }
}

/// Found by `correct_histories_with_many_in_doubt_ops_are_valid`: backjumping once skipped a
/// choice point whose already-tried candidates wrote the conflicting key, and called this valid
/// history invalid.
#[test]
fn backjumping_regression() {
    let cfg = GenConfig {
        info_per_mille: 150,
        ..config(784_373_705_928_857_168, Workload::Store, 19, None)
    };
    let v = check(&generate(&cfg).history, &CheckOptions::default());
    assert!(v.is_valid(), "{v}");
}
