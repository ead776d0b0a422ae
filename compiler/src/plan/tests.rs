//! The planner on hand-built pipelines: each test states a case whose answer is worked out by
//! hand from the cost model.

use mars_plan::{BatchPolicy, Device};

use super::testkit::{device, pipeline, profile, spec, target};
use super::*;
use crate::ir::{Annotations, BatchHint, DeviceHint, SloKind};

fn plan_ok(p: &Pipeline, prof: Option<&Profile>, t: &Target) -> Plan {
    match plan_pipeline(p, prof, t, &PlanOptions::default()) {
        Ok(plan) => plan,
        Err(e) => panic!("planning failed: {e:?}"),
    }
}

fn plan_err(p: &Pipeline, prof: Option<&Profile>, t: &Target) -> Vec<PlanError> {
    match plan_pipeline(p, prof, t, &PlanOptions::default()) {
        Ok(plan) => panic!("planning should fail, got {}", plan.to_yaml()),
        Err(e) => e,
    }
}

#[test]
fn a_cpu_chain_fills_the_cpu_pool() {
    // Two nodes of 10 ms on 4 cores: X·(0.01 + 0.01) ≤ 4 → 200/s, 2 replicas each.
    let p = pipeline(&[spec("a", &[]), spec("b", &[0])], &[]);
    let prof = profile(&[
        ("a", Some(device(&[1], &[10.0])), None),
        ("b", Some(device(&[1], &[10.0])), None),
    ]);
    let plan = plan_ok(&p, Some(&prof), &target(4.0, &[]));
    assert_eq!(plan.predicted.throughput, 200.0);
    assert_eq!(plan.predicted.bottleneck, "w0.cpu");
    assert_eq!(plan.predicted.latency_p50_ms, 20.0);
    for n in &plan.nodes {
        assert_eq!(
            (n.device, n.replicas, n.worker.as_str()),
            (Device::Cpu, 2, "w0")
        );
        assert_eq!(n.batch.policy, BatchPolicy::None);
        assert_eq!(n.predicted.utilization, 1.0);
        assert_eq!(n.predicted.throughput, 200.0);
    }
}

#[test]
fn a_model_goes_to_the_gpu_with_the_batch_that_sustains_most() {
    // cpu: 40 ms/item on 4 cores → 100/s. gpu b=8: 9 ms per 8 → 1/0.001125 = 888.889/s.
    let p = pipeline(&[spec("Seg", &[])], &[]);
    let prof = profile(&[(
        "Seg",
        Some(device(&[1, 2], &[40.0, 70.0])),
        Some(device(&[1, 8], &[4.0, 9.0])),
    )]);
    let plan = plan_ok(&p, Some(&prof), &target(4.0, &[(16.0, 1.0)]));
    let n = &plan.nodes[0];
    assert_eq!(
        (n.device, n.gpu.as_deref(), n.batch.max),
        (Device::Gpu, Some("gpu0"), 8)
    );
    assert_eq!(n.batch.policy, BatchPolicy::Dynamic);
    assert_eq!(plan.predicted.throughput, 888.889);
    assert_eq!(plan.predicted.bottleneck, "gpu0");
    // Batch fill at 888.9 items/s: 7 items take 7.875 ms; the wait is that.
    assert_eq!(n.batch.wait_ms, 7.875);
    assert_eq!(plan.predicted.latency_p99_ms, 16.875);
}

#[test]
fn a_p99_slo_trades_batch_size_for_latency() {
    // Under p99 < 10 ms the b=8 plan (16.875 ms) is out; b=1 on the GPU gives 250/s, 4 ms.
    let p = pipeline(&[spec("Seg", &[])], &[SloKind::LatencyP99Ms(10.0)]);
    let prof = profile(&[(
        "Seg",
        Some(device(&[1, 2], &[40.0, 70.0])),
        Some(device(&[1, 8], &[4.0, 9.0])),
    )]);
    let plan = plan_ok(&p, Some(&prof), &target(4.0, &[(16.0, 1.0)]));
    assert_eq!(plan.nodes[0].batch.max, 1);
    assert_eq!(plan.predicted.throughput, 250.0);
    assert_eq!(plan.slos.len(), 1);
    assert!(plan.slos[0].met);
    assert_eq!(plan.slos[0].predicted, 4.0);
}

