//! Evaluating one assignment of options to nodes under the cost model: the most throughput it
//! sustains and what bounds it, its replicas, its latencies, how far it misses the SLOs and the
//! resources it takes. The search compares assignments only through [`Evaluation::key`].

use std::cmp::Ordering;

use mars_plan::Device;

use super::model::{CostModel, ModelNode, NodeOption, MAX_THROUGHPUT};
use super::queue::{node_wait, Wait};

/// What bounds a plan's throughput.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A node at its replica limit (64, or its `@replicas(N)`), by position.
    Replicas(usize),
    /// A worker's CPU pool, by worker index.
    Cpu(usize),
    /// A GPU's share, by GPU index.
    Gpu(usize),
    /// A GPU's memory.
    GpuMemory(usize),
    /// A worker's memory.
    Memory(usize),
    /// Nothing: the pipeline has no node that takes time.
    Unbounded,
}

/// Resources taken at the operating rate; fewer is better, compared in this order.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cost {
    pub gpus_used: usize,
    /// Σ u·k over CPU nodes (cores busy).
    pub cpu_busy: f64,
    /// Σ u over GPU nodes (GPU shares busy).
    pub gpu_busy: f64,
    pub replicas: u32,
}

/// The cost model's verdict on one assignment.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The most requests/s the plan sustains, with its replicas.
    pub capacity: f64,
    pub bound: Bound,
    /// The rate latencies are judged at: the offered load (`--rate R`, else the throughput
    /// SLO's N) when planning for one, else `capacity`.
    pub rate: f64,
    pub replicas: Vec<u32>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The nodes (positions) of the path with the largest p99, from source to sink.
    pub critical_path: Vec<usize>,
    /// The same for the median.
    pub critical_path_p50: Vec<usize>,
    /// Σ over nodes of their own p99 time at `rate` (batch p99 plus fill).
    pub node_p99_ms: f64,
    /// 0 when every SLO holds and the plan fits; otherwise the relative miss, summed.
    pub violation: f64,
    /// Whether every node fits in memory with at least one replica.
    pub fits: bool,
    pub cost: Cost,
    /// Planned for a load (SPEC 2.4.10): every node's queueing wait at `rate` with its
    /// replicas; empty when planned for saturation.
    pub waits: Vec<Wait>,
}

/// Whether two floats are equal up to rounding noise.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Lexicographic comparison of keys, floats equal up to rounding noise.
pub fn compare_keys(a: &[f64], b: &[f64]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        if !close(*x, *y) {
            return x.partial_cmp(y).unwrap_or(Ordering::Equal);
        }
    }
    Ordering::Equal
}

/// Replicas needed for `x` requests/s at `per_request` busy replicas per request/s (at least 1).
pub fn replicas_for(x: f64, per_request: f64) -> u32 {
    let u = x * per_request;
    let r = (u - 1e-9 * u.max(1.0)).ceil();
    if r.is_finite() {
        (r.max(1.0)).min(f64::from(u32::MAX)) as u32
    } else {
        u32::MAX
    }
}

/// Plans whose throughput is within this fraction of the most reachable count as equally fast:
/// among them the search takes the lowest p99 (SPEC 2.5). Waiting to fill a batch at a node
/// far from the bottleneck saves a sliver of CPU and costs a fill time of latency.
pub const THROUGHPUT_TOLERANCE: f64 = 5e-3;

/// Length of [`Evaluation::key`].
pub const KEY_LEN: usize = 9;

/// Which order the search ranks plans by (without a throughput SLO it runs in two stages).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stage {
    /// SLO misses, then the most throughput, then p99, then resources; under a throughput SLO,
    /// misses, then resources, then latency, then spare throughput.
    Throughput,
    /// SLO misses, then any shortfall under `floor` requests/s, then p99, then the nodes' own
    /// p99 times summed (so nodes off the critical path do not wait either), then throughput,
    /// then resources.
    Latency { floor: f64 },
}

