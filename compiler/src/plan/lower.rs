//! Lowering a pipeline and the search's solution to the plan file's structs. Everything the
//! runtime needs comes from the IR (implementations, arguments, types, parameters) and the
//! solution (placement, replicas, batching, predictions). Floats are rounded to 3 decimals so
//! that plans diff readably.

use std::collections::BTreeMap;

use mars_plan::{
    Arg, BatchPolicy, BatchSpec, ModelImpl, NodePrediction, PipelinePrediction, Plan, PlanInput,
    PlanNode, PlanOutput, SloVerdict, PLAN_VERSION,
};

use super::evaluate::{fill_ms, Bound};
use super::model::CostModel;
use super::search::Solution;
use super::PlanOptions;
use crate::ir::{BatchHint, Implementation, Pipeline, SloKind, Source};

/// Per-batch timeout of exec nodes (ms) when nothing else says.
pub const EXEC_TIMEOUT_MS: u64 = 30_000;

/// Round to 3 decimals (and turn -0 into 0).
pub fn round3(x: f64) -> f64 {
    let r = (x * 1000.0).round() / 1000.0;
    if r == 0.0 {
        0.0
    } else {
        r
    }
}

/// The plan for `solution`.
pub fn lower_plan(
    pipeline: &Pipeline,
    model: &CostModel,
    solution: &Solution,
    options: &PlanOptions,
) -> Plan {
    let eval = &solution.eval;
    let arg = |s: &Source| match s {
        Source::Input(name) => Arg::input(name.clone()),
        Source::Node(idx, port) => Arg::node(pipeline.graph[*idx].id.clone(), *port),
        Source::Const(lit) => Arg::value(lit.to_json()),
    };
    let inputs = pipeline
        .inputs
        .iter()
        .map(|i| PlanInput {
            name: i.name.clone(),
            ty: i.ty.to_string(),
            default: i.default.as_ref().map(|l| l.to_json()),
        })
        .collect();
    let outputs = pipeline
        .outputs
        .iter()
        .map(|o| PlanOutput {
            name: o.name.clone(),
            ty: o.ty.to_string(),
            from: arg(&o.from),
        })
        .collect();

    let mut nodes = Vec::with_capacity(model.nodes.len());
    let mut inline = Vec::new();
    for (i, mnode) in model.nodes.iter().enumerate() {
        let node = &pipeline.graph[mnode.index];
        let opt = &mnode.options[solution.choice[i]];
        let replicas = eval.replicas[i];
        // At the operating rate: the offered load when planned for one, else the capacity.
        let items_per_s = eval.rate * mnode.fanout;
        // Per item: a batch's L/b, or the per-step cost (kept apart so that plans of
        // non-generating nodes stay byte for byte what they were).
        let (u, served) = if opt.per_step {
            (
                items_per_s * opt.item_ms / 1000.0,
                f64::from(replicas) * 1000.0 / opt.item_ms,
            )
        } else {
            (
                items_per_s * opt.latency_ms / (1000.0 * f64::from(opt.batch)),
                f64::from(replicas) * f64::from(opt.batch) * 1000.0 / opt.latency_ms,
            )
        };
        let implementation = match &node.implementation {
            Implementation::Builtin(id) => mars_plan::Implementation {
                builtin: Some(id.clone()),
                exec: None,
                model: None,
            },
            Implementation::Exec(cmd) => mars_plan::Implementation {
                builtin: None,
                exec: Some(cmd.clone()),
                model: None,
            },
            Implementation::Model { arch, config } => mars_plan::Implementation {
                builtin: None,
                exec: None,
                model: Some(ModelImpl {
                    arch: arch.clone(),
                    config: config
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_json()))
                        .collect(),
                }),
            },
        };
        let fill = round3(fill_ms(opt.batch, eval.rate * mnode.fanout).min(1.0e9));
        let batch = match &node.annotations.batch {
            Some(BatchHint::None) => BatchSpec {
                policy: BatchPolicy::None,
                max: 1,
                wait_ms: 0.0,
            },
            Some(BatchHint::Dynamic { wait_ms, .. }) => BatchSpec {
                policy: BatchPolicy::Dynamic,
                max: opt.batch,
                wait_ms: wait_ms.map_or(fill, round3),
            },
            Some(BatchHint::Continuous { .. }) => BatchSpec {
                policy: BatchPolicy::Continuous,
                max: opt.batch,
                wait_ms: 0.0,
            },
            // Without a profile a batchable node takes what is queued (SPEC 2.4.8).
            None if opt.batch <= 1 && model.unprofiled && node.declared.batchable => BatchSpec {
                policy: BatchPolicy::Dynamic,
                max: super::model::UNPROFILED_BATCH_MAX,
                wait_ms: 0.0,
            },
            None if opt.policy == BatchPolicy::Continuous => BatchSpec {
                policy: BatchPolicy::Continuous,
                max: opt.batch,
                wait_ms: 0.0,
            },
            None if opt.batch <= 1 => BatchSpec {
                policy: BatchPolicy::None,
                max: 1,
                wait_ms: 0.0,
            },
            None => BatchSpec {
                policy: BatchPolicy::Dynamic,
                max: opt.batch,
                wait_ms: fill,
            },
        };
        if super::model::runs_inline(node, opt, replicas) {
            inline.push(node.id.clone());
        }
        nodes.push(PlanNode {
            id: node.id.clone(),
            kind: node.kind.clone(),
            implementation,
            map_over: node.map_over,
            args: node.args.iter().map(arg).collect(),
            params: node
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect::<BTreeMap<_, _>>(),
            in_types: node.in_types.iter().map(ToString::to_string).collect(),
            out_types: node.out_types.iter().map(ToString::to_string).collect(),
            device: opt.device,
            worker: model.workers[opt.worker].name.clone(),
            gpu: opt.gpu.map(|g| model.gpus[g].name.clone()),
            replicas,
            replica_range: None,
            batch,
            timeout_ms: matches!(node.implementation, Implementation::Exec(_))
                .then_some(EXEC_TIMEOUT_MS),
            predicted: NodePrediction {
                latency_ms: round3(opt.latency_ms),
                p99_ms: round3(opt.p99_ms),
                throughput: round3(served),
                utilization: round3((u / f64::from(replicas.max(1))).min(1.0)),
            },
        });
    }

    let (ranges, budget) = super::pool::replica_ranges(pipeline, model, solution);
    let gpu_shares = super::pool::gpu_shares(model, solution);
    for (node, range) in nodes.iter_mut().zip(ranges) {
        node.replica_range = range;
    }

    let slos = pipeline
        .slos
        .iter()
        .map(|slo| {
            let (predicted, met) = slo_verdict(slo.kind, solution);
            SloVerdict {
                slo: slo.text.clone(),
                predicted: round3(predicted),
                met,
            }
        })
        .collect();

    Plan {
        mars_plan: PLAN_VERSION,
        workers: model.workers.iter().map(|w| w.name.clone()).collect(),
        budget,
        gpu_shares,
        mars_version: env!("CARGO_PKG_VERSION").to_string(),
        pipeline: pipeline.name.clone(),
        inputs_of_plan: options.origin.clone(),
        inputs,
        outputs,
        nodes,
        predicted: PipelinePrediction {
            throughput: round3(eval.capacity),
            latency_p50_ms: round3(eval.p50_ms.min(1.0e9)),
            latency_p99_ms: round3(eval.p99_ms.min(1.0e9)),
            bottleneck: bound_name(model, eval.bound),
        },
        slos,
        notes: options.notes.clone(),
        inline,
        rate: model.objectives.load().map(round3),
    }
}

