//! Elastic replicas (SPEC 10): while a plan runs, a controller moves replicas (the cores they
//! stand for) between the nodes of a worker so that the bottleneck stays fed when the real
//! per-item costs differ from the profile's.
//!
//! Every elastic node gets a [`Lease`]: how many of its replica threads may take work now
//! (`active`, within the plan's `replica_range`), and what its operator saw (backlog,
//! arrivals). The node's pool builds `max` replicas at the start; those past `active` are
//! parked on the lease's condition variable, and the operator hands out at most `active`
//! batches at once. The controller thread ([`start`]) reads the leases and the nodes'
//! meters every [`TICK`], asks the pure [`controller::decide`] for a move, applies it, logs it
//! (`mars::pool`) and counts it in the run's stats ([`ElasticStats`]).
//!
//! It must not block an operator or a replica: leases are atomics, and parking happens only
//! between batches.

pub mod controller;
pub mod priority;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use mars_plan::Plan;
use serde::Serialize;

use crate::stats::{round3, NodeMeter};
use controller::{Budget, Damping, Move, NodeObs};

/// How often the controller looks.
pub const TICK: Duration = Duration::from_millis(250);

/// The weight of the newest tick in the smoothed rates.
const SMOOTHING: f64 = 0.5;

/// One elastic node's share of the pool, shared by its operator, its replicas and the
/// controller.
pub struct Lease {
    pub min: u32,
    pub max: u32,
    pub cores: f64,
    pub memory_mb: f64,
    /// The index of the node's worker in the plan's budget.
    pub worker: usize,
    active: AtomicU32,
    /// Items the operator ever queued, and ever got answers for.
    arrived: AtomicU64,
    answered: AtomicU64,
    closed: AtomicBool,
    gate: Mutex<()>,
    turn: Condvar,
    /// Wakes the node's operator (set by its pool) so that a grown pool is used at once.
    wake: Mutex<Option<Box<dyn Fn() + Send>>>,
    /// The run's move log, shared by every lease of the run.
    log: Arc<Mutex<Log>>,
    /// Fixed after all (a pool that batches continuously is not resized).
    pinned: AtomicBool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("min", &self.min)
            .field("max", &self.max)
            .field("active", &self.active())
            .finish()
    }
}

impl Lease {
    /// Replicas that may take work now.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// Replica threads to build: the range's max.
    pub fn built(&self) -> u32 {
        self.max
    }

    /// Block replica `r` while it is parked; `false` once the pool closes.
    pub fn wait_turn(&self, r: u32) -> bool {
        let mut g = self
            .gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            if r < self.active() {
                return true;
            }
            g = self
                .turn
                .wait(g)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// The pool is going away: release every parked replica.
    pub fn close(&self) {
        let _g = self
            .gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.closed.store(true, Ordering::Release);
        self.turn.notify_all();
    }

    fn set_active(&self, n: u32) {
        {
            let _g = self
                .gate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.active
                .store(n.clamp(self.min, self.max), Ordering::Release);
            self.turn.notify_all();
        }
        if let Some(w) = self.wake.lock().ok().as_deref().and_then(Option::as_ref) {
            w();
        }
    }

    /// The operator's view, after each activation: items queued and answered since the start.
    pub fn observe(&self, arrived: u64, answered: u64) {
        self.arrived.store(arrived, Ordering::Relaxed);
        self.answered.store(answered, Ordering::Relaxed);
    }

    /// How the pool wakes the node's operator.
    pub fn set_wake(&self, wake: Box<dyn Fn() + Send>) {
        if let Ok(mut w) = self.wake.lock() {
            *w = Some(wake);
        }
    }

    /// Keep the node at its current replicas (its pool cannot be resized).
    pub fn pin(&self) {
        self.pinned.store(true, Ordering::Release);
    }
}

/// One move as the stats report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoveRecord {
    /// Seconds since the controller started.
    pub at_s: f64,
    /// `grow` or `transfer`.
    pub kind: &'static str,
    /// The node that gave a replica (a transfer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
    /// Active replicas of every elastic node after the move.
    pub replicas: BTreeMap<String, u32>,
    pub reason: String,
}

