//! The search over assignments: a few deterministic starting points, each improved by local
//! search (move one node to another option; on small pipelines also two nodes at once) until no
//! move improves [`Evaluation::key`]. The best result wins; ties go to the earlier start.
//! Without a throughput SLO a second stage, started from the first's results, trades up to
//! [`THROUGHPUT_TOLERANCE`] of the throughput for a lower p99: so a node far from the
//! bottleneck does not wait to fill a batch that saves a sliver of CPU.

use std::cmp::Ordering;

use mars_plan::Device;

use super::evaluate::{compare_keys, evaluate, Evaluation, Stage, KEY_LEN, THROUGHPUT_TOLERANCE};
use super::model::CostModel;
use super::screen::MoveScreen;

/// Knobs of the search (the defaults are what `marsc compile` uses).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    /// Pipelines with at most this many nodes also try moving two nodes at once.
    pub pair_moves_up_to: usize,
    /// At most this many improvement passes per start.
    pub max_passes: usize,
    /// Rounds of perturbation (iterated local search) are limited so that rounds × nodes ×
    /// options stays under this; large pipelines get few or none.
    pub perturbation_budget: usize,
    /// And at most this many rounds.
    pub max_perturbations: usize,
}

impl Default for SearchOptions {
    fn default() -> SearchOptions {
        SearchOptions {
            pair_moves_up_to: 12,
            max_passes: 200,
            perturbation_budget: 40_000,
            max_perturbations: 200,
        }
    }
}

/// At most this many two-node moves per pass (targets with many workers and GPUs give nodes
/// many options).
const MAX_PAIR_MOVES: usize = 50_000;

/// The chosen option of every node and its evaluation.
#[derive(Debug, Clone)]
pub struct Solution {
    pub choice: Vec<usize>,
    pub eval: Evaluation,
}

/// Search the best assignment of `model`. Without a throughput SLO in two stages: the most
/// throughput, then, keeping within [`THROUGHPUT_TOLERANCE`] of it, the lowest p99 (SPEC 2.5).
pub fn search(model: &CostModel, options: &SearchOptions) -> Solution {
    let (fastest, locals) = search_stage(model, options, Stage::Throughput, starts(model));
    if model.objectives.load().is_some() || !fastest.eval.fits {
        return fastest;
    }
    let floor = fastest.eval.capacity * (1.0 - THROUGHPUT_TOLERANCE);
    let (pinned, original) = pin_annotated_batches(model, &fastest.choice);
    let to_pinned = |choice: &[usize]| -> Option<Vec<usize>> {
        (0..choice.len())
            .map(|i| original[i].iter().position(|&o| o == choice[i]))
            .collect()
    };
    // From the best plan, then from every other start's local optimum that is as fast.
    let mut again = vec![to_pinned(&fastest.choice).expect("the best plan's options are kept")];
    again.extend(
        locals
            .iter()
            .filter(|s| s.eval.capacity >= floor)
            .filter_map(|s| to_pinned(&s.choice)),
    );
    let best = search_stage(&pinned, options, Stage::Latency { floor }, again).0;
    let choice: Vec<usize> = (0..best.choice.len())
        .map(|i| original[i][best.choice[i]])
        .collect();
    Solution {
        eval: evaluate(model, &choice),
        choice,
    }
}

/// `model` where every node with a `@batch(max = …)` annotation keeps only the options of the
/// batch size and policy it has in `choice` (the user asked for that batching; the latency
/// stage must not undo it), and for each node the original index of each option kept.
fn pin_annotated_batches(model: &CostModel, choice: &[usize]) -> (CostModel, Vec<Vec<usize>>) {
    let mut pinned = model.clone();
    let mut original = Vec::with_capacity(model.nodes.len());
    for (i, node) in pinned.nodes.iter_mut().enumerate() {
        let chosen = &model.nodes[i].options[choice[i]];
        let keep: Vec<usize> = (0..node.options.len())
            .filter(|&o| {
                let opt = &model.nodes[i].options[o];
                !node.batch_annotated || (opt.batch == chosen.batch && opt.policy == chosen.policy)
            })
            .collect();
        node.options = keep
            .iter()
            .map(|&o| model.nodes[i].options[o].clone())
            .collect();
        original.push(keep);
    }
    (pinned, original)
}