impl Evaluation {
    /// The search's order under `stage`: smaller is better.
    pub fn key(&self, model: &CostModel, stage: Stage) -> [f64; KEY_LEN] {
        let c = &self.cost;
        match stage {
            Stage::Latency { floor } => [
                self.violation,
                ((floor - self.capacity) / floor.max(f64::MIN_POSITIVE)).max(0.0),
                self.p99_ms,
                self.node_p99_ms,
                -self.capacity,
                c.gpus_used as f64,
                c.cpu_busy,
                c.gpu_busy,
                f64::from(c.replicas),
            ],
            Stage::Throughput if model.objectives.rate.is_some() => [
                self.violation,
                self.p99_ms,
                self.node_p99_ms,
                c.gpus_used as f64,
                c.cpu_busy,
                c.gpu_busy,
                f64::from(c.replicas),
                -self.capacity,
                0.0,
            ],
            Stage::Throughput if model.objectives.throughput.is_some() => [
                self.violation,
                c.gpus_used as f64,
                c.cpu_busy,
                c.gpu_busy,
                f64::from(c.replicas),
                self.p99_ms,
                -self.capacity,
                0.0,
                0.0,
            ],
            Stage::Throughput => [
                self.violation,
                -self.capacity,
                self.p99_ms,
                c.gpus_used as f64,
                c.cpu_busy,
                c.gpu_busy,
                f64::from(c.replicas),
                0.0,
                0.0,
            ],
        }
    }
}

/// Evaluate `choice` (an option index per node).
pub fn evaluate(model: &CostModel, choice: &[usize]) -> Evaluation {
    let free: Vec<Option<u32>> = model.nodes.iter().map(|n| n.fixed_replicas).collect();
    let (hi, hi_bound) = capacity(model, choice, &free);
    let mut violation = 0.0;
    let fits = hi > 0.0;
    if !fits {
        // Graded, so that the search can walk out of a placement that does not fit.
        violation += 10.0 + memory_overflow(model, choice);
    }
    if let Some(load) = model.objectives.load() {
        return at_load(model, choice, load, (hi, hi_bound), violation, fits);
    }
    // Planning for saturation: latencies at the plan's own capacity, without queueing (at
    // capacity the queue of the bottleneck grows without bound; SPEC 2.4.10).
    let (rate, replicas, capacity_now, bound) = (hi, replicas_at(model, choice, hi), hi, hi_bound);
    let (p50_ms, critical_path_p50) = longest_path(model, choice, rate, false);
    let (p99_ms, critical_path) = longest_path(model, choice, rate, true);
    let node_p99_ms = model
        .nodes
        .iter()
        .zip(choice)
        .map(|(node, &o)| own_ms(node, &node.options[o], rate, true))
        .sum();
    if let Some(s) = model.objectives.p50_ms {
        violation += ((p50_ms - s) / s).clamp(0.0, 1e6);
    }
    if let Some(s) = model.objectives.p99_ms {
        violation += ((p99_ms - s) / s).clamp(0.0, 1e6);
    }
    let cost = cost_at(model, choice, &replicas, rate);
    Evaluation {
        capacity: capacity_now,
        bound,
        rate,
        replicas,
        p50_ms,
        p99_ms,
        critical_path,
        critical_path_p50,
        node_p99_ms,
        violation,
        fits,
        cost,
        waits: Vec::new(),
    }
}

