//! The elastic controller's decision (SPEC 10.2): a pure function from what every node
//! measured over the last tick (backlog, arrival and completion rates, busy replicas) and the
//! workers' budgets to at most one move. No clock, no threads: the table tests below drive
//! it tick by tick.
//!
//! Damping, so that replicas do not flap between two nodes:
//! - **hysteresis**: a node takes a replica only when it holds at least three batches per
//!   active replica (one running, two waiting) and it needs at least one whole replica more
//!   than it has; a node gives one only when it holds at most two batches per replica and it
//!   would still have
//!   [`HEADROOM`] (5%) spare capacity after giving it;
//! - **cooldown**: a node that took a replica gives none for [`COOLDOWN_TICKS`] ticks, and a
//!   node that gave one takes none for as long;
//! - **one move per tick**: one replica moves at a time, so every move is measured before the
//!   next.

/// A taker's spare capacity after the move, and a giver's after giving: need × (1 + H).
pub const HEADROOM: f64 = 0.05;
/// The backlog a node should drain in this long counts as demand on top of its arrivals.
pub const DRAIN_S: f64 = 1.0;
/// Ticks a node that moved one way must wait before it moves the other way.
pub const COOLDOWN_TICKS: u64 = 4;

/// What one node measured over the last tick, smoothed by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeObs {
    /// Index into the budgets: the worker whose cores the node's replicas use.
    pub worker: usize,
    pub active: u32,
    pub min: u32,
    pub max: u32,
    /// Cores one replica takes, memory one replica holds (MB).
    pub cores: f64,
    pub memory_mb: f64,
    /// The node's batch size (`max` of its policy; 1 under `none`).
    pub batch: u32,
    /// Items at the node and not yet answered: queued at its operator or handed to a replica.
    pub backlog: u64,
    /// Items per second that entered the node's queue.
    pub arrivals: f64,
    /// Items per second its replicas finished.
    pub completions: f64,
    /// Replicas busy on average (busy seconds per second).
    pub busy: f64,
}

/// What a worker lends: cores, and memory where it is limited (MB).
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub cpus: f64,
    pub memory_mb: Option<f64>,
}

/// One move of one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Start one more replica of `node` on cores its worker has free.
    Grow { node: usize },
    /// Park one replica of `from` and start one of `to`: the cores pass between them.
    Transfer { from: usize, to: usize },
}

/// The controller's memory between ticks: when each node last took or gave a replica.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Damping {
    pub took: Vec<Option<u64>>,
    pub gave: Vec<Option<u64>>,
}

impl Damping {
    pub fn new(nodes: usize) -> Damping {
        Damping {
            took: vec![None; nodes],
            gave: vec![None; nodes],
        }
    }

    /// Remember `mv`, made at `tick`.
    pub fn record(&mut self, mv: Move, tick: u64) {
        match mv {
            Move::Grow { node } => self.took[node] = Some(tick),
            Move::Transfer { from, to } => {
                self.gave[from] = Some(tick);
                self.took[to] = Some(tick);
            }
        }
    }

    fn cooling(when: Option<u64>, tick: u64) -> bool {
        when.is_some_and(|t| tick < t + COOLDOWN_TICKS)
    }
}

/// Items one busy replica finishes per second, when the tick measured any.
fn per_replica_rate(n: &NodeObs) -> Option<f64> {
    (n.busy > 1e-3 && n.completions > 0.0).then(|| n.completions / n.busy)
}

/// Replicas the node needs to keep up with its arrivals and drain its backlog in
/// [`DRAIN_S`]; `None` when its speed is unknown (it finished nothing yet).
pub fn need(n: &NodeObs) -> Option<f64> {
    if n.backlog == 0 && n.arrivals <= 0.0 && n.busy <= 1e-3 {
        return Some(0.0);
    }
    per_replica_rate(n).map(|s| (n.arrivals + n.backlog as f64 / DRAIN_S) / s)
}

fn starved(n: &NodeObs, need: Option<f64>) -> bool {
    n.active < n.max
        && n.backlog >= 3 * u64::from(n.batch.max(1)) * u64::from(n.active)
        && need.is_some_and(|w| w >= f64::from(n.active) + 1.0)
}

/// Replicas a node could give and still have [`HEADROOM`] spare.
fn spare(n: &NodeObs, need: Option<f64>) -> u32 {
    let Some(w) = need else { return 0 };
    if n.backlog > 2 * u64::from(n.batch.max(1)) * u64::from(n.active) {
        return 0;
    }
    let keep = ((w * (1.0 + HEADROOM)).ceil() as u32).max(n.min);
    n.active.saturating_sub(keep)
}