/// One stage of the search under `stage`'s order: local search from each start (duplicates
/// skipped), then iterated local search from the best. Returns the best and each start's local
/// optimum.
fn search_stage(
    model: &CostModel,
    options: &SearchOptions,
    stage: Stage,
    starts: Vec<Vec<usize>>,
) -> (Solution, Vec<Solution>) {
    let mut best: Option<(Solution, [f64; KEY_LEN])> = None;
    let mut seen: Vec<Vec<usize>> = Vec::new();
    let mut locals = Vec::new();
    for start in starts {
        if seen.contains(&start) {
            continue;
        }
        seen.push(start.clone());
        let solution = improve(model, start, options, stage);
        let key = solution.eval.key(model, stage);
        let better = match &best {
            None => true,
            Some((_, k)) => compare_keys(&key, k) == Ordering::Less,
        };
        if better {
            best = Some((solution.clone(), key));
        }
        locals.push(solution);
    }
    let (mut best, mut best_key) = best.expect("there is always at least one start");

    // Iterated local search: move a few nodes to other options at random (a fixed seed, so the
    // result is deterministic) or, every fourth round, start from a random assignment; improve
    // again, and keep the result if it is better. This escapes the local optima where several
    // nodes must move at once (packing memory, balancing CPU against GPU).
    let n = model.nodes.len();
    let total_options: usize = model.nodes.iter().map(|node| node.options.len()).sum();
    let rounds = if n == 0 {
        0
    } else {
        (options.perturbation_budget / total_options.max(1)).min(options.max_perturbations)
    };
    let mut rng = SplitMix(0x6d61_7273_706c_616e);
    for round in 0..rounds {
        let mut choice = best.choice.clone();
        if round % 4 == 3 {
            for (i, c) in choice.iter_mut().enumerate() {
                *c = (rng.next() % model.nodes[i].options.len() as u64) as usize;
            }
        } else {
            for _ in 0..2 + round % 3 {
                let i = (rng.next() % n as u64) as usize;
                choice[i] = (rng.next() % model.nodes[i].options.len() as u64) as usize;
            }
        }
        let quick = SearchOptions {
            pair_moves_up_to: 0,
            ..options.clone()
        };
        let solution = improve(model, choice, &quick, stage);
        let key = solution.eval.key(model, stage);
        if compare_keys(&key, &best_key) == Ordering::Less {
            best = solution;
            best_key = key;
        }
    }
    (best, locals)
}

/// splitmix64, for the perturbations.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The starting assignments, in order.
fn starts(model: &CostModel) -> Vec<Vec<usize>> {
    vec![
        balanced_start(model, None, false),
        lightest_start(model, None),
        balanced_start(model, Some(Device::Cpu), false),
        balanced_start(model, Some(Device::Gpu), false),
        balanced_start(model, None, true),
    ]
}

/// The share of its resource one request/s of this option takes.
fn relative_load(model: &CostModel, node: usize, option: usize) -> f64 {
    let o = &model.nodes[node].options[option];
    match o.gpu {
        Some(g) => o.gpu_load / model.gpus[g].share,
        None => o.per_request * o.cores / model.workers[o.worker].cpus,
    }
}

/// Each node on the option lightest for its resource (preferring `device` where it can).
fn lightest_start(model: &CostModel, device: Option<Device>) -> Vec<usize> {
    (0..model.nodes.len())
        .map(|i| {
            let opts = &model.nodes[i].options;
            let prefer = |o: usize| device.is_none_or(|d| opts[o].device == d);
            let any_preferred = (0..opts.len()).any(prefer);
            (0..opts.len())
                .filter(|&o| !any_preferred || prefer(o))
                .min_by(|&a, &b| {
                    compare_keys(
                        &[relative_load(model, i, a), opts[a].p99_ms],
                        &[relative_load(model, i, b), opts[b].p99_ms],
                    )
                })
                .unwrap_or(0)
        })
        .collect()
}

/// Longest-processing-time-first: heaviest nodes first, each where the most loaded resource
/// stays least loaded; on `device` where the node can run there; among its lowest-p99
/// options when `fastest`.
fn balanced_start(model: &CostModel, device: Option<Device>, fastest: bool) -> Vec<usize> {
    let n = model.nodes.len();
    // The options a node may start on: those on `device`, where it has any; with `fastest`,
    // those of the lowest p99.
    let allowed = |i: usize| -> Vec<usize> {
        let opts = &model.nodes[i].options;
        let min_p99 = opts.iter().map(|o| o.p99_ms).fold(f64::INFINITY, f64::min);
        let preferred: Vec<usize> = (0..opts.len())
            .filter(|&o| device.is_none_or(|d| opts[o].device == d))
            .filter(|&o| !fastest || compare_keys(&[opts[o].p99_ms], &[min_p99]) == Ordering::Equal)
            .collect();
        if preferred.is_empty() {
            (0..opts.len()).collect()
        } else {
            preferred
        }
    };
    let weight = |i: usize| {
        allowed(i)
            .into_iter()
            .map(|o| relative_load(model, i, o))
            .fold(f64::INFINITY, f64::min)
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| compare_keys(&[-weight(a)], &[-weight(b)]).then(a.cmp(&b)));
    let mut cpu = vec![0.0; model.workers.len()];
    let mut gpu = vec![0.0; model.gpus.len()];
    let mut choice = vec![0; n];
    for i in order {
        let after = |o: usize| -> f64 {
            let opt = &model.nodes[i].options[o];
            let load = relative_load(model, i, o);
            match opt.gpu {
                Some(g) => gpu[g] + load,
                None => cpu[opt.worker] + load,
            }
        };
        let opts = &model.nodes[i].options;
        let best = allowed(i)
            .into_iter()
            .min_by(|&a, &b| compare_keys(&[after(a), opts[a].p99_ms], &[after(b), opts[b].p99_ms]))
            .unwrap_or(0);
        let opt = &opts[best];
        let load = relative_load(model, i, best);
        match opt.gpu {
            Some(g) => gpu[g] += load,
            None => cpu[opt.worker] += load,
        }
        choice[i] = best;
    }
    choice
}

