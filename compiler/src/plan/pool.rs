//! Replica ranges (SPEC 10.1): for every node the runtime may resize, the fewest and the most
//! replicas it may run, and the budget of each worker those replicas share. The planner's
//! own replica count stays where the run starts; the range says how far the runtime's
//! controller may move it when the measured costs differ from the profile's.
//!
//! Every node that runs on a worker's cores in a pool of replica threads (on the cpu, not
//! inline) gets a range, so that the runtime knows the cores it holds; it is elastic when it
//! is not fixed by `@replicas(N)` and does not generate (those get `min = max = replicas`).
//! An elastic node's range is `1..=max` with
//! `max` the most replicas the worker's cores hold at the option's `cpu_cores` (64 when a
//! replica takes no cores), lowered where the worker limits memory: the headroom (the
//! worker's memory less what the planned replicas hold) is shared out evenly, so each of the k
//! elastic nodes that hold memory may add ⌊headroom / (k · M)⌋ replicas. The runtime builds
//! `max` replicas up front, so all of them fit at once.

use mars_plan::{BatchPolicy, Device, GpuShare, ReplicaRange, WorkerBudget};

use super::model::{runs_inline, CostModel};
use super::search::Solution;
use crate::ir::Pipeline;

/// Each node's range (`None`: fixed at its replicas) and the budget of every worker that
/// holds an elastic node, in the target's order.
pub fn replica_ranges(
    pipeline: &Pipeline,
    model: &CostModel,
    solution: &Solution,
) -> (Vec<Option<ReplicaRange>>, Vec<WorkerBudget>) {
    let replicas = &solution.eval.replicas;
    let option = |i: usize| &model.nodes[i].options[solution.choice[i]];
    // Pool nodes on a worker's cores get a range; the elastic ones may move within it.
    let pooled: Vec<bool> = (0..model.nodes.len())
        .map(|i| {
            let node = &pipeline.graph[model.nodes[i].index];
            option(i).device == Device::Cpu && !runs_inline(node, option(i), replicas[i])
        })
        .collect();
    let elastic: Vec<bool> = (0..model.nodes.len())
        .map(|i| {
            let m = &model.nodes[i];
            pooled[i]
                && m.fixed_replicas.is_none()
                && !pipeline.graph[m.index].generates
                && option(i).policy != BatchPolicy::Continuous
        })
        .collect();
    let mut ranges = vec![None; model.nodes.len()];
    for (w, worker) in model.workers.iter().enumerate() {
        let on_w: Vec<usize> = (0..model.nodes.len())
            .filter(|&i| option(i).worker == w && option(i).device == Device::Cpu)
            .collect();
        let used_mb: f64 = on_w
            .iter()
            .map(|&i| f64::from(replicas[i]) * option(i).memory_mb)
            .sum();
        let holders = on_w
            .iter()
            .filter(|&&i| elastic[i] && option(i).memory_mb > 0.0)
            .count();
        for &i in on_w.iter().filter(|&&i| pooled[i]) {
            let opt = option(i);
            let r = replicas[i];
            if !elastic[i] {
                ranges[i] = Some(ReplicaRange {
                    min: r,
                    max: r,
                    cores: super::lower::round3(opt.cores),
                    memory_mb: super::lower::round3(opt.memory_mb),
                });
                continue;
            }
            let mut max = if opt.cores > 0.0 {
                cap(
                    (worker.cpus / opt.cores + 1e-9).floor(),
                    model.max_replicas(),
                )
            } else {
                model.max_replicas()
            };
            if let (Some(limit), true) = (worker.memory_mb, opt.memory_mb > 0.0) {
                let headroom = (limit - used_mb).max(0.0);
                let extra = (headroom / (holders as f64 * opt.memory_mb) + 1e-9).floor();
                max = max.min(r.saturating_add(cap(extra, model.max_replicas())));
            }
            ranges[i] = Some(ReplicaRange {
                min: 1,
                max: max.clamp(r, model.max_replicas().max(r)),
                cores: super::lower::round3(opt.cores),
                memory_mb: super::lower::round3(opt.memory_mb),
            });
        }
    }
    let budget = model
        .workers
        .iter()
        .enumerate()
        .filter(|(w, _)| (0..model.nodes.len()).any(|i| pooled[i] && option(i).worker == *w))
        .map(|(_, worker)| WorkerBudget {
            worker: worker.name.clone(),
            cpus: super::lower::round3(worker.cpus),
            memory_mb: worker.memory_mb.map(super::lower::round3),
        })
        .collect();
    (ranges, budget)
}

/// The model nodes on a MIG instance or on a GPU shared through MPS, in plan order: the MIG
/// profile, or the MPS thread percentage ⌈100 · `sm_share`⌉ (SPEC 10.7).
pub fn gpu_shares(model: &CostModel, solution: &Solution) -> Vec<GpuShare> {
    let mut out = Vec::new();
    for (i, node) in model.nodes.iter().enumerate() {
        let opt = &node.options[solution.choice[i]];
        let Some(g) = opt.gpu.map(|g| &model.gpus[g]) else {
            continue;
        };
        if g.mig.is_none() && !g.mps {
            continue;
        }
        out.push(GpuShare {
            node: node.id.clone(),
            gpu: g.device.clone(),
            mig: g.mig.clone(),
            mps_percent: g
                .mps
                .then(|| ((opt.sm_share * 100.0 - 1e-9).ceil() as u32).clamp(1, 100)),
        });
    }
    out
}

/// `x` replicas as a count, at most `limit` (the pipeline's replica limit).
fn cap(x: f64, limit: u32) -> u32 {
    if x >= f64::from(limit) {
        limit
    } else {
        x.max(0.0) as u32
    }
}