#[test]
fn a_throughput_slo_takes_the_fewest_resources() {
    // 50/s is within the CPU's 100/s: no GPU is needed.
    let p = pipeline(&[spec("Seg", &[])], &[SloKind::ThroughputPerS(50.0)]);
    let prof = profile(&[(
        "Seg",
        Some(device(&[1], &[40.0])),
        Some(device(&[1, 8], &[4.0, 9.0])),
    )]);
    let plan = plan_ok(&p, Some(&prof), &target(4.0, &[(16.0, 1.0)]));
    let n = &plan.nodes[0];
    // 2 busy replicas at 50/s; 3 keep the queue stable and the fourth core buys a fourth,
    // which shortens the queue (SPEC 2.4.10): capacity 4/0.04 = 100/s.
    assert_eq!((n.device, n.replicas), (Device::Cpu, 4));
    assert_eq!(plan.predicted.throughput, 100.0);
    assert_eq!(plan.rate, Some(50.0));
    assert!(plan.slos[0].met);
    // 150/s is not: the GPU it is.
    let p = pipeline(&[spec("Seg", &[])], &[SloKind::ThroughputPerS(150.0)]);
    let plan = plan_ok(&p, Some(&prof), &target(4.0, &[(16.0, 1.0)]));
    assert_eq!(plan.nodes[0].device, Device::Gpu);
    assert!(plan.predicted.throughput >= 150.0);
}

#[test]
fn an_unreachable_throughput_slo_names_the_best_and_the_binding_constraint() {
    let p = pipeline(&[spec("a", &[])], &[SloKind::ThroughputPerS(500.0)]);
    let prof = profile(&[("a", Some(device(&[1], &[10.0])), None)]);
    let errs = plan_err(&p, Some(&prof), &target(2.0, &[]));
    assert_eq!(errs.len(), 1);
    let PlanError::SloUnmet {
        slo,
        best,
        binding,
        span,
    } = &errs[0]
    else {
        panic!("{errs:?}")
    };
    assert_eq!(slo, "throughput >= 500/s");
    assert_eq!(best, "200/s");
    assert!(binding.contains("CPU pool of worker `w0`"), "{binding}");
    assert_eq!(*span, Some((100, 1).into()));
    // --allow-slo-miss writes the plan, with a note.
    let options = PlanOptions {
        allow_slo_miss: true,
        ..PlanOptions::default()
    };
    let plan = plan_pipeline(&p, Some(&prof), &target(2.0, &[]), &options).expect("written anyway");
    assert!(!plan.slos[0].met);
    assert!(
        plan.notes.iter().any(|n| n.contains("SLO missed")),
        "{:?}",
        plan.notes
    );
}

#[test]
fn an_unreachable_latency_slo_names_the_critical_path() {
    let p = pipeline(
        &[spec("a", &[]), spec("b", &[0])],
        &[SloKind::LatencyP99Ms(15.0)],
    );
    let prof = profile(&[
        ("a", Some(device(&[1], &[10.0])), None),
        ("b", Some(device(&[1], &[8.0])), None),
    ]);
    let errs = plan_err(&p, Some(&prof), &target(2.0, &[]));
    let PlanError::SloUnmet { best, binding, .. } = &errs[0] else {
        panic!("{errs:?}")
    };
    assert_eq!(best, "18 ms");
    assert!(binding.contains("a → b"), "{binding}");
    assert!(binding.contains("slowest node is `a`"), "{binding}");
}

#[test]
fn device_gpu_on_a_cpu_target_is_an_error_at_the_annotation() {
    let mut s = spec("Seg", &[]);
    s.annotations = Annotations {
        device: Some(DeviceHint::Gpu),
        device_span: Some((40, 12).into()),
        ..Annotations::default()
    };
    let p = pipeline(&[s], &[]);
    let prof = profile(&[(
        "Seg",
        Some(device(&[1], &[40.0])),
        Some(device(&[1], &[4.0])),
    )]);
    let errs = plan_err(&p, Some(&prof), &target(4.0, &[]));
    assert_eq!(
        errs,
        vec![PlanError::DeviceUnavailable {
            node: "Seg".to_string(),
            span: Some((40, 12).into())
        }]
    );
    // Without a profile too.
    assert_eq!(plan_err(&p, None, &target(4.0, &[])).len(), 1);
}