#[derive(Debug, Default)]
struct Log {
    moves: Vec<MoveRecord>,
    ticks: u64,
    /// Replica-seconds each elastic node held active, by node id.
    replica_s: BTreeMap<String, f64>,
    seen: BTreeMap<String, (u32, u32)>,
}

/// What the controller did in a run (`--stats-json` field `elastic`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ElasticStats {
    pub tick_ms: u64,
    pub ticks: u64,
    pub moves: u64,
    pub grows: u64,
    pub transfers: u64,
    pub log: Vec<MoveRecord>,
}

/// One elastic node's replicas over a run (in its `nodes` entry).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeElastic {
    pub min: u32,
    pub max: u32,
    /// Active replicas at the end, and the fewest and most it had.
    pub active: u32,
    pub fewest: u32,
    pub most: u32,
    /// Active replicas integrated over the run.
    pub replica_s: f64,
}

/// Give every elastic node of `plan` that this process runs (`mine`) a lease on its meter.
/// Nodes without a `replica_range` keep their replicas.
pub fn arm(plan: &Plan, meters: &[Arc<NodeMeter>], mine: impl Fn(usize) -> bool) {
    let log = Arc::new(Mutex::new(Log::default()));
    for (i, node) in plan.nodes.iter().enumerate() {
        let (Some(r), true) = (&node.replica_range, mine(i)) else {
            continue;
        };
        let Some(worker) = plan.budget.iter().position(|b| b.worker == node.worker) else {
            continue;
        };
        let lease = Lease {
            min: r.min.max(1),
            max: r.max.max(node.replicas),
            cores: r.cores,
            memory_mb: r.memory_mb,
            worker,
            active: AtomicU32::new(node.replicas),
            arrived: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            gate: Mutex::new(()),
            turn: Condvar::new(),
            wake: Mutex::new(None),
            log: Arc::clone(&log),
            pinned: AtomicBool::new(false),
        };
        meters[i].attach_lease(Arc::new(lease));
    }
}

/// Replica threads to build for node `i`: its lease's max, else the plan's replicas.
pub fn replicas_to_build(plan: &Plan, meters: &[Arc<NodeMeter>], i: usize) -> u32 {
    meters
        .get(i)
        .and_then(|m| m.lease())
        .map_or(plan.nodes[i].replicas, |l| l.built())
}

/// What the controller keeps per node between ticks.
struct Track {
    answered: u64,
    busy_ns: u64,
    arrived: u64,
    /// Smoothed arrivals/s, completions/s, busy replicas.
    rates: Option<(f64, f64, f64)>,
}

/// Start the controller thread of a run, when some node has a lease. It stops by itself when
/// the run's meters are gone. Nodes without a range (older plans, GPU nodes, inline nodes)
/// hold no cores of the budget.
pub fn start(plan: &Plan, meters: &Arc<Vec<Arc<NodeMeter>>>) {
    let elastic: Vec<usize> = (0..meters.len())
        .filter(|&i| meters[i].lease().is_some())
        .collect();
    if elastic.is_empty() {
        return;
    }
    let budgets: Vec<Budget> = plan
        .budget
        .iter()
        .map(|b| Budget {
            cpus: b.cpus,
            memory_mb: b.memory_mb,
        })
        .collect();
    let batches: Vec<u32> = plan
        .nodes
        .iter()
        .map(|n| match n.batch.policy {
            mars_plan::BatchPolicy::None => 1,
            _ => n.batch.max.max(1),
        })
        .collect();
    let weak: Weak<Vec<Arc<NodeMeter>>> = Arc::downgrade(meters);
    let _ = std::thread::Builder::new()
        .name("mars:pool".into())
        .spawn(move || control_loop(weak, elastic, budgets, batches));
}