/// The move to make now, if any, and why (for the log).
pub fn decide(
    nodes: &[NodeObs],
    budgets: &[Budget],
    damping: &Damping,
    tick: u64,
) -> Option<(Move, String)> {
    let needs: Vec<Option<f64>> = nodes.iter().map(need).collect();
    // The starved node with the most need per replica takes first; ties: plan order.
    let taker = (0..nodes.len())
        .filter(|&i| starved(&nodes[i], needs[i]) && !Damping::cooling(damping.gave[i], tick))
        .max_by(|&a, &b| {
            let pa = needs[a].unwrap_or(0.0) / f64::from(nodes[a].active.max(1));
            let pb = needs[b].unwrap_or(0.0) / f64::from(nodes[b].active.max(1));
            pa.total_cmp(&pb).then(b.cmp(&a))
        })?;
    let t = &nodes[taker];
    let w = t.worker;
    let on_w = || nodes.iter().filter(move |n| n.worker == w);
    let cores_used: f64 = on_w().map(|n| f64::from(n.active) * n.cores).sum();
    let mem_used: f64 = on_w().map(|n| f64::from(n.active) * n.memory_mb).sum();
    let budget = budgets.get(w)?;
    let free_cores = budget.cpus - cores_used;
    let free_mem = budget.memory_mb.map_or(f64::INFINITY, |m| m - mem_used);
    let why = |how: String| {
        format!(
            "`{}`: backlog {}, needs {:.1} replicas, has {}; {how}",
            taker,
            t.backlog,
            needs[taker].unwrap_or(0.0),
            t.active
        )
    };
    if free_cores + 1e-9 >= t.cores && free_mem + 1e-9 >= t.memory_mb {
        return Some((
            Move::Grow { node: taker },
            why(format!("{:.2} cores free", free_cores.max(0.0))),
        ));
    }
    // A giver on the same worker whose replica frees enough; the most spare first.
    let giver = (0..nodes.len())
        .filter(|&j| j != taker && nodes[j].worker == w)
        .filter(|&j| !Damping::cooling(damping.took[j], tick))
        .filter(|&j| nodes[j].active > nodes[j].min && spare(&nodes[j], needs[j]) >= 1)
        .filter(|&j| {
            free_cores + nodes[j].cores + 1e-9 >= t.cores
                && free_mem + nodes[j].memory_mb + 1e-9 >= t.memory_mb
        })
        .max_by(|&a, &b| {
            spare(&nodes[a], needs[a])
                .cmp(&spare(&nodes[b], needs[b]))
                .then(b.cmp(&a))
        })?;
    Some((
        Move::Transfer {
            from: giver,
            to: taker,
        },
        why(format!(
            "`{giver}` needs {:.1} of its {}",
            needs[giver].unwrap_or(0.0),
            nodes[giver].active
        )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node on worker 0 with range 1..=8, one core a replica, batch 1.
    fn node(active: u32, backlog: u64, arrivals: f64, completions: f64, busy: f64) -> NodeObs {
        NodeObs {
            worker: 0,
            active,
            min: 1,
            max: 8,
            cores: 1.0,
            memory_mb: 0.0,
            batch: 1,
            backlog,
            arrivals,
            completions,
            busy,
        }
    }

    fn cpus(c: f64) -> Vec<Budget> {
        vec![Budget {
            cpus: c,
            memory_mb: None,
        }]
    }

    #[test]
    fn the_table() {
        // (case, nodes, budget cpus, expected move)
        let cases: Vec<(&str, Vec<NodeObs>, f64, Option<Move>)> = vec![
            (
                "a backlogged node grows on free cores",
                vec![
                    node(2, 400, 300.0, 300.0, 2.0),
                    node(2, 0, 300.0, 300.0, 0.6),
                ],
                8.0,
                Some(Move::Grow { node: 0 }),
            ),
            (
                "no free cores: the idle-ish node gives one",
                vec![
                    node(4, 0, 330.0, 330.0, 0.7),
                    node(4, 600, 330.0, 330.0, 4.0),
                ],
                8.0,
                Some(Move::Transfer { from: 0, to: 1 }),
            ),
            (
                "nobody starved: nothing moves",
                vec![node(4, 2, 330.0, 330.0, 0.7), node(4, 3, 330.0, 330.0, 3.0)],
                8.0,
                None,
            ),
            (
                "the giver would fall under its headroom: nothing moves",
                // needs 2.0 × 1.25 = 2.5 → keeps 3 of its 3.
                vec![
                    node(3, 0, 1000.0, 1000.0, 2.0),
                    node(5, 900, 1000.0, 1000.0, 5.0),
                ],
                8.0,
                None,
            ),
            (
                "a backlog under three batches per replica is not starvation",
                vec![
                    node(4, 0, 100.0, 100.0, 0.2),
                    node(4, 11, 500.0, 500.0, 4.0),
                ],
                8.0,
                None,
            ),
            (
                "at its max a node takes nothing",
                vec![
                    node(1, 0, 10.0, 10.0, 0.1),
                    NodeObs {
                        max: 7,
                        ..node(7, 900, 1000.0, 1000.0, 7.0)
                    },
                ],
                8.0,
                None,
            ),
            (
                "the most pressed of two takers wins",
                vec![
                    node(2, 100, 100.0, 100.0, 2.0),
                    node(2, 1000, 100.0, 100.0, 2.0),
                ],
                8.0,
                Some(Move::Grow { node: 1 }),
            ),
            (
                "a replica of two cores does not fit in one free core",
                vec![
                    NodeObs {
                        cores: 2.0,
                        ..node(3, 900, 100.0, 100.0, 3.0)
                    },
                    node(1, 5, 100.0, 100.0, 1.0),
                ],
                8.0,
                None,
            ),
            (
                "another worker's spare cores do not help",
                vec![
                    node(4, 900, 100.0, 100.0, 4.0),
                    NodeObs {
                        worker: 1,
                        ..node(4, 0, 0.0, 0.0, 0.0)
                    },
                ],
                4.0,
                None,
            ),
            (
                "memory bounds growth as cores do",
                vec![NodeObs {
                    memory_mb: 500.0,
                    ..node(2, 900, 100.0, 100.0, 2.0)
                }],
                8.0,
                None,
            ),
            (
                "an idle node gives to a starved one",
                vec![node(2, 0, 0.0, 0.0, 0.0), node(2, 50, 100.0, 100.0, 2.0)],
                4.0,
                Some(Move::Transfer { from: 0, to: 1 }),
            ),
            (
                "unknown speed (nothing finished yet) does not take",
                vec![node(2, 0, 0.0, 0.0, 0.0), node(2, 50, 100.0, 0.0, 2.0)],
                4.0,
                None,
            ),
        ];
        for (case, nodes, c, want) in cases {
            let budgets = vec![
                Budget {
                    cpus: c,
                    memory_mb: Some(1200.0),
                },
                Budget {
                    cpus: 8.0,
                    memory_mb: None,
                },
            ];
            let got = decide(&nodes, &budgets, &Damping::new(nodes.len()), 10).map(|m| m.0);
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn cooldown_keeps_a_node_from_giving_back_what_it_took() {
        let nodes = vec![node(2, 0, 0.0, 0.0, 0.0), node(2, 50, 100.0, 100.0, 2.0)];
        let mut damping = Damping::new(2);
        // Node 0 took a replica at tick 8: until tick 12 it gives none.
        damping.record(Move::Grow { node: 0 }, 8);
        assert_eq!(decide(&nodes, &cpus(4.0), &damping, 11), None);
        assert_eq!(
            decide(&nodes, &cpus(4.0), &damping, 12).map(|m| m.0),
            Some(Move::Transfer { from: 0, to: 1 })
        );
        // A node that gave takes none while it cools down.
        let mut damping = Damping::new(2);
        damping.record(Move::Transfer { from: 1, to: 0 }, 10);
        assert_eq!(decide(&nodes, &cpus(8.0), &damping, 13), None);
        assert!(decide(&nodes, &cpus(8.0), &damping, 14).is_some());
    }

    /// A closed loop with a model of the nodes: per-replica speeds 500/s and 167/s (the second
    /// node three times slower than the first), 8 cores, 4 + 4 replicas planned from a profile
    /// that thought them equal. The controller ends at 2 + 6 (both ≥ the 1000/s the cores
    /// allow) and then stays: no move in the last 40 ticks.
    #[test]
    fn a_simulated_wrong_profile_converges_and_stays() {
        let speed = [500.0, 500.0 / 3.0];
        let mut active = [4u32, 4];
        let mut backlog = [0.0f64, 0.0];
        let mut damping = Damping::new(2);
        let dt = 0.25;
        let inflight = 512.0;
        let mut last_move = 0;
        for tick in 0..100u64 {
            // Closed loop: the source keeps `inflight` items in the pipeline.
            let cap = [
                f64::from(active[0]) * speed[0],
                f64::from(active[1]) * speed[1],
            ];
            let in_pipe = backlog[0] + backlog[1];
            let admitted = (inflight - in_pipe).max(0.0) / dt;
            let done0 = cap[0].min(admitted + backlog[0] / dt);
            let done1 = cap[1].min(done0 + backlog[1] / dt);
            backlog[0] = (backlog[0] + (admitted - done0) * dt).max(0.0);
            backlog[1] = (backlog[1] + (done0 - done1) * dt).max(0.0);
            let obs: Vec<NodeObs> = (0..2)
                .map(|i| {
                    let (arr, done) = if i == 0 {
                        (admitted, done0)
                    } else {
                        (done0, done1)
                    };
                    node(active[i], backlog[i] as u64, arr, done, done / speed[i])
                })
                .collect();
            if let Some((mv, _)) = decide(&obs, &cpus(8.0), &damping, tick) {
                damping.record(mv, tick);
                last_move = tick;
                match mv {
                    Move::Grow { node } => active[node] += 1,
                    Move::Transfer { from, to } => {
                        active[from] -= 1;
                        active[to] += 1;
                    }
                }
            }
        }
        assert_eq!(active, [2, 6]);
        assert!(last_move < 60, "moved at tick {last_move}");
    }
}
