//! A written plan's latencies at other offered loads (SPEC 2.4.10), for `--explain`: its
//! replicas and batch policies stay as planned, and at a load below the one a batch wait was
//! chosen for, a batch leaves when its wait runs out, holding fewer items.

use std::fmt::Write;

use mars_plan::BatchPolicy;

use super::evaluate::{fill_ms, longest_path_of};
use super::lower::round3;
use super::model::NodeOption;
use super::queue::node_queue_filled;
use super::Planned;

/// Median and p99 latency (ms) of `planned` at `x` requests/s; infinite where a node's queue
/// is not stable at `x`.
pub fn latency_at(planned: &Planned, x: f64) -> (f64, f64) {
    let model = &planned.model;
    let choice = &planned.solution.choice;
    let mut own50 = Vec::with_capacity(model.nodes.len());
    let mut own99 = Vec::with_capacity(model.nodes.len());
    for (i, node) in model.nodes.iter().enumerate() {
        let opt = &node.options[choice[i]];
        let items = x * node.fanout;
        let spec = &planned.plan.nodes[i].batch;
        let (effective, fill, filled) = if opt.policy == BatchPolicy::Dynamic
            && spec.policy == BatchPolicy::Dynamic
            && opt.batch > 1
        {
            let full = fill_ms(opt.batch, items);
            if full <= spec.wait_ms {
                (opt, full, f64::from(opt.batch))
            } else {
                // The wait runs out first: on average 1 + λ·wait items are in the batch.
                let items_in = 1.0 + items * spec.wait_ms / 1000.0;
                (
                    smaller_batch(&node.options, opt, items_in),
                    spec.wait_ms,
                    items_in,
                )
            }
        } else {
            (opt, opt.fill_ms(items), f64::from(opt.batch))
        };
        let replicas = planned.solution.eval.replicas[i];
        let w = node_queue_filled(effective, replicas, items, filled).wait();
        own50.push(effective.latency_ms + fill + w.p50_ms);
        own99.push(effective.p99_ms + fill + w.p99_ms);
    }
    (
        longest_path_of(model, choice, &own50).0,
        longest_path_of(model, choice, &own99).0,
    )
}

/// Among the options on `chosen`'s placement batched the same way, the smallest batch that
/// holds `items` (a batch's measured time is at least what fewer items take); `chosen` when
/// none is smaller.
fn smaller_batch<'a>(
    options: &'a [NodeOption],
    chosen: &'a NodeOption,
    items: f64,
) -> &'a NodeOption {
    options
        .iter()
        .filter(|o| {
            o.device == chosen.device
                && o.worker == chosen.worker
                && o.gpu == chosen.gpu
                && o.per_step == chosen.per_step
                && o.policy != BatchPolicy::Continuous
                && o.batch <= chosen.batch
                && f64::from(o.batch) >= items - 1e-9
        })
        .min_by_key(|o| o.batch)
        .unwrap_or(chosen)
}

/// The shares of the plan's capacity `--explain` predicts latencies at.
pub const LOADS: [f64; 7] = [0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99];

/// The `--explain` table: p50 and p99 at each of [`LOADS`] of the plan's capacity, and at the
/// load it was planned for (if any), in increasing order.
pub fn load_table(planned: &Planned) -> String {
    let capacity = planned.solution.eval.capacity;
    let mut s = String::new();
    if capacity.is_nan() || capacity <= 0.0 || capacity >= super::model::MAX_THROUGHPUT {
        return s;
    }
    let mut rows: Vec<(f64, String)> = LOADS
        .iter()
        .map(|&f| (f * capacity, format!("{}%", round3(100.0 * f))))
        .collect();
    if let Some(r) = planned.plan.rate {
        rows.push((r, "planned for".to_string()));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let _ = writeln!(
        s,
        "predicted latency by offered load (replicas and batch waits as planned; queueing, SPEC 2.4.10):"
    );
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|(x, label)| {
            let (p50, p99) = latency_at(planned, *x);
            let ms = |v: f64| {
                if v.is_finite() {
                    round3(v).to_string()
                } else {
                    "∞ (over capacity)".to_string()
                }
            };
            [round3(*x).to_string(), label.clone(), ms(p50), ms(p99)]
        })
        .collect();
    let header = ["load/s", "of capacity", "p50 ms", "p99 ms"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in &cells {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&cells) {
        let mut l = String::new();
        for (c, w) in r.iter().zip(widths) {
            let _ = write!(l, "  {c}{}", " ".repeat(w - c.chars().count()));
        }
        let _ = writeln!(s, "{}", l.trim_end());
    }
    let _ = writeln!(
        s,
        "  at 100% of capacity ({}/s) the bottleneck's queue grows without bound",
        round3(capacity)
    );
    s.push('\n');
    s
}