fn control_loop(
    meters: Weak<Vec<Arc<NodeMeter>>>,
    elastic: Vec<usize>,
    budgets: Vec<Budget>,
    batches: Vec<u32>,
) {
    let started = Instant::now();
    let mut last = started;
    let mut tracks: Vec<Track> = elastic
        .iter()
        .map(|_| Track {
            answered: 0,
            busy_ns: 0,
            arrived: 0,
            rates: None,
        })
        .collect();
    let mut damping = Damping::new(elastic.len());
    let mut tick = 0u64;
    loop {
        std::thread::sleep(TICK);
        let Some(meters) = meters.upgrade() else {
            return;
        };
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64().max(1e-6);
        last = now;
        tick += 1;
        let leases: Vec<Arc<Lease>> = elastic
            .iter()
            .filter_map(|&i| meters[i].lease().cloned())
            .collect();
        if leases.len() != elastic.len() {
            return;
        }
        let mut obs = Vec::with_capacity(elastic.len());
        for (k, &i) in elastic.iter().enumerate() {
            let l = &leases[k];
            let t = meters[i].totals();
            let arrived = l.arrived.load(Ordering::Relaxed);
            let answered = l.answered.load(Ordering::Relaxed);
            let in_node = arrived.saturating_sub(answered);
            let active = l.active();
            let tr = &mut tracks[k];
            let busy = t[3].saturating_sub(tr.busy_ns) as f64 / 1e9 / dt;
            let fresh = (
                arrived.saturating_sub(tr.arrived) as f64 / dt,
                answered.saturating_sub(tr.answered) as f64 / dt,
                busy,
            );
            (tr.answered, tr.busy_ns, tr.arrived) = (answered, t[3], arrived);
            let r = match tr.rates {
                None => fresh,
                Some(o) => (
                    SMOOTHING * fresh.0 + (1.0 - SMOOTHING) * o.0,
                    SMOOTHING * fresh.1 + (1.0 - SMOOTHING) * o.1,
                    SMOOTHING * fresh.2 + (1.0 - SMOOTHING) * o.2,
                ),
            };
            tr.rates = Some(r);
            let pinned = l.pinned.load(Ordering::Acquire);
            obs.push(NodeObs {
                worker: l.worker,
                active,
                min: if pinned { active } else { l.min },
                max: if pinned { active } else { l.max },
                cores: l.cores,
                memory_mb: l.memory_mb,
                batch: batches[i],
                backlog: in_node,
                arrivals: r.0,
                completions: r.1,
                busy: r.2,
            });
        }
        let decision = controller::decide(&obs, &budgets, &damping, tick);
        let mut log = leases[0]
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.ticks = tick;
        for (k, &i) in elastic.iter().enumerate() {
            let a = leases[k].active();
            *log.replica_s.entry(meters[i].id.clone()).or_default() += f64::from(a) * dt;
            let e = log.seen.entry(meters[i].id.clone()).or_insert((a, a));
            *e = (e.0.min(a), e.1.max(a));
        }
        let Some((mv, reason)) = decision else {
            continue;
        };
        damping.record(mv, tick);
        let name = |k: usize| meters[elastic[k]].id.clone();
        let (kind, from, to) = match mv {
            Move::Grow { node } => {
                leases[node].set_active(leases[node].active() + 1);
                ("grow", None, node)
            }
            Move::Transfer { from, to } => {
                leases[from].set_active(leases[from].active() - 1);
                leases[to].set_active(leases[to].active() + 1);
                ("transfer", Some(from), to)
            }
        };
        // The reason names nodes by index: spell their ids.
        let mut reason = reason;
        for k in (0..elastic.len()).rev() {
            reason = reason.replace(&format!("`{k}`"), &format!("`{}`", name(k)));
        }
        let replicas: BTreeMap<String, u32> = (0..elastic.len())
            .map(|k| (name(k), leases[k].active()))
            .collect();
        for (k, _) in elastic.iter().enumerate() {
            let a = leases[k].active();
            let e = log.seen.entry(name(k)).or_insert((a, a));
            *e = (e.0.min(a), e.1.max(a));
        }
        tracing::info!(target: "mars::pool", "{kind} {}{}: {reason}", from.map(|f| format!("{} → ", name(f))).unwrap_or_default(), name(to));
        log.moves.push(MoveRecord {
            at_s: round3(now.duration_since(started).as_secs_f64()),
            kind,
            from: from.map(name),
            to: name(to),
            replicas,
            reason,
        });
    }
}

/// The controller's report for a run's stats, when some node was elastic.
pub fn report(meters: &[Arc<NodeMeter>]) -> Option<ElasticStats> {
    let lease = meters.iter().find_map(|m| m.lease().cloned())?;
    let log = lease
        .log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let count = |k: &str| log.moves.iter().filter(|m| m.kind == k).count() as u64;
    Some(ElasticStats {
        tick_ms: TICK.as_millis() as u64,
        ticks: log.ticks,
        moves: log.moves.len() as u64,
        grows: count("grow"),
        transfers: count("transfer"),
        log: log.moves.clone(),
    })
}

