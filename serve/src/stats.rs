//! A served pipeline's stats, measured against the plan's predictions (SPEC 8.3.1):
//! `GET /v1/pipelines/{name}/stats`, and `marsc serve --stats-json` at exit.
//!
//! For each node the report sets what the replicas measured (items, batches, time per batch,
//! busy share) beside what the cost model predicted for the same node: its batch latency, its
//! capacity, and — since a server runs at whatever load its clients offer, not at the plan's
//! saturation throughput — the utilization the plan predicts at the *measured* load
//! (`items_per_s / predicted capacity`), which is what the measured utilization should match.

use serde::Serialize;

use mars_plan::{BatchPolicy, Plan};
use mars_runtime::run::service::Service;
use mars_runtime::stats::{LatencyStats, NodeStats};

use crate::metrics::Metrics;

/// One pipeline, measured and predicted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineReport {
    pub pipeline: String,
    /// Seconds since the pipeline started taking requests.
    pub uptime_s: f64,
    /// Requests answered with a result (any endpoint).
    pub ok: u64,
    /// `ok / uptime_s`.
    pub ok_per_s: f64,
    /// Latency of those requests, from arrival to answer.
    pub latency: LatencyStats,
    pub predicted: PredictedPipeline,
    pub nodes: Vec<NodeReport>,
}

/// The plan's prediction for the whole pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictedPipeline {
    /// The offered load the plan was compiled for (`--rate`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Saturation throughput, requests per second.
    pub throughput: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub bottleneck: String,
}