/// The option of node `i` with the lowest own p99 time (batch latency plus fill) at `rate`,
/// staying on `keep`'s worker; `keep` itself on ties.
fn fastest_option(model: &CostModel, i: usize, rate: f64, keep: usize) -> usize {
    let node = &model.nodes[i];
    let own = |o: usize| node.options[o].p99_ms + node.options[o].fill_ms(rate * node.fanout);
    let worker = node.options[keep].worker;
    (0..node.options.len())
        .filter(|&o| node.options[o].worker == worker)
        .fold(keep, |best, o| {
            if own(o) < own(best) * (1.0 - 1e-9) {
                o
            } else {
                best
            }
        })
}

/// Local search from `choice` until no move improves it.
fn improve(
    model: &CostModel,
    mut choice: Vec<usize>,
    options: &SearchOptions,
    stage: Stage,
) -> Solution {
    let n = model.nodes.len();
    // Moves of two nodes at once: on small pipelines, and only while their number stays small.
    let pairs_affordable = n <= options.pair_moves_up_to && {
        let k: Vec<usize> = model.nodes.iter().map(|node| node.options.len()).collect();
        let all: usize = k.iter().sum();
        k.iter().map(|&a| a * (all - a)).sum::<usize>() / 2 <= MAX_PAIR_MOVES
    };
    let mut current = evaluate(model, &choice);
    let mut key = current.key(model, stage);

    for _ in 0..options.max_passes {
        let mut improved = false;
        // A plan that misses a latency SLO: try every node on a path that misses it on its
        // fastest option, all at once (one node at a time, the critical path just moves
        // elsewhere).
        if current.fits && current.violation > 0.0 {
            let mut rush = choice.clone();
            for (p99, slo) in [
                (true, model.objectives.p99_ms),
                (false, model.objectives.p50_ms),
            ] {
                let Some(slo) = slo else { continue };
                let through = super::evaluate::longest_through(model, &choice, current.rate, p99);
                for (i, &t) in through.iter().enumerate() {
                    if t > slo {
                        rush[i] = fastest_option(model, i, current.rate, choice[i]);
                    }
                }
            }
            if rush != choice {
                let e = evaluate(model, &rush);
                let k = e.key(model, stage);
                if compare_keys(&k, &key) == Ordering::Less {
                    choice = rush;
                    current = e;
                    key = k;
                    improved = true;
                }
            }
        }
        let mut screen = MoveScreen::new(model, &choice, &current);
        for i in 0..n {
            let keep = choice[i];
            let mut best: Option<(usize, Evaluation, [f64; KEY_LEN])> = None;
            for o in 0..model.nodes[i].options.len() {
                if o == keep || !screen.may_improve(model, &current, i, keep, o, stage) {
                    continue;
                }
                choice[i] = o;
                let e = evaluate(model, &choice);
                let k = e.key(model, stage);
                let bar = best.as_ref().map_or(&key, |b| &b.2);
                if compare_keys(&k, bar) == Ordering::Less {
                    best = Some((o, e, k));
                }
            }
            match best {
                Some((o, e, k)) => {
                    choice[i] = o;
                    current = e;
                    key = k;
                    improved = true;
                    screen = MoveScreen::new(model, &choice, &current);
                }
                None => choice[i] = keep,
            }
        }
        if !improved && pairs_affordable {
            'pairs: for i in 0..n {
                for j in i + 1..n {
                    let (keep_i, keep_j) = (choice[i], choice[j]);
                    for oi in 0..model.nodes[i].options.len() {
                        for oj in 0..model.nodes[j].options.len() {
                            if oi == keep_i || oj == keep_j {
                                continue;
                            }
                            choice[i] = oi;
                            choice[j] = oj;
                            let e = evaluate(model, &choice);
                            let k = e.key(model, stage);
                            if compare_keys(&k, &key) == Ordering::Less {
                                current = e;
                                key = k;
                                improved = true;
                                break 'pairs;
                            }
                        }
                    }
                    choice[i] = keep_i;
                    choice[j] = keep_j;
                }
            }
        }
        if !improved {
            break;
        }
    }
    Solution {
        choice,
        eval: current,
    }
}