/// One node's replicas over the run, when it had a lease.
pub fn node_report(meter: &NodeMeter) -> Option<NodeElastic> {
    let lease = meter.lease()?;
    let log = lease
        .log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let active = lease.active();
    let (fewest, most) = log.seen.get(&meter.id).copied().unwrap_or((active, active));
    Some(NodeElastic {
        min: lease.min,
        max: lease.max,
        active,
        fewest,
        most,
        replica_s: round3(log.replica_s.get(&meter.id).copied().unwrap_or(0.0)),
    })
}

/// Node `i` as its replicas are built: an exec node the plan places on an MPS share of a GPU
/// runs its program with `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` set to its share (SPEC 10.7).
/// Other nodes are unchanged. (In-process GPU replicas share the process's one CUDA context,
/// whose MPS percentage is the process's; MIG instances are not yet chosen by the runtime.)
pub fn with_gpu_share(plan: &Plan, i: usize) -> mars_plan::PlanNode {
    let mut node = plan.nodes[i].clone();
    let share = plan.gpu_shares.iter().find(|s| s.node == node.id);
    if let (Some(pct), Some(cmd)) = (share.and_then(|s| s.mps_percent), &node.implementation.exec) {
        // `exec` keeps the program the process the runtime started (and kills), as for a
        // simple command without the variable.
        let simple = !cmd.contains(['&', '|', ';', '(', '{', '\n', '$', '`', '<', '>']);
        let run = if simple {
            format!("exec {cmd}")
        } else {
            cmd.clone()
        };
        node.implementation.exec = Some(format!(
            "export CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={pct}; {run}"
        ));
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_node_on_an_mps_share_gets_its_thread_percentage() {
        let mut plan =
            crate::scenarios::delay_chain("p", &[1.0, 1.0], crate::scenarios::batch_none(), 1);
        plan.nodes[1].implementation = mars_plan::Implementation {
            builtin: None,
            exec: Some("python3 model.py".into()),
            model: None,
        };
        plan.gpu_shares.push(mars_plan::GpuShare {
            node: plan.nodes[1].id.clone(),
            gpu: "gpu0".into(),
            mig: None,
            mps_percent: Some(40),
        });
        assert_eq!(
            with_gpu_share(&plan, 1).implementation.exec.as_deref(),
            Some("export CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=40; exec python3 model.py")
        );
        assert_eq!(with_gpu_share(&plan, 0), plan.nodes[0]);
    }

    #[test]
    fn a_lease_parks_replicas_past_its_active_count_and_frees_them_on_close() {
        let plan = crate::scenarios::delay_chain("p", &[1.0], crate::scenarios::batch_none(), 2);
        let mut plan = plan;
        plan.nodes[0].replica_range = Some(mars_plan::ReplicaRange {
            min: 1,
            max: 4,
            cores: 1.0,
            memory_mb: 0.0,
        });
        plan.budget.push(mars_plan::WorkerBudget {
            worker: plan.nodes[0].worker.clone(),
            cpus: 4.0,
            memory_mb: None,
        });
        let meters = vec![Arc::new(NodeMeter::new("n", 2, Instant::now(), false))];
        arm(&plan, &meters, |_| true);
        assert_eq!(replicas_to_build(&plan, &meters, 0), 4);
        let lease = meters[0].lease().cloned().expect("armed");
        assert_eq!(lease.active(), 2);
        assert!(lease.wait_turn(1), "replica 1 of 2 runs");
        let parked = {
            let lease = Arc::clone(&lease);
            std::thread::spawn(move || lease.wait_turn(3))
        };
        lease.set_active(4);
        assert!(
            parked.join().expect("joins"),
            "replica 3 runs once 4 are active"
        );
        lease.set_active(9);
        assert_eq!(lease.active(), 4, "never past max");
        lease.set_active(2);
        let parked = {
            let lease = Arc::clone(&lease);
            std::thread::spawn(move || lease.wait_turn(2))
        };
        lease.close();
        assert!(
            !parked.join().expect("joins"),
            "a closed pool releases its parked replicas"
        );
    }
}