/// [`evaluate`] when planning for an offered load of `x` requests/s (SPEC 2.4.10): each node
/// gets the fewest replicas that keep its queue stable at `x` (and that sustain the required
/// rate), then replicas on spare cores where they shorten its p99 wait most; latencies add
/// every node's queueing wait at `x`.
fn at_load(
    model: &CostModel,
    choice: &[usize],
    x: f64,
    (hi, hi_bound): (f64, Bound),
    mut violation: f64,
    fits: bool,
) -> Evaluation {
    let need = model.objectives.required().unwrap_or(x);
    if hi < need && !close(hi, need) {
        violation += (need - hi) / need;
    }
    let stable = fits && hi > x * (1.0 + 1e-9);
    let mut replicas: Vec<u32> = model
        .nodes
        .iter()
        .zip(choice)
        .map(|(node, &o)| {
            let c = node.options[o].per_request;
            node.fixed_replicas.unwrap_or_else(|| {
                stable_replicas(x, c)
                    .max(replicas_for(need, c))
                    .min(model.max_replicas())
            })
        })
        .collect();
    let mut waits: Vec<Wait> = model
        .nodes
        .iter()
        .zip(choice)
        .zip(&replicas)
        .map(|((node, &o), &r)| node_wait(&node.options[o], r, x * node.fanout))
        .collect();
    if stable {
        add_headroom(model, choice, x, &mut replicas, &mut waits);
    }
    let fixed: Vec<Option<u32>> = replicas.iter().map(|&r| Some(r)).collect();
    let (cap, bound) = capacity(model, choice, &fixed);
    let (capacity_now, bound) = if hi >= need || close(hi, need) {
        (cap.max(need.min(hi)), bound)
    } else {
        (hi, hi_bound)
    };
    let own = |p99: bool| -> Vec<f64> {
        model
            .nodes
            .iter()
            .zip(choice)
            .zip(&waits)
            .map(|((node, &o), w)| {
                own_ms(node, &node.options[o], x, p99) + if p99 { w.p99_ms } else { w.p50_ms }
            })
            .collect()
    };
    let (own50, own99) = (own(false), own(true));
    let (p50_ms, critical_path_p50) = longest_path_of(model, choice, &own50);
    let (p99_ms, critical_path) = longest_path_of(model, choice, &own99);
    let node_p99_ms = own99.iter().sum();
    for (slo, value) in [
        (model.objectives.p50_ms, p50_ms),
        (model.objectives.p99_ms, p99_ms),
    ] {
        let Some(s) = slo else { continue };
        violation += if stable {
            ((value - s) / s).clamp(0.0, 1e6)
        } else {
            // Over capacity the wait is unbounded: graded by how far, so the search walks
            // toward plans that carry the load.
            1e3 * (1.0 + ((x - hi) / x).max(0.0))
        };
    }
    let cost = cost_at(model, choice, &replicas, x);
    Evaluation {
        capacity: capacity_now,
        bound,
        rate: x,
        replicas,
        p50_ms,
        p99_ms,
        critical_path,
        critical_path_p50,
        node_p99_ms,
        violation,
        fits,
        cost,
        waits,
    }
}

/// The fewest replicas whose queue stays stable at `x` requests/s (u < r): ⌊u⌋ + 1.
pub fn stable_replicas(x: f64, per_request: f64) -> u32 {
    let u = x * per_request;
    if u.is_nan() || u <= 0.0 {
        return 1;
    }
    let r = (u + 1e-9 * u.max(1.0)).floor() + 1.0;
    if r.is_finite() {
        r.min(f64::from(u32::MAX)) as u32
    } else {
        u32::MAX
    }
}