#[test]
fn a_kind_missing_from_the_profile_names_file_key_and_line() {
    let p = pipeline(&[spec("a", &[]), spec("Seg", &[0])], &[]);
    let text = "mars_profile: 1\nnodes:\n  a:\n    cpu: {batch: [1], latency_ms: [1]}\n";
    let prof = Profile::from_yaml(text, "app.profile.yaml").expect("valid");
    let options = PlanOptions {
        profile_path: "app.profile.yaml".to_string(),
        profile_text: Some(text.to_string()),
        ..PlanOptions::default()
    };
    let errs =
        plan_pipeline(&p, Some(&prof), &target(4.0, &[]), &options).expect_err("Seg is missing");
    let PlanError::MissingProfile {
        location,
        key,
        node,
        ..
    } = &errs[0]
    else {
        panic!("{errs:?}")
    };
    assert_eq!(
        (location.as_str(), key.as_str(), node.as_str()),
        ("app.profile.yaml:2", "nodes.Seg", "Seg")
    );
    assert_eq!(
        errs[0].to_string(),
        "app.profile.yaml:2: the profile has no entry `nodes.Seg` for node `Seg` (kind `Seg`)"
    );
}

#[test]
fn a_node_with_its_own_profile_entry_uses_it() {
    let p = pipeline(&[spec("a", &[])], &[]);
    let prof = profile(&[
        ("a", Some(device(&[1], &[10.0])), None),
        ("a@a", Some(device(&[1], &[20.0])), None),
    ]);
    let plan = plan_ok(&p, Some(&prof), &target(1.0, &[]));
    assert_eq!(plan.predicted.throughput, 50.0);
}

#[test]
fn annotations_constrain_the_plan() {
    let mut fixed = spec("a", &[]);
    fixed.annotations.replicas = Some(3);
    let mut none = spec("b", &[0]);
    none.annotations.batch = Some(BatchHint::None);
    let mut capped = spec("c", &[1]);
    capped.annotations.batch = Some(BatchHint::Dynamic {
        max: Some(4),
        wait_ms: Some(5.0),
    });
    let mut cpu_only = spec("d", &[2]);
    cpu_only.annotations.device = Some(DeviceHint::Cpu);
    let p = pipeline(&[fixed, none, capped, cpu_only], &[]);
    let both = || {
        (
            Some(device(&[1, 4, 16], &[10.0, 12.0, 20.0])),
            Some(device(&[1, 4, 16], &[1.0, 1.2, 2.0])),
        )
    };
    let entries: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|k| (*k, both().0, both().1))
        .collect();
    let plan = plan_ok(&p, Some(&profile(&entries)), &target(64.0, &[(16.0, 1.0)]));
    let node = |id: &str| plan.node(id).expect("node exists");
    assert_eq!(node("a").replicas, 3);
    assert_eq!(
        (node("b").batch.policy, node("b").batch.max),
        (BatchPolicy::None, 1)
    );
    assert_eq!(
        (
            node("c").batch.policy,
            node("c").batch.max,
            node("c").batch.wait_ms
        ),
        (BatchPolicy::Dynamic, 4, 5.0)
    );
    assert_eq!(node("d").device, Device::Cpu);
}

#[test]
fn replicas_stop_at_64() {
    // 100 ms per item on a 1000-core machine: the node's 64 replicas bound it at 640/s.
    let p = pipeline(&[spec("slow", &[])], &[]);
    let prof = profile(&[("slow", Some(device(&[1], &[100.0])), None)]);
    let plan = plan_ok(&p, Some(&prof), &target(1000.0, &[]));
    assert_eq!(plan.nodes[0].replicas, 64);
    assert_eq!(plan.predicted.throughput, 640.0);
    assert_eq!(plan.predicted.bottleneck, "slow");
}

#[test]
fn gpu_nodes_fit_with_one_replica_each() {
    // Σ u ≤ share ≤ 1 on a GPU, so a GPU node never needs a second replica; 6 GB fits in 16.
    let p = pipeline(&[spec("m", &[])], &[]);
    let mut gpu = device(&[1], &[10.0]);
    gpu.memory_mb = Some(vec![6144.0]);
    let prof = profile(&[("m", None, Some(gpu))]);
    let plan = plan_ok(&p, Some(&prof), &target(4.0, &[(16.0, 1.0)]));
    assert_eq!(
        (plan.predicted.throughput, plan.nodes[0].replicas),
        (100.0, 1)
    );
}

#[test]
fn a_pipeline_that_does_not_fit_is_an_error() {
    let p = pipeline(&[spec("m", &[])], &[]);
    let mut gpu = device(&[1], &[10.0]);
    gpu.memory_mb = Some(vec![6144.0]);
    let prof = profile(&[("m", None, Some(gpu))]);
    let errs = plan_err(&p, Some(&prof), &target(4.0, &[(4.0, 1.0)]));
    assert!(
        matches!(&errs[0], PlanError::DoesNotFit { reason, .. } if reason.contains("gpu0")),
        "{errs:?}"
    );
}

