//! Cheap screening of single-node moves for the local search. A full [`evaluate`] is O(nodes +
//! edges); most moves can be rejected in O(workers + GPUs) from bounds: the throughput a move
//! could reach at most (ignoring worker memory, which only lowers it) and the resources it would
//! take. The screen only ever *rejects* moves that cannot improve the search's key; every move
//! it lets through is judged by a full evaluation, so screening changes speed, not results
//! (up to rounding noise at the 1e-7 level).
//!
//! [`evaluate`]: super::evaluate::evaluate

use super::evaluate::{compare_keys, own_ms, replicas_for, Evaluation, Stage};
use super::model::{CostModel, MAX_THROUGHPUT};

/// Sums of the current assignment, from which a move's bounds follow in O(workers + GPUs).
pub struct MoveScreen {
    /// Σ c·k of cpu nodes, per worker.
    cpu: Vec<f64>,
    /// Σ c of gpu nodes, per GPU.
    gpu: Vec<f64>,
    /// Σ replicas·M of gpu nodes, per GPU (a gpu node has one replica unless fixed, since
    /// Σ u ≤ share ≤ 1).
    gpu_memory: Vec<f64>,
    /// Nodes per GPU.
    gpu_nodes: Vec<usize>,
    /// Per node: its replica limit divided by its busy replicas per request/s.
    caps: Vec<f64>,
    /// The smallest cap and its node, and the second smallest.
    min_cap: (f64, usize),
    second_cap: f64,
    /// Σ c·k over all nodes, Σ c over gpu nodes.
    busy_cores: f64,
    busy_gpu: f64,
    /// Σ replicas at the current evaluation's rate.
    replicas: f64,
    on_critical_path: Vec<bool>,
    /// Whether a node on the p99 critical path waits for its batch to fill.
    fill_on_critical_path: bool,
}

const TOLERANCE: f64 = 1e-7;

impl MoveScreen {
    pub fn new(model: &CostModel, choice: &[usize], eval: &Evaluation) -> MoveScreen {
        let n = model.nodes.len();
        let mut s = MoveScreen {
            cpu: vec![0.0; model.workers.len()],
            gpu: vec![0.0; model.gpus.len()],
            gpu_memory: vec![0.0; model.gpus.len()],
            gpu_nodes: vec![0; model.gpus.len()],
            caps: vec![MAX_THROUGHPUT; n],
            min_cap: (f64::INFINITY, usize::MAX),
            second_cap: f64::INFINITY,
            busy_cores: 0.0,
            busy_gpu: 0.0,
            replicas: eval.replicas.iter().map(|&r| f64::from(r)).sum(),
            on_critical_path: vec![false; n],
            fill_on_critical_path: eval.critical_path.iter().any(|&i| {
                let node = &model.nodes[i];
                node.options[choice[i]].fill_ms(eval.rate * node.fanout) > 0.0
            }),
        };
        for &i in eval.critical_path.iter().chain(&eval.critical_path_p50) {
            s.on_critical_path[i] = true;
        }
        for (i, node) in model.nodes.iter().enumerate() {
            let o = &node.options[choice[i]];
            s.caps[i] = cap(model, i, choice[i]);
            if s.caps[i] < s.min_cap.0 {
                s.second_cap = s.min_cap.0;
                s.min_cap = (s.caps[i], i);
            } else if s.caps[i] < s.second_cap {
                s.second_cap = s.caps[i];
            }
            s.busy_cores += o.per_request * o.cores;
            match o.gpu {
                Some(g) => {
                    s.gpu[g] += o.gpu_load;
                    s.gpu_memory[g] += f64::from(node.fixed_replicas.unwrap_or(1)) * o.memory_mb;
                    s.gpu_nodes[g] += 1;
                    s.busy_gpu += o.gpu_load;
                }
                None => s.cpu[o.worker] += o.per_request * o.cores,
            }
        }
        s
    }