/// Spare cores buy queueing headroom: while a worker has cores that no replica of its cpu
/// nodes (nor the runtime) holds, give one more replica to the node whose p99 wait drops most
/// per core, if it drops (and the worker's memory holds it). GPU nodes keep theirs (their
/// replicas share one device), and so do fixed and inline ones. Deterministic: ties go to the
/// earlier node.
fn add_headroom(
    model: &CostModel,
    choice: &[usize],
    x: f64,
    replicas: &mut [u32],
    waits: &mut [Wait],
) {
    // Cores held by replica threads: a replica holds its cores while it runs a batch, so the
    // worker's cores are shared out whole. Inline nodes run on the worker's own thread, and the
    // runtime's share (SPEC 2.4.9) is a few microseconds per item: neither holds a core.
    let mut spare: Vec<f64> = model.workers.iter().map(|w| w.cpus).collect();
    let mut memory: Vec<Option<f64>> = model.workers.iter().map(|w| w.memory_mb).collect();
    for (i, (node, &o)) in model.nodes.iter().zip(choice).enumerate() {
        let opt = &node.options[o];
        if opt.gpu.is_none() && !(node.builtin_cpu && super::model::cheap(opt)) {
            spare[opt.worker] -= f64::from(replicas[i]) * opt.cores;
            if let Some(m) = memory[opt.worker].as_mut() {
                *m -= f64::from(replicas[i]) * opt.memory_mb;
            }
        }
    }
    let grows = |i: usize, r: u32, w: &Wait| -> bool {
        let node = &model.nodes[i];
        let opt = &node.options[choice[i]];
        node.fixed_replicas.is_none()
            && opt.gpu.is_none()
            && !(node.builtin_cpu && super::model::cheap(opt))
            && w.p99_ms > 0.0
            && r < model.max_replicas()
    };
    let next = |i: usize, r: u32| -> Wait {
        let node = &model.nodes[i];
        node_wait(&node.options[choice[i]], r, x * node.fanout)
    };
    let mut after: Vec<Option<Wait>> = (0..model.nodes.len())
        .map(|i| grows(i, replicas[i], &waits[i]).then(|| next(i, replicas[i] + 1)))
        .collect();
    loop {
        let mut best: Option<(usize, f64)> = None;
        for (i, a) in after.iter().enumerate() {
            let Some(a) = a else { continue };
            let opt = &model.nodes[i].options[choice[i]];
            if opt.cores > spare[opt.worker] + 1e-9
                || memory[opt.worker].is_some_and(|m| opt.memory_mb > m + 1e-9)
            {
                continue;
            }
            let drop = waits[i].p99_ms - a.p99_ms;
            if drop <= 1e-6 {
                continue;
            }
            let gain = drop / opt.cores.max(1e-3);
            if best.is_none_or(|(_, g)| gain > g) {
                best = Some((i, gain));
            }
        }
        let Some((i, _)) = best else { break };
        let opt = &model.nodes[i].options[choice[i]];
        spare[opt.worker] -= opt.cores;
        if let Some(m) = memory[opt.worker].as_mut() {
            *m -= opt.memory_mb;
        }
        replicas[i] += 1;
        waits[i] = after[i].take().expect("chosen among the candidates");
        after[i] = grows(i, replicas[i], &waits[i]).then(|| next(i, replicas[i] + 1));
    }
}

/// The resources `choice` with `replicas` takes at `rate` requests/s.
fn cost_at(model: &CostModel, choice: &[usize], replicas: &[u32], rate: f64) -> Cost {
    let mut cost = Cost::default();
    let mut gpu_used = vec![false; model.gpus.len()];
    cost.cpu_busy += rate * model.request_cores();
    for (i, ((node, &o), &r)) in model.nodes.iter().zip(choice).zip(replicas).enumerate() {
        let opt = &node.options[o];
        let u = rate * opt.per_request;
        cost.cpu_busy += rate * model.runtime_cores(i, opt);
        match opt.gpu {
            Some(g) => {
                gpu_used[g] = true;
                cost.gpu_busy += rate * opt.gpu_load;
                cost.cpu_busy += u * opt.cores;
            }
            None => cost.cpu_busy += u * opt.cores,
        }
        cost.replicas = cost.replicas.saturating_add(r);
    }
    cost.gpus_used = gpu_used.iter().filter(|&&u| u).count();
    cost
}

/// How far the nodes overflow memory with one replica each (or their fixed replicas): the
/// relative excess, summed over every GPU and worker memory.
pub fn memory_overflow(model: &CostModel, choice: &[usize]) -> f64 {
    let mut gpu = vec![0.0; model.gpus.len()];
    let mut host = vec![0.0; model.workers.len()];
    for (node, &o) in model.nodes.iter().zip(choice) {
        let opt = &node.options[o];
        let m = f64::from(node.fixed_replicas.unwrap_or(1)) * opt.memory_mb;
        match opt.gpu {
            Some(g) => gpu[g] += m,
            None => host[opt.worker] += m,
        }
    }
    let mut over = 0.0;
    for (g, res) in model.gpus.iter().enumerate() {
        over += ((gpu[g] - res.memory_mb) / res.memory_mb.max(1.0)).max(0.0);
    }
    for (w, res) in model.workers.iter().enumerate() {
        if let Some(mem) = res.memory_mb {
            over += ((host[w] - mem) / mem.max(1.0)).max(0.0);
        }
    }
    over
}

