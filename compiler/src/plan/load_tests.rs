//! Planning for an offered load (`--rate R`, SPEC 2.4.10): cases worked out by hand from the
//! queueing model.

use mars_plan::{BatchPolicy, Device};

use super::testkit::{device, pipeline, profile, spec, target};
use super::*;
use crate::ir::SloKind;

/// One model: 40 ms an item on the cpu; on the gpu 4 ms for one, 9 ms for a batch of 8.
fn seg() -> (Pipeline, Profile, Target) {
    let p = pipeline(&[spec("Seg", &[])], &[]);
    let prof = profile(&[(
        "Seg",
        Some(device(&[1], &[40.0])),
        Some(device(&[1, 8], &[4.0, 9.0])),
    )]);
    (p, prof, target(4.0, &[(16.0, 1.0)]))
}

fn at_rate(rate: Option<f64>) -> PlanOptions {
    PlanOptions {
        rate,
        ..PlanOptions::default()
    }
}

#[test]
fn a_low_rate_gets_a_shorter_batch_wait_and_a_lower_p99_than_saturation() {
    let (p, prof, t) = seg();
    let saturated = plan_pipeline_explained(&p, Some(&prof), &t, &at_rate(None)).expect("plans");
    // For saturation: b = 8 on the gpu, waiting 7.875 ms for a batch at 888.9/s.
    let n = &saturated.plan.nodes[0];
    assert_eq!(
        (n.batch.policy, n.batch.max, n.batch.wait_ms),
        (BatchPolicy::Dynamic, 8, 7.875)
    );
    assert_eq!(saturated.plan.rate, None);

    let planned =
        plan_pipeline_explained(&p, Some(&prof), &t, &at_rate(Some(100.0))).expect("plans");
    let n = &planned.plan.nodes[0];
    // At 100/s a batch of 8 would wait 70 ms to fill; unbatched on the gpu it is an M/D/1
    // queue at ρ = 0.4: C = 0.4, θ = (1/4 − 1/10)/(1/2) = 0.3/ms, p99 wait ln(0.4/0.01)/0.3.
    assert_eq!(
        (n.device, n.batch.policy, n.batch.wait_ms),
        (Device::Gpu, BatchPolicy::None, 0.0)
    );
    let p99 = 4.0 + (40.0f64).ln() / 0.3;
    assert_eq!(planned.plan.predicted.latency_p99_ms, lower::round3(p99));
    assert_eq!(planned.plan.rate, Some(100.0));
    assert_eq!(n.predicted.utilization, 0.4);
    // The saturation plan at the same 100/s: its batches leave when the 7.875 ms wait runs
    // out, holding 1.79 items, each taking 9 ms: slower than the plan made for 100/s.
    let (_, sat_p99) = load::latency_at(&saturated, 100.0);
    assert!(sat_p99 > p99 + 10.0, "{sat_p99} vs {p99}");
    let (_, own_p99) = load::latency_at(&planned, 100.0);
    assert!((own_p99 - p99).abs() < 1e-9, "{own_p99} vs {p99}");
}

#[test]
fn near_capacity_the_rate_plan_batches_and_waits_for_its_batch() {
    // 800/s: unbatched the gpu carries 250/s and the cpu 100/s; b = 8 carries 888.9/s at
    // ρ = 0.9 and a batch fills in 7000/800 = 8.75 ms.
    let (p, prof, t) = seg();
    let plan = plan_pipeline(&p, Some(&prof), &t, &at_rate(Some(800.0))).expect("plans");
    let n = &plan.nodes[0];
    assert_eq!((n.batch.max, n.batch.wait_ms), (8, 8.75));
    assert_eq!(n.predicted.utilization, 0.9);
    assert!(plan.predicted.latency_p99_ms > 9.0 + 8.75);
}

#[test]
fn a_rate_above_capacity_is_refused_with_the_capacity() {
    let (p, prof, t) = seg();
    let errors = match plan_pipeline(&p, Some(&prof), &t, &at_rate(Some(1000.0))) {
        Ok(plan) => panic!("planned {}", plan.to_yaml()),
        Err(e) => e,
    };
    let [PlanError::RateUnreachable {
        rate,
        best,
        binding,
        ..
    }] = errors.as_slice()
    else {
        panic!("{errors:?}")
    };
    assert_eq!((*rate, *best), (1000.0, 888.889));
    assert!(binding.contains("GPU `gpu0`"), "{binding}");
    assert_eq!(errors[0].code(), "mars::plan::rate_unreachable");
    // Exactly at capacity the queue is not stable: refused too.
    assert!(plan_pipeline(&p, Some(&prof), &t, &at_rate(Some(8000.0 / 9.0))).is_err());
    // With --allow-slo-miss the best plan is written, flagged in its notes.
    let options = PlanOptions {
        allow_slo_miss: true,
        ..at_rate(Some(1000.0))
    };
    let plan = plan_pipeline(&p, Some(&prof), &t, &options).expect("written anyway");
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("offered load of 1000/s")),
        "{:?}",
        plan.notes
    );
}

#[test]
fn spare_cores_buy_replicas_that_shorten_the_queue() {
    // A throughput SLO plans for its load the same way: 50/s of 40 ms items on the cpu is
    // u = 2 busy replicas; 3 keep the queue stable (M/D/3, p99 wait ln(100·4/9)/0.05 = 75.9 ms)
    // and the fourth core buys a fourth replica (C = 0.1739, θ = 0.1/ms, 28.6 ms).
    let p = pipeline(&[spec("Seg", &[])], &[SloKind::ThroughputPerS(50.0)]);
    let (_, prof, t) = seg();
    let plan = plan_pipeline(&p, Some(&prof), &t, &PlanOptions::default()).expect("plans");
    let n = &plan.nodes[0];
    assert_eq!((n.device, n.replicas), (Device::Cpu, 4));
    assert_eq!(plan.rate, Some(50.0));
    let c4 = queue::erlang_c(4, 2.0);
    assert_eq!(
        plan.predicted.latency_p99_ms,
        lower::round3(40.0 + (100.0 * c4).ln() / 0.1)
    );
}

#[test]
fn predicted_p99_grows_without_bound_toward_saturation_in_the_explain_table() {
    let (p, prof, t) = seg();
    let planned =
        plan_pipeline_explained(&p, Some(&prof), &t, &at_rate(Some(600.0))).expect("plans");
    let cap = planned.solution.eval.capacity;
    for f in load::LOADS {
        assert!(load::latency_at(&planned, f * cap).1.is_finite(), "at {f}");
    }
    // Above the planned load batches fill faster than their wait, but the queue grows faster
    // still near capacity; at capacity it is unbounded.
    let p99 = |f: f64| load::latency_at(&planned, f * cap).1;
    assert!(
        p99(0.99) > p99(0.95) && p99(0.95) > p99(0.9),
        "{} {} {}",
        p99(0.9),
        p99(0.95),
        p99(0.99)
    );
    assert!(p99(1.0).is_infinite());
    let table = load::load_table(&planned);
    assert!(table.contains("planned for"), "{table}");
    assert!(table.lines().count() >= 10, "{table}");
}