/// One node, measured and predicted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReport {
    pub id: String,
    pub policy: BatchPolicy,
    pub max_batch: u32,
    pub replicas: u32,
    pub measured: MeasuredNode,
    pub predicted: PredictedNode,
    /// Measured over predicted capacity (1 when the profile is right; `null` before the node
    /// has run or when either side is unknown).
    pub capacity_ratio: Option<f64>,
    /// Measured over predicted median batch time.
    pub batch_p50_ratio: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeasuredNode {
    pub items: u64,
    pub item_errors: u64,
    pub batches: u64,
    pub mean_batch: f64,
    pub batch_ms: LatencyStats,
    /// Items per second the replicas can sustain, from their busy time:
    /// `items / busy_s × replicas` (`null` before the node has been busy).
    pub capacity_per_s: Option<f64>,
    /// Items per second of uptime: the load the node carried.
    pub items_per_s: f64,
    /// Busy time over replicas × uptime.
    pub utilization: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictedNode {
    /// Median and p99 time per batch.
    pub batch_ms: f64,
    pub batch_p99_ms: f64,
    /// Items per second the replicas can sustain (`null` for a node the cost model left
    /// unbounded).
    pub capacity_per_s: Option<f64>,
    /// The busy share the cost model predicts at the measured load:
    /// `items_per_s / capacity_per_s`.
    pub utilization_at_measured_load: Option<f64>,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn finite(x: f64) -> Option<f64> {
    (x.is_finite() && x > 0.0).then_some(x)
}

fn ratio(measured: Option<f64>, predicted: Option<f64>) -> Option<f64> {
    Some(round3(measured? / predicted?))
}

/// The report of `plan` from its nodes' stats (in any order; nodes without stats count as
/// idle) after `uptime_s`, with `ok` requests answered at `latency`.
pub fn report(
    plan: &Plan,
    nodes: &[(String, NodeStats)],
    uptime_s: f64,
    ok: u64,
    latency: LatencyStats,
) -> PipelineReport {
    let uptime = uptime_s.max(1e-9);
    let nodes = plan
        .nodes
        .iter()
        .filter_map(|n| {
            let (_, s) = nodes.iter().find(|(id, _)| *id == n.id)?;
            let items_per_s = s.items as f64 / uptime;
            let capacity =
                (s.busy_s > 0.0).then(|| s.items as f64 / s.busy_s * f64::from(s.replicas.max(1)));
            let predicted_capacity = finite(n.predicted.throughput);
            let measured_batch = (s.batches > 0).then_some(s.batch_ms.p50_ms);
            Some(NodeReport {
                id: n.id.clone(),
                policy: n.batch.policy,
                max_batch: n.batch.max,
                replicas: s.replicas,
                capacity_ratio: ratio(capacity, predicted_capacity),
                batch_p50_ratio: ratio(measured_batch, finite(n.predicted.latency_ms)),
                measured: MeasuredNode {
                    items: s.items,
                    item_errors: s.item_errors,
                    batches: s.batches,
                    mean_batch: s.mean_batch,
                    batch_ms: s.batch_ms.clone(),
                    capacity_per_s: capacity.map(round3),
                    items_per_s: round3(items_per_s),
                    utilization: s.utilization,
                },
                predicted: PredictedNode {
                    batch_ms: n.predicted.latency_ms,
                    batch_p99_ms: n.predicted.p99_ms,
                    capacity_per_s: predicted_capacity,
                    utilization_at_measured_load: predicted_capacity
                        .map(|c| round3((items_per_s / c).min(1.0))),
                },
            })
        })
        .collect();
    PipelineReport {
        pipeline: plan.pipeline.clone(),
        uptime_s: round3(uptime_s),
        ok,
        ok_per_s: round3(ok as f64 / uptime),
        latency,
        predicted: PredictedPipeline {
            rate: plan.rate,
            throughput: plan.predicted.throughput,
            latency_p50_ms: plan.predicted.latency_p50_ms,
            latency_p99_ms: plan.predicted.latency_p99_ms,
            bottleneck: plan.predicted.bottleneck.clone(),
        },
        nodes,
    }
}

/// The report of a running pipeline `name`.
pub fn of_service(name: &str, service: &Service, metrics: &Metrics) -> PipelineReport {
    let (ok, latency) = metrics.answered_ok(name);
    report(
        service.plan(),
        &service.node_stats(),
        service.uptime().as_secs_f64(),
        ok,
        latency,
    )
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

impl PipelineReport {
    /// The text table `marsc serve` prints at exit.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} ok in {:.1}s ({:.1}/s); latency p50 {:.2} ms, p99 {:.2} ms (plan: p50 {:.2} ms, p99 {:.2} ms at {})",
            self.pipeline,
            self.ok,
            self.uptime_s,
            self.ok_per_s,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.predicted.latency_p50_ms,
            self.predicted.latency_p99_ms,
            self.predicted.rate.map_or_else(
                || format!("saturation, {:.1}/s", self.predicted.throughput),
                |r| format!("{r:.1}/s")
            ),
        );
        let width = self
            .nodes
            .iter()
            .map(|n| n.id.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            s,
            "{:<width$}  {:>9}  {:>10}  {:>10}  {:>13}  {:>13}  {:>8}  {:>8}",
            "node",
            "items",
            "mean batch",
            "batch p50",
            "capacity/s",
            "plan cap./s",
            "util.",
            "plan util."
        );
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "{:<width$}  {:>9}  {:>10.2}  {:>7.2} ms  {:>13}  {:>13}  {:>7.1}%  {:>9}",
                n.id,
                n.measured.items,
                n.measured.mean_batch,
                n.measured.batch_ms.p50_ms,
                opt(n.measured.capacity_per_s, 1),
                opt(n.predicted.capacity_per_s, 1),
                n.measured.utilization * 100.0,
                opt(
                    n.predicted.utilization_at_measured_load.map(|u| u * 100.0),
                    1
                ) + "%",
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mars_runtime::scenarios::{batch_dynamic, delay_chain};

    fn stats(items: u64, batches: u64, busy_s: f64, batch_p50_ms: f64) -> NodeStats {
        NodeStats {
            replicas: 1,
            batches,
            items,
            item_errors: 0,
            mean_batch: items as f64 / batches as f64,
            busy_s,
            batch_ms: LatencyStats {
                p50_ms: batch_p50_ms,
                p99_ms: batch_p50_ms,
                max_ms: batch_p50_ms,
                mean_ms: batch_p50_ms,
            },
            utilization: busy_s / 10.0,
            continuous: None,
            elastic: None,
        }
    }

    #[test]
    fn capacity_and_utilisation_are_compared_at_the_measured_load() {
        // Two stages of 2 and 4 ms per item: predicted capacities 500/s and 250/s.
        let plan = delay_chain("two", &[2.0, 4.0], batch_dynamic(8, 0.0), 1);
        let lat = LatencyStats {
            p50_ms: 7.0,
            p99_ms: 9.0,
            max_ms: 12.0,
            mean_ms: 7.5,
        };
        // 10 s at 100 items/s; s0 is as fast as predicted, s1 twice as slow (8 ms an item).
        let nodes = vec![
            ("s1".to_string(), stats(1000, 250, 8.0, 32.0)),
            ("s0".to_string(), stats(1000, 500, 2.0, 4.0)),
        ];
        let r = report(&plan, &nodes, 10.0, 1000, lat.clone());
        assert_eq!((r.ok, r.ok_per_s, &r.latency), (1000, 100.0, &lat));
        assert_eq!(
            r.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["s0", "s1"]
        );
        let s0 = &r.nodes[0];
        assert_eq!(s0.measured.capacity_per_s, Some(500.0));
        assert_eq!(s0.predicted.capacity_per_s, Some(500.0));
        assert_eq!(s0.capacity_ratio, Some(1.0));
        assert_eq!(s0.measured.items_per_s, 100.0);
        // At 100/s a 500/s stage is predicted 20% busy; it measured 2 s of 10: 20%.
        assert_eq!(s0.predicted.utilization_at_measured_load, Some(0.2));
        assert_eq!(s0.measured.utilization, 0.2);
        let s1 = &r.nodes[1];
        assert_eq!(s1.capacity_ratio, Some(0.5));
        assert_eq!(s1.predicted.utilization_at_measured_load, Some(0.4));
        assert_eq!(s1.measured.utilization, 0.8);
        assert_eq!(s1.predicted.batch_ms, 4.0);
        assert_eq!(s1.batch_p50_ratio, Some(8.0));
        let text = r.summary();
        assert!(text.contains("s1") && text.contains("250.0"), "{text}");
    }

    #[test]
    fn an_idle_node_has_no_ratios() {
        let plan = delay_chain("one", &[0.0], batch_dynamic(8, 0.0), 1);
        let idle = NodeStats {
            mean_batch: 0.0,
            ..stats(0, 0, 0.0, 0.0)
        };
        let r = report(
            &plan,
            &[("s0".into(), idle)],
            1.0,
            0,
            LatencyStats {
                p50_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
                mean_ms: 0.0,
            },
        );
        let n = &r.nodes[0];
        assert_eq!((n.capacity_ratio, n.batch_p50_ratio), (None, None));
        assert_eq!(n.measured.capacity_per_s, None);
        // An unbounded prediction (a 0 ms stage) is not a capacity.
        assert_eq!(n.predicted.capacity_per_s, None);
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["nodes"][0]["capacity_ratio"].is_null());
    }
}