#[test]
fn worker_memory_bounds_replicas_in_steps() {
    // 10 ms/item, 1 GB per replica, 8 cores: the cores allow 800/s (8 replicas), 2.5 GB only
    // 2 replicas → 200/s.
    let mut cpu = device(&[1], &[10.0]);
    cpu.memory_mb = Some(vec![1024.0]);
    let mut t = target(8.0, &[]);
    t.workers[0].memory_gb = 2.5;
    let p = pipeline(&[spec("a", &[])], &[]);
    let plan = plan_ok(&p, Some(&profile(&[("a", Some(cpu.clone()), None)])), &t);
    assert_eq!(
        (plan.predicted.throughput, plan.nodes[0].replicas),
        (200.0, 2)
    );
    assert_eq!(plan.predicted.bottleneck, "w0.memory");
    // Two such nodes in 3.5 GB: three replicas in all, so one each → 100/s.
    t.workers[0].memory_gb = 3.5;
    let p = pipeline(&[spec("a", &[]), spec("b", &[0])], &[]);
    let plan = plan_ok(
        &p,
        Some(&profile(&[
            ("a", Some(cpu.clone()), None),
            ("b", Some(cpu), None),
        ])),
        &t,
    );
    assert_eq!(plan.predicted.throughput, 100.0);
    assert_eq!(
        plan.nodes.iter().map(|n| n.replicas).collect::<Vec<_>>(),
        vec![1, 1]
    );
}

#[test]
fn map_nodes_see_their_fanout() {
    let mut m = spec("words", &[0]);
    m.map = true;
    let p = pipeline(&[spec("a", &[]), m], &[]);
    let mut prof = profile(&[
        ("a", Some(device(&[1], &[1.0])), None),
        ("words", Some(device(&[1], &[10.0])), None),
    ]);
    prof.fanout.insert("words".to_string(), 6.0);
    // X·(0.001 + 6·0.01) ≤ 1 → 16.393/s.
    let plan = plan_ok(&p, Some(&prof), &target(1.0, &[]));
    assert_eq!(plan.predicted.throughput, 16.393);
    assert_eq!(plan.nodes[1].map_over, Some(0));
}

#[test]
fn without_a_profile_nodes_take_a_millisecond_and_the_plan_says_so() {
    let mut g = spec("g", &[0]);
    g.annotations.device = Some(DeviceHint::Gpu);
    let mut bat = spec("b", &[1]);
    bat.annotations.batch = Some(BatchHint::Dynamic {
        max: Some(8),
        wait_ms: None,
    });
    let p = pipeline(&[spec("a", &[]), g, bat], &[]);
    let plan = plan_ok(&p, None, &target(2.0, &[(16.0, 1.0)]));
    assert!(
        plan.notes.iter().any(|n| n.contains("without a profile")),
        "{:?}",
        plan.notes
    );
    assert_eq!(plan.node("g").map(|n| n.device), Some(Device::Gpu));
    assert_eq!(
        plan.node("b").map(|n| (n.batch.policy, n.batch.max)),
        Some((BatchPolicy::Dynamic, 8))
    );
}

#[test]
fn multi_worker_targets_spread_the_load() {
    let p = pipeline(
        &[
            spec("a", &[]),
            spec("b", &[0]),
            spec("c", &[1]),
            spec("d", &[2]),
        ],
        &[],
    );
    let entries: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|k| (*k, Some(device(&[1], &[10.0])), None))
        .collect();
    let mut t = target(2.0, &[]);
    let mut w1 = t.workers[0].clone();
    w1.name = "w1".to_string();
    t.workers.push(w1);
    let plan = plan_ok(&p, Some(&profile(&entries)), &t);
    // 4 nodes × 0.01 core·s per request over 2 × 2 cores → 100/s, two nodes on each worker.
    assert_eq!(plan.predicted.throughput, 100.0);
    let on_w1 = plan.nodes.iter().filter(|n| n.worker == "w1").count();
    assert_eq!(on_w1, 2);
}