    /// Whether moving node `i` from `from` to option `to` may improve on `current`; `false`
    /// only when it surely cannot.
    ///
    /// The reasoning: a node off both critical paths (p50 and p99) cannot shorten them, and at
    /// a lower or equal rate batches fill no faster, so its move cannot lower latency or the
    /// SLO misses; it can only win through more throughput or, at equal throughput, fewer
    /// resources. A node on a critical path can win on latency only if its own time at the
    /// current rate drops or its worker changes; only a plan that misses an SLO, or the latency
    /// stage down to its floor, lets such a move give up throughput. In the latency stage every
    /// node's own time counts (the key sums them after p99), so there a node off the critical
    /// paths qualifies by its own time as well: where the move keeps the rate, or where the p99
    /// critical path has no fill time that a lower rate would lengthen.
    pub fn may_improve(
        &self,
        model: &CostModel,
        current: &Evaluation,
        i: usize,
        from: usize,
        to: usize,
        stage: Stage,
    ) -> bool {
        // Planned for a load, latencies include every node's queueing wait, which these
        // bounds do not see: every move is evaluated.
        if !current.fits || model.objectives.load().is_some() {
            return true;
        }
        let critical = self.on_critical_path[i];
        let latency_stage = matches!(stage, Stage::Latency { .. });
        // On a critical path, latency can only drop if the node's own time at the current rate
        // does (at a lower rate its batches fill even slower), or if its worker, and so the
        // hops around it, changes.
        let faster = |rate: f64| -> bool {
            let node = &model.nodes[i];
            let (a, b) = (&node.options[from], &node.options[to]);
            let own = |o: &super::model::NodeOption, p99: bool| own_ms(node, o, rate, p99);
            critical
                && (a.worker != b.worker
                    || own(b, true) < own(a, true)
                    || own(b, false) < own(a, false))
        };
        // In the latency stage the nodes' own times count too (after p99), on a critical path
        // or not; but at a lower rate a p99 critical path that waits for batches to fill grows,
        // so there only a move that keeps the rate can win by its own time.
        let own_faster = |keeps_rate: bool| -> bool {
            let node = &model.nodes[i];
            let (a, b) = (&node.options[from], &node.options[to]);
            latency_stage
                && (keeps_rate || !self.fill_on_critical_path)
                && own_ms(node, b, current.rate, true) < own_ms(node, a, current.rate, true)
        };
        // A plan that misses a latency SLO may trade throughput for latency.
        if current.violation > 0.0 && faster(current.rate) {
            return true;
        }
        let Some(upper) = self.capacity_bound(model, i, from, to) else {
            return false; // does not fit, while the current plan does
        };
        let cost = |rate: f64| -> [f64; 4] {
            let (a, b) = (&model.nodes[i].options[from], &model.nodes[i].options[to]);
            let fixed = model.nodes[i].fixed_replicas;
            let r = |c: f64| {
                f64::from(fixed.unwrap_or_else(|| replicas_for(rate, c).min(model.max_replicas())))
            };
            let mut gpus = self.gpu_nodes.iter().filter(|&&k| k > 0).count() as f64;
            if let Some(g) = a.gpu {
                if self.gpu_nodes[g] == 1 && b.gpu != Some(g) {
                    gpus -= 1.0;
                }
            }
            if let Some(g) = b.gpu {
                if self.gpu_nodes[g] == 0 {
                    gpus += 1.0;
                }
            }
            let cores = self.busy_cores - a.per_request * a.cores + b.per_request * b.cores;
            let shares = self.busy_gpu - if a.gpu.is_some() { a.gpu_load } else { 0.0 }
                + if b.gpu.is_some() { b.gpu_load } else { 0.0 };
            [
                gpus,
                rate * cores,
                rate * shares,
                self.replicas - r(a.per_request) + r(b.per_request),
            ]
        };
        let c = &current.cost;
        let now = [
            c.gpus_used as f64,
            c.cpu_busy,
            c.gpu_busy,
            f64::from(c.replicas),
        ];
        match model.objectives.throughput {
            Some(n) if current.capacity >= n * (1.0 - TOLERANCE) => {
                // Sustaining n with the fewest resources: the rate is n whatever the move.
                if upper < n * (1.0 - TOLERANCE) {
                    return false;
                }
                match compare_keys(&cost(n), &now) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    std::cmp::Ordering::Equal => {
                        faster(n) || upper > current.capacity * (1.0 + TOLERANCE)
                    }
                }
            }
            _ => {
                // The least throughput a move may keep: the current one, or in the latency
                // stage the floor (which then only latency can justify).
                let floor = match stage {
                    Stage::Throughput => current.capacity,
                    Stage::Latency { floor } => floor,
                };
                if upper < floor * (1.0 - TOLERANCE) {
                    return false;
                }
                if upper > current.capacity * (1.0 + TOLERANCE) || faster(current.rate) {
                    return true;
                }
                let keeps_rate = upper >= current.capacity * (1.0 - TOLERANCE);
                if own_faster(keeps_rate) {
                    return true;
                }
                if !keeps_rate {
                    return false;
                }
                compare_keys(&cost(current.rate), &now) == std::cmp::Ordering::Less
            }
        }
    }

    /// An upper bound of the throughput after the move (worker memory ignored), or `None` when
    /// a GPU's memory overflows.
    fn capacity_bound(&self, model: &CostModel, i: usize, from: usize, to: usize) -> Option<f64> {
        let (a, b) = (&model.nodes[i].options[from], &model.nodes[i].options[to]);
        let replicas = f64::from(model.nodes[i].fixed_replicas.unwrap_or(1));
        let mut x = if self.min_cap.1 == i {
            self.second_cap
        } else {
            self.min_cap.0
        };
        x = x.min(cap(model, i, to)).min(MAX_THROUGHPUT);
        for (w, worker) in model.workers.iter().enumerate() {
            let mut load = self.cpu[w];
            if a.gpu.is_none() && a.worker == w {
                load -= a.per_request * a.cores;
            }
            if b.gpu.is_none() && b.worker == w {
                load += b.per_request * b.cores;
            }
            if load > 1e-15 {
                x = x.min(worker.cpus / load);
            }
        }
        for (g, gpu) in model.gpus.iter().enumerate() {
            let (mut load, mut memory) = (self.gpu[g], self.gpu_memory[g]);
            if a.gpu == Some(g) {
                load -= a.gpu_load;
                memory -= replicas * a.memory_mb;
            }
            if b.gpu == Some(g) {
                load += b.gpu_load;
                memory += replicas * b.memory_mb;
            }
            if memory > gpu.memory_mb * (1.0 + TOLERANCE) {
                return None;
            }
            if load > 1e-15 {
                x = x.min(gpu.share / load);
            }
        }
        Some(x)
    }
}

/// A node's throughput limit from its replicas alone.
fn cap(model: &CostModel, i: usize, option: usize) -> f64 {
    let node = &model.nodes[i];
    let c = node.options[option].per_request;
    if c > 0.0 {
        f64::from(node.fixed_replicas.unwrap_or(model.max_replicas())) / c
    } else {
        MAX_THROUGHPUT
    }
}