/// The predicted value of an SLO's quantity and whether the SLO holds.
pub fn slo_verdict(kind: SloKind, solution: &Solution) -> (f64, bool) {
    let e = &solution.eval;
    let tol = |s: f64| 1e-9 * s.abs().max(1.0);
    match kind {
        SloKind::LatencyP50Ms(s) => (e.p50_ms.min(1.0e9), e.p50_ms <= s + tol(s)),
        SloKind::LatencyP99Ms(s) => (e.p99_ms.min(1.0e9), e.p99_ms <= s + tol(s)),
        SloKind::ThroughputPerS(n) => (e.capacity, e.capacity >= n - tol(n)),
    }
}

/// The short name of a bound, as the plan's `bottleneck` spells it: a node id, or a resource
/// (`w0.cpu`, `gpu0`, `gpu0.memory`, `w0.memory`), or `none`.
pub fn bound_name(model: &CostModel, bound: Bound) -> String {
    match bound {
        Bound::Replicas(i) => model.nodes[i].id.clone(),
        Bound::Cpu(w) => format!("{}.cpu", model.workers[w].name),
        Bound::Gpu(g) => model.gpus[g].name.clone(),
        Bound::GpuMemory(g) => format!("{}.memory", model.gpus[g].name),
        Bound::Memory(w) => format!("{}.memory", model.workers[w].name),
        Bound::Unbounded => "none".to_string(),
    }
}