#[test]
fn the_same_inputs_give_the_same_bytes() {
    let p = pipeline(
        &[
            spec("a", &[]),
            spec("b", &[0]),
            spec("c", &[0]),
            spec("d", &[1, 2]),
        ],
        &[SloKind::LatencyP99Ms(80.0)],
    );
    let entries: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|k| {
            (
                *k,
                Some(device(&[1, 2, 4], &[10.0, 15.0, 24.0])),
                Some(device(&[1, 8], &[2.0, 5.0])),
            )
        })
        .collect();
    let prof = profile(&entries);
    let t = target(4.0, &[(8.0, 0.5), (8.0, 1.0)]);
    let first = plan_ok(&p, Some(&prof), &t).to_yaml();
    for _ in 0..3 {
        assert_eq!(plan_ok(&p, Some(&prof), &t).to_yaml(), first);
    }
    assert_eq!(
        Plan::from_yaml(&first, "p.plan.yaml")
            .expect("reads back")
            .to_yaml(),
        first
    );
}

#[test]
fn without_a_profile_slos_are_reported_but_not_enforced() {
    let p = pipeline(
        &[spec("a", &[]), spec("b", &[0])],
        &[SloKind::LatencyP99Ms(1.0)],
    );
    let plan = plan_ok(&p, None, &target(2.0, &[]));
    assert!(!plan.slos[0].met);
    assert_eq!(plan.slos[0].predicted, 2.0);
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("not enforced without a profile")),
        "{:?}",
        plan.notes
    );
}

#[test]
fn explain_names_a_latency_slo_that_costs_throughput() {
    let p = pipeline(&[spec("Seg", &[])], &[SloKind::LatencyP99Ms(10.0)]);
    let prof = profile(&[(
        "Seg",
        Some(device(&[1, 2], &[40.0, 70.0])),
        Some(device(&[1, 8], &[4.0, 9.0])),
    )]);
    let t = target(4.0, &[(16.0, 1.0)]);
    let options = PlanOptions::default();
    let planned = plan_pipeline_explained(&p, Some(&prof), &t, &options).expect("plannable");
    let text = explain::explain(&planned, &p, Some(&prof), &t, &options);
    assert!(
        text.contains("binding constraint: `slo latency.p99 < 10ms`: it keeps batches small; without it the plan would reach 888.889/s"),
        "{text}"
    );
    // All of a node's replicas run on one GPU: a second GPU does not help a single node.
    assert!(
        text.contains("another GPU like `gpu0` on `w0`: 250/s (+0.0%)"),
        "{text}"
    );
}

// ---- generating nodes (SPEC 2.4.7) -------------------------------------------------------

/// One generating node `gen` on one core: steps s(n) = 0.95 + 0.05·n ms (measured at 1, 4, 16;
/// linear, so interpolation is exact), no prefill, lengths 1 (80%) or 11 (20%) tokens.
/// Per item: none 3·s(1) = 3 ms; continuous ≤16: 3·s(16)/16 = 0.328125 ms; dynamic ≤16:
/// s(16) + 10·E[s(N)], N ~ Bin(16, 0.2), = 1.75 + 10·(0.95·(1 − 0.8^16) + 0.05·3.2) over 16.
fn heavy_tail(hint: Option<BatchHint>, slos: &[SloKind], kv: Option<i64>) -> (Pipeline, Profile) {
    let mut s = spec("gen", &[]);
    s.annotations.batch = hint;
    let mut p = pipeline(&[s], slos);
    super::testkit::make_generating(&mut p, "gen", kv);
    let mut prof = profile(&[]);
    prof.nodes.insert(
        "gen".to_string(),
        super::testkit::generating_kind(
            &[1, 4, 16],
            &[1.0, 1.15, 1.75],
            &[0.0, 0.0, 0.0],
            (&[1, 11], &[0.8, 0.2]),
            Some(7.0),
        ),
    );
    (p, prof)
}

fn dynamic_16_item_ms() -> f64 {
    let q = 0.8f64.powi(16);
    (1.75 + 10.0 * (0.95 * (1.0 - q) + 0.05 * 3.2)) / 16.0
}