/// The replicas each node needs at `x` requests/s (its `@replicas(N)` where fixed).
pub fn replicas_at(model: &CostModel, choice: &[usize], x: f64) -> Vec<u32> {
    model
        .nodes
        .iter()
        .zip(choice)
        .map(|(node, &o)| {
            node.fixed_replicas.unwrap_or_else(|| {
                replicas_for(x, node.options[o].per_request).min(model.max_replicas())
            })
        })
        .collect()
}

/// The most requests/s `choice` sustains when each node's replicas are `fixed` where `Some`
/// and free (at most 64) where `None`; and what bounds it. 0 when it does not fit in memory.
pub fn capacity(model: &CostModel, choice: &[usize], fixed: &[Option<u32>]) -> (f64, Bound) {
    let mut x = MAX_THROUGHPUT;
    let mut bound = Bound::Unbounded;
    let tighten = |value: f64, b: Bound, x: &mut f64, bound: &mut Bound| {
        if value < *x && !close(value, *x) {
            *x = value;
            *bound = b;
        }
    };
    let mut cpu_load = vec![0.0; model.workers.len()];
    let mut gpu_load = vec![0.0; model.gpus.len()];
    for (i, (node, &o)) in model.nodes.iter().zip(choice).enumerate() {
        let opt = &node.options[o];
        if opt.per_request > 0.0 {
            let limit = fixed[i].unwrap_or(model.max_replicas());
            tighten(
                f64::from(limit) / opt.per_request,
                Bound::Replicas(i),
                &mut x,
                &mut bound,
            );
        }
        match opt.gpu {
            Some(g) => gpu_load[g] += opt.gpu_load,
            None => cpu_load[opt.worker] += opt.per_request * opt.cores,
        }
        cpu_load[opt.worker] += model.runtime_cores(i, opt);
    }
    if let Some(first) = cpu_load.first_mut() {
        *first += model.request_cores();
    }
    for (w, &load) in cpu_load.iter().enumerate() {
        if load > 0.0 {
            tighten(
                model.workers[w].cpus / load,
                Bound::Cpu(w),
                &mut x,
                &mut bound,
            );
        }
    }
    for (g, &load) in gpu_load.iter().enumerate() {
        if load > 0.0 {
            tighten(
                model.gpus[g].share / load,
                Bound::Gpu(g),
                &mut x,
                &mut bound,
            );
        }
    }
    // Memory: replicas grow in steps with x, so the largest x that fits is a step boundary.
    let mut pools: Vec<(Bound, f64, Vec<usize>)> = Vec::new();
    for (g, gpu) in model.gpus.iter().enumerate() {
        let members = (0..model.nodes.len())
            .filter(|&i| model.nodes[i].options[choice[i]].gpu == Some(g))
            .collect();
        pools.push((Bound::GpuMemory(g), gpu.memory_mb, members));
    }
    for (w, worker) in model.workers.iter().enumerate() {
        if let Some(mem) = worker.memory_mb {
            let members = (0..model.nodes.len())
                .filter(|&i| {
                    let o = &model.nodes[i].options[choice[i]];
                    o.device == Device::Cpu && o.worker == w
                })
                .collect();
            pools.push((Bound::Memory(w), mem, members));
        }
    }
    for (b, mem, members) in pools {
        let used = |at: f64| -> f64 {
            members
                .iter()
                .map(|&i| {
                    let o = &model.nodes[i].options[choice[i]];
                    let r = fixed[i].unwrap_or_else(|| replicas_for(at, o.per_request));
                    f64::from(r) * o.memory_mb
                })
                .sum()
        };
        if used(x) <= mem {
            continue;
        }
        if used(0.0) > mem {
            return (0.0, b);
        }
        let (mut lo, mut hi) = (0.0, x);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if mid <= lo || mid >= hi {
                break;
            }
            if used(mid) <= mem {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        // The next step boundary at or above `lo`: up to it the replicas do not change.
        let step = members
            .iter()
            .filter(|&&i| fixed[i].is_none())
            .filter_map(|&i| {
                let o = &model.nodes[i].options[choice[i]];
                (o.per_request > 0.0)
                    .then(|| f64::from(replicas_for(lo, o.per_request)) / o.per_request)
            })
            .fold(x, f64::min);
        x = step.min(x);
        bound = b;
    }
    (x, bound)
}

/// The longest path (by p99 when `p99`, else by median) at `rate` requests/s, and its nodes.
/// Each node adds its latency plus the time its batch takes to fill, 1000·(b−1)/λ (dynamic
/// batches only); an
/// edge between workers adds [`super::model::CROSS_WORKER_MS`].
pub fn longest_path(
    model: &CostModel,
    choice: &[usize],
    rate: f64,
    p99: bool,
) -> (f64, Vec<usize>) {
    let own: Vec<f64> = model
        .nodes
        .iter()
        .zip(choice)
        .map(|(node, &o)| own_ms(node, &node.options[o], rate, p99))
        .collect();
    longest_path_of(model, choice, &own)
}

/// The longest path when node i takes `own[i]` ms, and its nodes.
pub fn longest_path_of(model: &CostModel, choice: &[usize], own: &[f64]) -> (f64, Vec<usize>) {
    let n = model.nodes.len();
    let mut dist = vec![0.0f64; n];
    let mut from: Vec<Option<usize>> = vec![None; n];
    for i in 0..n {
        let node = &model.nodes[i];
        let opt = &node.options[choice[i]];
        let mut best = 0.0;
        for &p in &node.preds {
            let hop = if model.nodes[p].options[choice[p]].worker != opt.worker {
                super::model::CROSS_WORKER_MS
            } else {
                0.0
            };
            let d = dist[p] + hop;
            if from[i].is_none() || d > best {
                best = d;
                from[i] = Some(p);
            }
        }
        dist[i] = best + own[i];
    }
    let mut end = None;
    let mut longest = 0.0;
    for (i, &d) in dist.iter().enumerate() {
        if end.is_none() || d > longest {
            longest = d;
            end = Some(i);
        }
    }
    let mut path = Vec::new();
    let mut at = end;
    while let Some(i) = at {
        path.push(i);
        at = from[i];
    }
    path.reverse();
    (longest, path)
}

/// For every node, the length of the longest source-to-sink path through it (by p99 when
/// `p99`, else by median) at `rate` requests/s.
pub fn longest_through(model: &CostModel, choice: &[usize], rate: f64, p99: bool) -> Vec<f64> {
    let n = model.nodes.len();
    let own: Vec<f64> = (0..n)
        .map(|i| {
            let node = &model.nodes[i];
            own_ms(node, &node.options[choice[i]], rate, p99)
        })
        .collect();
    let hop = |a: usize, b: usize| {
        if model.nodes[a].options[choice[a]].worker != model.nodes[b].options[choice[b]].worker {
            super::model::CROSS_WORKER_MS
        } else {
            0.0
        }
    };
    let mut fwd = vec![0.0f64; n];
    for i in 0..n {
        let before = model.nodes[i]
            .preds
            .iter()
            .map(|&p| fwd[p] + hop(p, i))
            .fold(0.0, f64::max);
        fwd[i] = before + own[i];
    }
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in model.nodes.iter().enumerate() {
        for &p in &node.preds {
            succs[p].push(i);
        }
    }
    let mut bwd = vec![0.0f64; n];
    for i in (0..n).rev() {
        let after = succs[i]
            .iter()
            .map(|&s| bwd[s] + hop(i, s))
            .fold(0.0, f64::max);
        bwd[i] = after + own[i];
    }
    (0..n).map(|i| fwd[i] + bwd[i] - own[i]).collect()
}

/// A node's own time on `opt` at `rate` requests/s (p99 when `p99`, else median): its batch's
/// time plus the time the batch takes to fill.
pub fn own_ms(node: &ModelNode, opt: &NodeOption, rate: f64, p99: bool) -> f64 {
    (if p99 { opt.p99_ms } else { opt.latency_ms }) + opt.fill_ms(rate * node.fanout)
}

/// The time a batch of `batch` items takes to fill at `items_per_s` (ms); 0 for batches of one.
pub fn fill_ms(batch: u32, items_per_s: f64) -> f64 {
    if batch <= 1 {
        0.0
    } else if items_per_s > 0.0 {
        1000.0 * f64::from(batch - 1) / items_per_s
    } else {
        f64::INFINITY
    }
}
