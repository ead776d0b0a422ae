//! The search against brute force: on hundreds of random small pipelines (≤ 6 nodes, cpu and
//! gpu) every assignment is enumerated and judged by an independent reading of the cost
//! model's constraints; the planner must reach ≥ 99% of the optimum's throughput on each.

use mars_plan::{DeviceProfile, Profile, Target};

use super::model::CostModel;
use super::testkit::{pipeline, spec, target, NodeSpec, Rng};
use super::*;
use crate::ir::{BatchHint, DeviceHint, SloKind};

/// The most throughput `choice` sustains under the constraints as SPEC.md states them, or
/// `None` when it meets no SLO at any rate (or does not fit).
fn brute_force_throughput(model: &CostModel, choice: &[usize]) -> Option<f64> {
    let x = brute_force_capacity(model, choice)?;
    latency_holds(model, choice, x).then_some(x)
}

/// The largest rate at which constraints 1–4 hold, or `None` when nothing fits.
fn brute_force_capacity(model: &CostModel, choice: &[usize]) -> Option<f64> {
    let opts: Vec<_> = model
        .nodes
        .iter()
        .zip(choice)
        .map(|(n, &o)| &n.options[o])
        .collect();
    let replicas = |x: f64, i: usize| -> f64 {
        match model.nodes[i].fixed_replicas {
            Some(r) => f64::from(r),
            None => (x * opts[i].per_request * (1.0 - 1e-12)).ceil().max(1.0),
        }
    };
    let feasible = |x: f64| -> bool {
        for (opt, node) in opts.iter().zip(&model.nodes) {
            let u = x * opt.per_request;
            let limit = f64::from(node.fixed_replicas.unwrap_or(model.max_replicas()));
            if u > limit * (1.0 + 1e-12) {
                return false;
            }
        }
        for (w, worker) in model.workers.iter().enumerate() {
            let busy: f64 = (0..opts.len())
                .filter(|&i| opts[i].gpu.is_none() && opts[i].worker == w)
                .map(|i| x * opts[i].per_request * opts[i].cores)
                .sum();
            if busy > worker.cpus * (1.0 + 1e-12) {
                return false;
            }
        }
        for (g, gpu) in model.gpus.iter().enumerate() {
            let on: Vec<usize> = (0..opts.len())
                .filter(|&i| opts[i].gpu == Some(g))
                .collect();
            let busy: f64 = on.iter().map(|&i| x * opts[i].per_request).sum();
            let memory: f64 = on.iter().map(|&i| replicas(x, i) * opts[i].memory_mb).sum();
            if busy > gpu.share * (1.0 + 1e-12) || memory > gpu.memory_mb {
                return false;
            }
        }
        true
    };
    if !feasible(1e-9) {
        return None;
    }
    // Capacity is monotone in x: bisect.
    let (mut lo, mut hi) = (1e-9, 1e9);
    if feasible(hi) {
        lo = hi;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if feasible(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// The longest path's median and p99 latency at rate `x`, every path enumerated explicitly.
fn path_latencies(model: &CostModel, choice: &[usize], x: f64) -> (f64, f64) {
    let opts: Vec<_> = model
        .nodes
        .iter()
        .zip(choice)
        .map(|(n, &o)| &n.options[o])
        .collect();
    let succs: Vec<Vec<usize>> = (0..opts.len())
        .map(|i| {
            (0..opts.len())
                .filter(|&j| model.nodes[j].preds.contains(&i))
                .collect()
        })
        .collect();
    let node_ms = |i: usize, p99: bool| -> f64 {
        let o = opts[i];
        let base = if p99 { o.p99_ms } else { o.latency_ms };
        let lambda = x * model.nodes[i].fanout;
        // Only dynamic batches wait to fill; continuous sequences start at the next step.
        if o.batch > 1 && o.policy == mars_plan::BatchPolicy::Dynamic {
            base + 1000.0 * f64::from(o.batch - 1) / lambda
        } else {
            base
        }
    };
    fn paths(i: usize, succs: &[Vec<usize>], acc: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        acc.push(i);
        if succs[i].is_empty() {
            out.push(acc.clone());
        }
        for &j in &succs[i] {
            paths(j, succs, acc, out);
        }
        acc.pop();
    }
    let mut all = Vec::new();
    for i in (0..opts.len()).filter(|&i| model.nodes[i].preds.is_empty()) {
        paths(i, &succs, &mut Vec::new(), &mut all);
    }
    let (mut p50_max, mut p99_max) = (0.0f64, 0.0f64);
    for path in &all {
        let hops = path
            .windows(2)
            .filter(|w| opts[w[0]].worker != opts[w[1]].worker)
            .count() as f64
            * model::CROSS_WORKER_MS;
        p99_max = p99_max.max(path.iter().map(|&i| node_ms(i, true)).sum::<f64>() + hops);
        p50_max = p50_max.max(path.iter().map(|&i| node_ms(i, false)).sum::<f64>() + hops);
    }
    (p50_max, p99_max)
}

/// Whether the latency SLOs hold at rate `x`.
fn latency_holds(model: &CostModel, choice: &[usize], x: f64) -> bool {
    let (p50, p99) = path_latencies(model, choice, x);
    !(model
        .objectives
        .p99_ms
        .is_some_and(|s| p99 > s * (1.0 + 1e-9))
        || model
            .objectives
            .p50_ms
            .is_some_and(|s| p50 > s * (1.0 + 1e-9)))
}

fn optimum(model: &CostModel) -> Option<(f64, Vec<usize>)> {
    let mut choice = vec![0; model.nodes.len()];
    let mut best: Option<(f64, Vec<usize>)> = None;
    loop {
        if let Some(x) = brute_force_throughput(model, &choice) {
            if best.as_ref().is_none_or(|(b, _)| x > *b) {
                best = Some((x, choice.clone()));
            }
        }
        // Next assignment, odometer-style.
        let mut i = 0;
        loop {
            if i == choice.len() {
                return best;
            }
            choice[i] += 1;
            if choice[i] < model.nodes[i].options.len() {
                break;
            }
            choice[i] = 0;
            i += 1;
        }
    }
}

/// The lowest p99 (at each plan's own throughput) among the plans that sustain at least
/// `floor` and meet the SLOs, where nodes with a `@batch(max = …)` annotation keep the batch
/// size and policy they have in `keep` (SPEC 2.5: the latency stage does not undo them).
fn lowest_p99_from(model: &CostModel, floor: f64, keep: &[usize]) -> f64 {
    let mut choice = vec![0; model.nodes.len()];
    let mut best = f64::INFINITY;
    loop {
        let pinned_ok = model.nodes.iter().enumerate().all(|(i, n)| {
            let (a, b) = (&n.options[choice[i]], &n.options[keep[i]]);
            !n.batch_annotated || (a.batch == b.batch && a.policy == b.policy)
        });
        if pinned_ok {
            if let Some(x) = brute_force_throughput(model, &choice).filter(|&x| x >= floor) {
                best = best.min(path_latencies(model, &choice, x).1);
            }
        }
        let mut i = 0;
        loop {
            if i == choice.len() {
                return best;
            }
            choice[i] += 1;
            if choice[i] < model.nodes[i].options.len() {
                break;
            }
            choice[i] = 0;
            i += 1;
        }
    }
}

fn random_device(rng: &mut Rng, gpu: bool) -> DeviceProfile {
    let sizes = [1u32, 2, 4, 8, 16];
    let mut batch: Vec<u32> = sizes.iter().copied().filter(|_| rng.chance(0.45)).collect();
    if batch.is_empty() {
        batch.push(sizes[rng.below(5) as usize]);
    }
    batch.truncate(3);
    let base = if gpu {
        rng.float(0.5, 10.0)
    } else {
        rng.float(1.0, 50.0)
    };
    let alpha = rng.float(0.3, 1.0);
    let latency: Vec<f64> = batch
        .iter()
        .map(|&b| base * f64::from(b).powf(alpha))
        .collect();
    let p99 = latency.iter().map(|l| l * rng.float(1.0, 1.5)).collect();
    let memory = if gpu {
        Some(
            batch
                .iter()
                .map(|&b| rng.float(100.0, 3000.0) * (1.0 + 0.1 * f64::from(b)))
                .collect(),
        )
    } else {
        None
    };
    let cores = if gpu {
        None
    } else {
        Some([1.0, 0.5, 2.0][rng.below(3) as usize])
    };
    DeviceProfile {
        p99_ms: Some(p99),
        memory_mb: memory,
        cpu_cores: cores,
        ..DeviceProfile::new(batch, latency)
    }
}

/// A random case: pipeline specs, profile, target.
fn random_case(rng: &mut Rng) -> (Pipeline, Profile, Target) {
    random_case_of(rng, 6)
}

/// A random case of at most `max_nodes` nodes.
fn random_case_of(rng: &mut Rng, max_nodes: u64) -> (Pipeline, Profile, Target) {
    let n = 1 + rng.below(max_nodes) as usize;
    let mut profile = Profile {
        mars_profile: 1,
        nodes: Default::default(),
        fanout: Default::default(),
        runtime: None,
    };
    let mut specs: Vec<NodeSpec> = Vec::new();
    for i in 0..n {
        let id = format!("n{i}");
        let mut preds = Vec::new();
        if i > 0 && rng.chance(0.85) {
            preds.push(rng.below(i as u64) as usize);
            if rng.chance(0.3) {
                let p = rng.below(i as u64) as usize;
                if !preds.contains(&p) {
                    preds.push(p);
                }
            }
        }
        let mut s = spec(&id, &preds);
        let has_gpu = rng.chance(0.6);
        let has_cpu = !has_gpu || rng.chance(0.8);
        let kp = mars_plan::KindProfile {
            cpu: has_cpu.then(|| random_device(rng, false)),
            gpu: has_gpu.then(|| random_device(rng, true)),
            ..Default::default()
        };
        if rng.chance(0.2) {
            s.map = true;
            profile.fanout.insert(id.clone(), rng.float(0.5, 8.0));
        }
        if rng.chance(0.1) && has_cpu {
            s.annotations.device = Some(DeviceHint::Cpu);
        } else if rng.chance(0.1) && has_gpu {
            s.annotations.device = Some(DeviceHint::Gpu);
        }
        if rng.chance(0.1) {
            s.annotations.replicas = Some(1 + rng.below(4) as u32);
        }
        if rng.chance(0.1) {
            // Only where some measured size stays allowed.
            let smallest = [&kp.cpu, &kp.gpu]
                .iter()
                .filter_map(|d| d.as_ref().map(|d| d.batch[0]))
                .max()
                .unwrap_or(1);
            s.annotations.batch = Some(BatchHint::Dynamic {
                max: Some(smallest.max(4)),
                wait_ms: None,
            });
        }
        profile.nodes.insert(id, kp);
        specs.push(s);
    }
    let slos = if rng.chance(0.35) {
        vec![SloKind::LatencyP99Ms(rng.float(20.0, 200.0))]
    } else {
        vec![]
    };
    let cpus = [1.0, 2.0, 4.0, 8.0][rng.below(4) as usize];
    let gpu_mem = [2.0, 4.0, 16.0][rng.below(3) as usize];
    let share = [0.5, 1.0][rng.below(2) as usize];
    (
        pipeline(&specs, &slos),
        profile,
        target(cpus, &[(gpu_mem, share)]),
    )
}

#[test]
fn the_search_reaches_99_percent_of_the_brute_force_optimum() {
    let mut rng = Rng(0x6d61_7273);
    let mut compared = 0;
    let mut infeasible = 0;
    let mut worst: f64 = 1.0;
    let mut traded = 0;
    let options = PlanOptions {
        allow_slo_miss: true,
        ..PlanOptions::default()
    };
    for case in 0..500 {
        let (p, prof, t) = random_case(&mut rng);
        let model =
            CostModel::build(&p, Some(&prof), &t, &options).expect("random cases are well-formed");
        let solution = search::search(&model, &options.search);
        match optimum(&model) {
            Some((best, best_choice)) => {
                compared += 1;
                // The planner's own claim must hold under the brute-force reading...
                let check = brute_force_throughput(&model, &solution.choice);
                assert!(
                    solution.eval.violation == 0.0,
                    "case {case}: the planner misses an SLO that a plan meets: {:?}",
                    solution.eval
                );
                let claimed = check.unwrap_or_else(|| {
                    panic!(
                        "case {case}: the planner's plan is infeasible: {:?}",
                        solution.eval
                    )
                });
                assert!(
                    solution.eval.capacity <= claimed * (1.0 + 1e-6),
                    "case {case}: claims {} but sustains {claimed}",
                    solution.eval.capacity
                );
                // ... and be within 1% of the best; and within the throughput tolerance of
                // the best, the p99 no worse than the lowest there.
                let floor = best * (1.0 - super::evaluate::THROUGHPUT_TOLERANCE);
                let lowest = lowest_p99_from(&model, floor, &solution.choice);
                assert!(
                    solution.eval.p99_ms <= lowest * (1.0 + 1e-6) + 1e-9,
                    "case {case}: p99 {} where {lowest} is reachable within the tolerance",
                    solution.eval.p99_ms
                );
                if solution.eval.capacity < best * (1.0 - 1e-9) {
                    traded += 1;
                }
                let ratio = solution.eval.capacity / best;
                worst = worst.min(ratio);
                assert!(
                    ratio >= 0.99,
                    "case {case}: planner {} vs optimum {best} ({ratio})\nplanner {:?}: {:?}\noptimum {best_choice:?}: {:?}\n{:#?}",
                    solution.eval.capacity,
                    solution.choice,
                    solution.eval,
                    super::evaluate::evaluate(&model, &best_choice),
                    model
                );
            }
            None => {
                infeasible += 1;
                assert!(
                    solution.eval.violation > 0.0,
                    "case {case}: brute force finds no feasible plan, the planner claims one"
                );
            }
        }
    }
    assert!(compared >= 300, "only {compared} comparable cases");
    eprintln!("{compared} cases compared, {infeasible} infeasible, worst ratio {worst}, {traded} traded throughput for p99");
    assert!(traded > 0, "no case trades throughput for latency");
}

/// Under `slo throughput >= N/s`, the fewest resources that sustain N: (GPUs used, busy cores)
/// of the best assignment, by brute force.
fn fewest_resources(model: &CostModel, n: f64) -> Option<(usize, f64)> {
    let mut choice = vec![0; model.nodes.len()];
    let mut best: Option<(usize, f64)> = None;
    loop {
        let sustains = brute_force_capacity(model, &choice).is_some_and(|x| x >= n * (1.0 - 1e-9));
        // Under a throughput SLO latencies are judged at N with every node's queueing wait
        // (SPEC 2.4.10; its formulas are tested in `queue.rs`): the model reads each
        // assignment's latencies, the brute force checks only the search.
        if sustains && super::evaluate::evaluate(model, &choice).violation == 0.0 {
            let mut gpus: Vec<usize> = choice
                .iter()
                .enumerate()
                .filter_map(|(i, &o)| model.nodes[i].options[o].gpu)
                .collect();
            gpus.sort_unstable();
            gpus.dedup();
            let cores: f64 = choice
                .iter()
                .enumerate()
                .map(|(i, &o)| {
                    n * model.nodes[i].options[o].per_request * model.nodes[i].options[o].cores
                })
                .sum();
            let better = match best {
                None => true,
                Some((g, c)) => gpus.len() < g || (gpus.len() == g && cores < c * (1.0 - 1e-9)),
            };
            if better {
                best = Some((gpus.len(), cores));
            }
        }
        let mut i = 0;
        loop {
            if i == choice.len() {
                return best;
            }
            choice[i] += 1;
            if choice[i] < model.nodes[i].options.len() {
                break;
            }
            choice[i] = 0;
            i += 1;
        }
    }
}

#[test]
fn under_a_throughput_slo_the_search_takes_the_fewest_resources() {
    let mut rng = Rng(0x7468_7275);
    let options = PlanOptions {
        allow_slo_miss: true,
        ..PlanOptions::default()
    };
    let mut compared = 0;
    for case in 0..300 {
        let (mut p, prof, t) = random_case(&mut rng);
        let model = CostModel::build(&p, Some(&prof), &t, &options).expect("well-formed");
        let Some((best, _)) = optimum(&model) else {
            continue;
        };
        // Ask for a share of the most the target can do.
        let n = best * [0.2, 0.5, 0.9][case % 3];
        p.slos.push(crate::ir::Slo {
            kind: SloKind::ThroughputPerS(n),
            text: format!("throughput >= {n}/s"),
            span: (0, 1).into(),
        });
        let model = CostModel::build(&p, Some(&prof), &t, &options).expect("well-formed");
        let Some((gpus, cores)) = fewest_resources(&model, n) else {
            continue;
        };
        compared += 1;
        let solution = search::search(&model, &options.search);
        let e = &solution.eval;
        assert_eq!(
            e.violation, 0.0,
            "case {case}: a plan sustains {n}/s, the planner misses: {e:?}"
        );
        assert!(e.capacity >= n * (1.0 - 1e-9), "case {case}");
        assert!(
            e.cost.gpus_used < gpus
                || (e.cost.gpus_used == gpus && e.cost.cpu_busy <= cores * 1.01 + 1e-9),
            "case {case}: planner uses {} GPUs and {} cores, the fewest are {gpus} and {cores}",
            e.cost.gpus_used,
            e.cost.cpu_busy
        );
    }
    assert!(compared >= 150, "only {compared} comparable cases");
}

#[test]
fn on_two_workers_with_a_gpu_each_the_search_reaches_99_percent_too() {
    // Placement across workers: cross-worker hops in the latency, per-worker CPU pools, and
    // two GPUs (up to 12 options a node).
    let mut rng = Rng(0x776f_726b);
    let options = PlanOptions {
        allow_slo_miss: true,
        ..PlanOptions::default()
    };
    let mut compared = 0;
    for case in 0..200 {
        let (p, prof, mut t) = random_case_of(&mut rng, 4);
        let mut w1 = t.workers[0].clone();
        w1.name = "w1".to_string();
        w1.cpus = [1.0, 2.0, 4.0][case % 3];
        for g in &mut w1.gpus {
            g.name = format!("{}_w1", g.name);
        }
        t.workers.push(w1);
        let model = CostModel::build(&p, Some(&prof), &t, &options).expect("well-formed");
        let solution = search::search(&model, &options.search);
        match optimum(&model) {
            Some((best, best_choice)) => {
                compared += 1;
                let claimed =
                    brute_force_throughput(&model, &solution.choice).unwrap_or_else(|| {
                        panic!(
                            "case {case}: the planner's plan is infeasible: {:?}",
                            solution.eval
                        )
                    });
                assert!(
                    solution.eval.capacity <= claimed * (1.0 + 1e-6),
                    "case {case}"
                );
                let ratio = solution.eval.capacity / best;
                assert!(
                    ratio >= 0.99,
                    "case {case}: planner {} vs optimum {best} at {best_choice:?}",
                    solution.eval.capacity
                );
            }
            None => assert!(solution.eval.violation > 0.0, "case {case}"),
        }
    }
    assert!(compared >= 120, "only {compared} comparable cases");
}

/// Random cases of at most 4 nodes where about 40% of the nodes with a cpu profile become
/// generating models measured per step (random step and prefill costs, random length
/// histograms, sometimes a `kv_tokens` bound), so that each has `none`, `dynamic` and
/// `continuous` options: the search must still reach 99% of the brute-force optimum.
#[test]
fn generating_nodes_keep_the_search_within_99_percent() {
    let mut rng = Rng(0x6765_6e65);
    let options = PlanOptions {
        allow_slo_miss: true,
        ..PlanOptions::default()
    };
    let (mut compared, mut generating) = (0, 0);
    let mut chosen: std::collections::BTreeMap<String, usize> = Default::default();
    for case in 0..150 {
        let (mut p, mut prof, t) = random_case_of(&mut rng, 4);
        let ids: Vec<String> = p.graph.node_weights().map(|n| n.id.clone()).collect();
        for id in ids {
            let Some(kp) = prof.nodes.get_mut(&id) else {
                continue;
            };
            let Some(cpu) = kp.cpu.as_mut() else { continue };
            if !rng.chance(0.4) {
                continue;
            }
            let base = rng.float(0.5, 5.0);
            let slope = rng.float(0.0, 1.0) * base;
            cpu.step_ms = Some(
                cpu.batch
                    .iter()
                    .map(|&b| base + slope * f64::from(b - 1))
                    .collect(),
            );
            cpu.prefill_ms = Some(
                cpu.batch
                    .iter()
                    .map(|&b| rng.float(0.0, 3.0) * base * f64::from(b).sqrt())
                    .collect(),
            );
            let mut tokens: Vec<u32> = (0..1 + rng.below(3))
                .map(|_| 1 + rng.below(40) as u32)
                .collect();
            tokens.sort_unstable();
            tokens.dedup();
            let share = tokens.iter().map(|_| rng.float(0.05, 1.0)).collect();
            kp.output_tokens = Some(mars_plan::TokenHistogram { tokens, share });
            kp.prompt_tokens = Some(rng.float(1.0, 20.0));
            let kv = rng.chance(0.3).then(|| 20 + rng.below(200) as i64);
            super::testkit::make_generating(&mut p, &id, kv);
            generating += 1;
        }
        let model =
            CostModel::build(&p, Some(&prof), &t, &options).expect("random cases are well-formed");
        let solution = search::search(&model, &options.search);
        for (i, node) in model.nodes.iter().enumerate() {
            if node.generation.is_some() {
                let policy = node.options[solution.choice[i]].policy;
                *chosen.entry(format!("{policy:?}")).or_insert(0) += 1;
            }
        }
        if let Some((best, best_choice)) = optimum(&model) {
            compared += 1;
            assert_eq!(solution.eval.violation, 0.0, "case {case}: misses an SLO");
            let claimed = brute_force_throughput(&model, &solution.choice)
                .unwrap_or_else(|| panic!("case {case}: the planner's plan is infeasible"));
            assert!(
                solution.eval.capacity <= claimed * (1.0 + 1e-6),
                "case {case}"
            );
            let ratio = solution.eval.capacity / best;
            assert!(
                ratio >= 0.99,
                "case {case}: planner {} vs optimum {best} ({ratio}); {best_choice:?}",
                solution.eval.capacity
            );
        } else {
            assert!(solution.eval.violation > 0.0, "case {case}");
        }
    }
    assert!(generating >= 80, "only {generating} generating nodes");
    // The cases exercise every policy.
    eprintln!("policies chosen for generating nodes: {chosen:?}");
    assert_eq!(chosen.len(), 3, "{chosen:?}");
    assert!(compared >= 90, "only {compared} comparable cases");
}