#[test]
fn a_heavy_tailed_generating_node_runs_continuously() {
    let (p, prof) = heavy_tail(None, &[], None);
    let plan = plan_ok(&p, Some(&prof), &target(1.0, &[]));
    let n = &plan.nodes[0];
    assert_eq!(
        (n.batch.policy, n.batch.max, n.batch.wait_ms),
        (BatchPolicy::Continuous, 16, 0.0)
    );
    // One core: 1000/0.328125 items/s; a sequence takes L·s(16): 1.75 ms at the median length
    // (1), 19.25 ms at the p99 (11). No wait to fill.
    assert_eq!(plan.predicted.throughput, 3047.619);
    assert_eq!(n.predicted.throughput, 3047.619);
    assert_eq!(
        (plan.predicted.latency_p50_ms, plan.predicted.latency_p99_ms),
        (1.75, 19.25)
    );
    // Static batches of 16 would serve 1000/dynamic_16_item_ms(): continuous gains 2.4×
    // (less than the padding ratio E[max of 16]/E[L] = 3.57, since steps of 16 cost more).
    let dynamic = 1000.0 / dynamic_16_item_ms();
    assert!((dynamic - 1271.597).abs() < 1e-3, "{dynamic}");
}

#[test]
fn a_batch_hint_fixes_the_policy_and_is_costed_per_step() {
    let hint = BatchHint::Dynamic {
        max: Some(16),
        wait_ms: Some(5.0),
    };
    let (p, prof) = heavy_tail(Some(hint), &[], None);
    let plan = plan_ok(&p, Some(&prof), &target(1.0, &[]));
    let n = &plan.nodes[0];
    assert_eq!(
        (n.batch.policy, n.batch.max, n.batch.wait_ms),
        (BatchPolicy::Dynamic, 16, 5.0)
    );
    assert_eq!(
        plan.predicted.throughput,
        lower::round3(1000.0 / dynamic_16_item_ms())
    );
    let (p, prof) = heavy_tail(Some(BatchHint::Continuous { max: Some(4) }), &[], None);
    let plan = plan_ok(&p, Some(&prof), &target(1.0, &[]));
    let n = &plan.nodes[0];
    assert_eq!((n.batch.policy, n.batch.max), (BatchPolicy::Continuous, 4));
    // 3·s(4)/4 = 0.8625 ms per item.
    assert_eq!(plan.predicted.throughput, 1159.42);
    let (p, prof) = heavy_tail(Some(BatchHint::None), &[], None);
    let plan = plan_ok(&p, Some(&prof), &target(1.0, &[]));
    assert_eq!(plan.nodes[0].batch.policy, BatchPolicy::None);
    assert_eq!(plan.predicted.throughput, 333.333);
}

#[test]
fn a_tight_p99_slo_makes_a_generating_node_run_one_at_a_time() {
    // p99 < 12 ms: continuous ≤16 takes 11·1.75 = 19.25 ms, ≤4 takes 11·1.15 = 12.65 ms; one at
    // a time takes 11·1 = 11 ms; dynamic batches wait for their longest member and to fill.
    let (p, prof) = heavy_tail(None, &[SloKind::LatencyP99Ms(12.0)], None);
    let plan = plan_ok(&p, Some(&prof), &target(1.0, &[]));
    let n = &plan.nodes[0];
    assert_eq!((n.batch.policy, n.batch.max), (BatchPolicy::None, 1));
    assert_eq!(plan.predicted.throughput, 333.333);
    assert_eq!(plan.predicted.latency_p99_ms, 11.0);
}

#[test]
fn the_kv_bound_rules_out_large_continuous_batches() {
    // kv_tokens 40, 7 prompt + 3 output tokens a sequence: continuous ≤16 needs 160, ≤4 needs
    // 40 (allowed, 1159.42/s), and dynamic ≤16 (1271.597/s) then serves most.
    let (p, prof) = heavy_tail(None, &[], Some(40));
    let plan = plan_ok(&p, Some(&prof), &target(1.0, &[]));
    let n = &plan.nodes[0];
    assert_eq!((n.batch.policy, n.batch.max), (BatchPolicy::Dynamic, 16));
    assert_eq!(plan.predicted.throughput, 1271.597);
    let (p, prof) = heavy_tail(Some(BatchHint::Continuous { max: None }), &[], Some(40));
    let plan = plan_ok(&p, Some(&prof), &target(1.0, &[]));
    assert_eq!(
        (plan.nodes[0].batch.policy, plan.nodes[0].batch.max),
        (BatchPolicy::Continuous, 4)
    );
}