/// A sentence describing a bound, for diagnostics and `--explain`.
pub fn describe_bound(model: &CostModel, solution: &Solution) -> String {
    let e = &solution.eval;
    match e.bound {
        Bound::Replicas(i) => {
            let limit = match model.nodes[i].fixed_replicas {
                Some(r) => format!("its `@replicas({r})`"),
                // Planned for a load: the replicas were chosen for it (SPEC 2.4.10).
                None if !e.waits.is_empty() => format!(
                    "the {} replicas chosen for {}/s",
                    e.replicas[i],
                    round3(e.rate)
                ),
                None => format!("the limit of {} replicas", model.max_replicas()),
            };
            format!("node `{}` at {limit}", model.nodes[i].id)
        }
        Bound::Cpu(w) => format!(
            "the CPU pool of worker `{}` ({} cores, all busy)",
            model.workers[w].name, model.workers[w].cpus
        ),
        Bound::Gpu(g) => format!(
            "GPU `{}` (share {} fully used)",
            model.gpus[g].name, model.gpus[g].share
        ),
        Bound::GpuMemory(g) => format!(
            "the memory of GPU `{}` ({} MB)",
            model.gpus[g].name,
            round3(model.gpus[g].memory_mb)
        ),
        Bound::Memory(w) => format!(
            "the memory of worker `{}` ({} MB)",
            model.workers[w].name,
            round3(model.workers[w].memory_mb.unwrap_or(0.0))
        ),
        Bound::Unbounded => "nothing (no node takes time)".to_string(),
    }
}

/// A sentence describing the latency-critical path.
pub fn describe_critical_path(model: &CostModel, solution: &Solution) -> String {
    let e = &solution.eval;
    let mut run = 0.0;
    let mut fill = 0.0;
    let mut queue = 0.0;
    let mut slowest: Option<(usize, f64)> = None;
    for &i in &e.critical_path {
        let node = &model.nodes[i];
        let opt = &node.options[solution.choice[i]];
        let f = opt.fill_ms(e.rate * node.fanout);
        let q = e.waits.get(i).map_or(0.0, |w| w.p99_ms);
        run += opt.p99_ms;
        fill += f;
        queue += q;
        if slowest.is_none_or(|(_, t)| opt.p99_ms + f + q > t) {
            slowest = Some((i, opt.p99_ms + f + q));
        }
    }
    let names: Vec<&str> = e
        .critical_path
        .iter()
        .map(|&i| model.nodes[i].id.as_str())
        .collect();
    let mut s = format!(
        "the path {} (p99 {} ms: {} ms running batches, {} ms filling them",
        names.join(" → "),
        round3(e.p99_ms.min(1.0e9)),
        round3(run),
        round3(fill.min(1.0e9))
    );
    if !e.waits.is_empty() {
        s.push_str(&format!(
            ", {} ms queueing for a replica at {}/s",
            round3(queue.min(1.0e9)),
            round3(e.rate)
        ));
    }
    let hops = round3(e.p99_ms - run - fill - queue);
    if hops > 0.0 && hops.is_finite() {
        s.push_str(&format!(", {hops} ms crossing workers"));
    }
    s.push(')');
    if let Some((i, t)) = slowest {
        s.push_str(&format!(
            "; its slowest node is `{}` at {} ms",
            model.nodes[i].id,
            round3(t.min(1.0e9))
        ));
    }
    s
}