#[test]
fn equal_lengths_and_a_costly_prefill_favour_static_batches() {
    // Every sequence takes 5 flat 1 ms steps; a prefill costs 10 ms however many prompts.
    // Dynamic ≤16: (10 + 5)/16 = 0.9375 ms an item. Continuous ≤16 prefills b/E[L] = 3.2
    // newcomers at a time: 10/3.2 + 5/16 = 3.4375 ms. None: 15 ms.
    let mut p = pipeline(&[spec("gen", &[])], &[]);
    super::testkit::make_generating(&mut p, "gen", None);
    let mut prof = profile(&[]);
    prof.nodes.insert(
        "gen".to_string(),
        super::testkit::generating_kind(&[1, 16], &[1.0, 1.0], &[10.0, 10.0], (&[5], &[1.0]), None),
    );
    let plan = plan_ok(&p, Some(&prof), &target(1.0, &[]));
    let n = &plan.nodes[0];
    assert_eq!((n.batch.policy, n.batch.max), (BatchPolicy::Dynamic, 16));
    assert_eq!(plan.predicted.throughput, 1066.667);
}

#[test]
fn without_step_costs_a_generating_node_keeps_the_batch_model() {
    // A profile without `step_ms`: whole batches, as for any node; no continuous option unless
    // annotated, and then it is a batch that does not wait to fill.
    let mut p = pipeline(&[spec("gen", &[])], &[]);
    super::testkit::make_generating(&mut p, "gen", None);
    let prof = profile(&[("gen", Some(device(&[1, 8], &[4.0, 9.0])), None)]);
    let plan = plan_ok(&p, Some(&prof), &target(1.0, &[]));
    let n = &plan.nodes[0];
    assert_eq!((n.batch.policy, n.batch.max), (BatchPolicy::Dynamic, 8));
    assert_eq!(plan.predicted.throughput, 888.889);
    let mut s = spec("gen", &[]);
    s.annotations.batch = Some(BatchHint::Continuous { max: Some(8) });
    let mut p = pipeline(&[s], &[]);
    super::testkit::make_generating(&mut p, "gen", None);
    let plan = plan_ok(&p, Some(&prof), &target(1.0, &[]));
    let n = &plan.nodes[0];
    assert_eq!(
        (n.batch.policy, n.batch.max, n.batch.wait_ms),
        (BatchPolicy::Continuous, 8, 0.0)
    );
    assert_eq!(plan.predicted.throughput, 888.889);
    // 9 ms, no fill time.
    assert_eq!(plan.predicted.latency_p50_ms, 9.0);
}

#[test]
fn generating_plans_are_deterministic_and_explained() {
    let (p, prof) = heavy_tail(None, &[], None);
    let t = target(1.0, &[]);
    let a = plan_ok(&p, Some(&prof), &t).to_yaml();
    let b = plan_ok(&p, Some(&prof), &t).to_yaml();
    assert_eq!(a, b);
    let options = PlanOptions::default();
    let planned = plan_pipeline_explained(&p, Some(&prof), &t, &options).expect("plannable");
    let text = explain::explain(&planned, &p, Some(&prof), &t, &options);
    let section: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("generating nodes"))
        .take(5)
        .collect();
    assert_eq!(
        section,
        vec![
            "generating nodes (items/s of one replica on the chosen device):",
            "  gen: output tokens mean 3, p50 1, p99 11",
            "    none            333.333 items/s   latency 1 ms, p99 11 ms",
            "    dynamic ≤16     1271.597 items/s  latency 12.913 ms, p99 12.913 ms",
            "    continuous ≤16  3047.619 items/s  latency 1.75 ms, p99 19.25 ms  ← chosen",
        ],
        "{text}"
    );
    // Under `@batch(max = 16, wait = 5ms)` continuous is still predicted, and said to be
    // ruled out.
    let hint = BatchHint::Dynamic {
        max: Some(16),
        wait_ms: Some(5.0),
    };
    let (p, prof) = heavy_tail(Some(hint), &[], None);
    let planned = plan_pipeline_explained(&p, Some(&prof), &t, &options).expect("plannable");
    let text = explain::explain(&planned, &p, Some(&prof), &t, &options);
    assert!(
        text.contains(
            "    dynamic ≤16     1271.597 items/s  latency 12.913 ms, p99 12.913 ms  ← chosen\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("    continuous ≤16  3047.619 items/s  latency 1.75 ms, p99 19.25 ms  (ruled out: the `@batch` annotation fixes another policy)\n"),
        "{text}"
    );
}

/// A heavy node between two cheap ones on a 2-core pool, as in `title_translate`: batching
/// the cheap nodes by 32 saves 0.075% of the CPU but makes each wait 155 ms to fill.
fn heavy_between_cheap(annotate_first: Option<BatchHint>) -> (Pipeline, Profile, Target) {
    let mut a = spec("a", &[]);
    a.annotations.batch = annotate_first;
    let p = pipeline(&[a, spec("heavy", &[0]), spec("c", &[1])], &[]);
    let cheap = || Some(device(&[1, 32], &[0.01, 0.2]));
    let prof = profile(&[
        ("a", cheap(), None),
        ("heavy", Some(device(&[1], &[10.0])), None),
        ("c", cheap(), None),
    ]);
    (p, prof, target(2.0, &[]))
}

#[test]
fn cheap_nodes_off_the_bottleneck_do_not_wait_to_fill_batches() {
    // Regression (title_translate planned `≤32 wait 38.38ms` on nodes at utilization 0.00).
    // Batches of 32 at a and c: X = 2000/(10 + 2·0.2/32) = 199.750/s, but each batch takes
    // 31/X = 155.2 ms to fill. Batches of one: X = 2000/10.02 = 199.601/s (0.075% less, within
    // the tolerance) and p99 = 10.02 ms.
    let (p, prof, t) = heavy_between_cheap(None);
    let plan = plan_ok(&p, Some(&prof), &t);
    for n in &plan.nodes {
        assert_eq!(
            (n.id.as_str(), n.batch.policy, n.batch.max, n.batch.wait_ms),
            (n.id.as_str(), BatchPolicy::None, 1, 0.0)
        );
    }
    assert_eq!(plan.predicted.throughput, 199.601);
    assert_eq!(plan.predicted.latency_p99_ms, 10.02);
    assert_eq!(plan.predicted.bottleneck, "w0.cpu");

    // The batched assignment sustains more, by less than the tolerance, at a far worse p99.
    let model = CostModel::build(&p, Some(&prof), &t, &PlanOptions::default()).expect("builds");
    let batched: Vec<usize> = model
        .nodes
        .iter()
        .map(|n| {
            let b = if n.id == "heavy" { 1 } else { 32 };
            n.options
                .iter()
                .position(|o| o.batch == b)
                .expect("profiled")
        })
        .collect();
    let e = evaluate::evaluate(&model, &batched);
    assert!(
        e.capacity > 199.75 && e.capacity < 199.751,
        "{}",
        e.capacity
    );
    assert!(plan.predicted.throughput >= e.capacity * (1.0 - evaluate::THROUGHPUT_TOLERANCE));
    assert!(e.p99_ms > 320.0, "{}", e.p99_ms);
}

#[test]
fn a_cheap_node_that_would_bound_the_throughput_unbatched_keeps_its_batch() {
    // a (one replica) → heavy, 4 cores. a unbatched: 6 ms an item, its one replica bounds X at
    // 166.667/s. Batches of 8 take 8 ms (1 ms an item): X = 4000/(1 + 10) = 363.636/s, the CPU
    // pool bounds it, and a batch fills in 7/X = 19.25 ms. 54% less throughput is no tie.
    let mut a = spec("a", &[]);
    a.annotations.replicas = Some(1);
    let p = pipeline(&[a, spec("heavy", &[0])], &[]);
    let prof = profile(&[
        ("a", Some(device(&[1, 8], &[6.0, 8.0])), None),
        ("heavy", Some(device(&[1], &[10.0])), None),
    ]);
    let plan = plan_ok(&p, Some(&prof), &target(4.0, &[]));
    let a = &plan.nodes[0];
    assert_eq!(
        (a.batch.policy, a.batch.max, a.batch.wait_ms),
        (BatchPolicy::Dynamic, 8, 19.25)
    );
    assert_eq!(plan.predicted.throughput, 363.636);
    assert_eq!(plan.predicted.bottleneck, "w0.cpu");
}

#[test]
fn a_batch_annotation_on_a_cheap_node_is_kept() {
    // As above, but the user asked a to batch: it keeps the throughput stage's 32 and its
    // wait; c, unannotated, does not wait.
    let (p, prof, t) = heavy_between_cheap(Some(BatchHint::Dynamic {
        max: Some(32),
        wait_ms: Some(2.0),
    }));
    let plan = plan_ok(&p, Some(&prof), &t);
    let batches: Vec<_> = plan
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.batch.policy, n.batch.max, n.batch.wait_ms))
        .collect();
    assert_eq!(
        batches,
        [
            ("a", BatchPolicy::Dynamic, 32, 2.0),
            ("heavy", BatchPolicy::None, 1, 0.0),
            ("c", BatchPolicy::None, 1, 0.0),
        ]
    );
}
