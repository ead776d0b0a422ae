//! Prometheus metrics (`GET /metrics`, OpenMetrics text from `prometheus-client`). Names:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `mars_requests` (`_total`) | counter | pipeline, endpoint, outcome |
//! | `mars_refusals` (`_total`) | counter | pipeline, reason (`queue_full`, `draining`, `open_limit`) |
//! | `mars_open_requests` | gauge | — (HTTP requests being read, queued or answered) |
//! | `mars_open_body_bytes` | gauge | — (body bytes those requests reserve) |
//! | `mars_request_duration_seconds` | histogram | pipeline, endpoint |
//! | `mars_queue_depth` | gauge | pipeline |
//! | `mars_in_flight` | gauge | pipeline |
//! | `mars_node_batch_size` | histogram | pipeline, node |
//! | `mars_node_items` (`_total`) | counter | pipeline, node |
//! | `mars_node_item_errors` (`_total`) | counter | pipeline, node |
//! | `mars_node_busy_seconds` (`_total`) | counter | pipeline, node |
//! | `mars_node_utilization` | gauge | pipeline, node |
//! | `mars_node_capacity_items_per_second` | gauge | pipeline, node, source (`measured`: items over busy time × replicas; `predicted`: the plan's) |
//! | `mars_kv_tokens_used` | gauge | pipeline, node, replica |
//! | `mars_kv_tokens_capacity` | gauge | pipeline, node, replica |
//! | `mars_online_busy_cores` | gauge | — (deployment: cores the online pipelines kept busy, last tick) |
//! | `mars_offline_window` | gauge | pipeline (deployment: requests the offline run may have inside: its cores) |
//! | `mars_offline_in_flight` | gauge | pipeline (deployment: offline requests inside now) |
//! | `mars_offline_done` (`_total`) | counter | pipeline (deployment: offline requests that left) |
//! | `mars_priority_moves` (`_total`) | counter | pipeline, direction (`shrink`, `grow`) |
//!
//! Node counters are read from the same per-node meters `marsc run --stats-json` prints, at
//! each scrape; batch sizes and KV use are observed as they happen.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use mars_runtime::run::service::Service;
use mars_runtime::stats::{LatencyHistogram, LatencyStats};
use mars_runtime::watch::Watch;

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~16 s
    Histogram::new(exponential_buckets(0.00025, 2.0, 17))
}

fn batch_histogram() -> Histogram {
    // 1, 2, 4, … 1024
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    queue_depth: Family<Labels, Gauge>,
    in_flight: Family<Labels, Gauge>,
    batch_size: Family<Labels, Histogram, fn() -> Histogram>,
    node_items: Family<Labels, Counter>,
    node_errors: Family<Labels, Counter>,
    node_busy: Family<Labels, Counter<f64, AtomicU64>>,
    node_utilization: Family<Labels, Gauge<f64, AtomicU64>>,
    node_capacity: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Latency of requests answered ok, per pipeline, for the stats report.
    answered_ok: Mutex<HashMap<String, (u64, LatencyHistogram)>>,
    kv_used: Family<Labels, Gauge>,
    kv_capacity: Family<Labels, Gauge>,
    open_requests: Gauge,
    open_bytes: Gauge,
    online_busy: Gauge<f64, AtomicU64>,
    offline_window: Family<Labels, Gauge>,
    offline_in_flight: Family<Labels, Gauge>,
    offline_done: Family<Labels, Counter>,
    priority_moves: Family<Labels, Counter>,
    /// The offline runs' windows, by name.
    windows: Mutex<Vec<(String, Arc<mars_runtime::pool::priority::Window>)>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            refusals: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            queue_depth: Family::default(),
            in_flight: Family::default(),
            batch_size: Family::new_with_constructor(batch_histogram as fn() -> Histogram),
            node_items: Family::default(),
            node_errors: Family::default(),
            node_busy: Family::default(),
            node_utilization: Family::default(),
            node_capacity: Family::default(),
            answered_ok: Mutex::new(HashMap::new()),
            kv_used: Family::default(),
            kv_capacity: Family::default(),
            open_requests: Gauge::default(),
            open_bytes: Gauge::default(),
            online_busy: Gauge::default(),
            offline_window: Family::default(),
            offline_in_flight: Family::default(),
            offline_done: Family::default(),
            priority_moves: Family::default(),
            windows: Mutex::new(Vec::new()),
            registry: Registry::default(),
        };
        registry.register(
            "mars_requests",
            "Requests answered, by endpoint and outcome",
            m.requests.clone(),
        );
        registry.register(
            "mars_refusals",
            "Requests refused at admission",
            m.refusals.clone(),
        );
        registry.register(
            "mars_request_duration_seconds",
            "Time from a request's arrival to its answer",
            m.duration.clone(),
        );
        registry.register(
            "mars_open_requests",
            "HTTP requests open (being read, queued or answered)",
            m.open_requests.clone(),
        );
        registry.register(
            "mars_open_body_bytes",
            "Body bytes reserved by open HTTP requests",
            m.open_bytes.clone(),
        );
        registry.register(
            "mars_queue_depth",
            "Requests in the admission queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "mars_in_flight",
            "Requests accepted and not yet answered",
            m.in_flight.clone(),
        );
        registry.register(
            "mars_node_batch_size",
            "Items per batch a node ran",
            m.batch_size.clone(),
        );
        registry.register("mars_node_items", "Items a node ran", m.node_items.clone());
        registry.register(
            "mars_node_item_errors",
            "Items a node failed",
            m.node_errors.clone(),
        );
        registry.register(
            "mars_node_busy_seconds",
            "Time a node's replicas spent running batches",
            m.node_busy.clone(),
        );
        registry.register(
            "mars_node_utilization",
            "Busy time over replicas × time since start",
            m.node_utilization.clone(),
        );
        registry.register(
            "mars_node_capacity_items_per_second",
            "Items per second a node's replicas can sustain: measured or predicted by the plan",
            m.node_capacity.clone(),
        );
        registry.register(
            "mars_kv_tokens_used",
            "KV tokens in flight in a generating replica",
            m.kv_used.clone(),
        );
        registry.register(
            "mars_kv_tokens_capacity",
            "A generating replica's KV token bound",
            m.kv_capacity.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Register the deployment metrics (only a deployment exports them).
    pub fn register_priority(&mut self) {
        let r = &mut self.registry;
        r.register(
            "mars_online_busy_cores",
            "Cores the online pipelines kept busy over the priority controller's last tick",
            self.online_busy.clone(),
        );
        r.register(
            "mars_offline_window",
            "Requests the offline run may have inside its dataflow (the cores it is lent)",
            self.offline_window.clone(),
        );
        r.register(
            "mars_offline_in_flight",
            "Offline requests inside the dataflow now",
            self.offline_in_flight.clone(),
        );
        r.register(
            "mars_offline_done",
            "Offline requests that left the dataflow",
            self.offline_done.clone(),
        );
        r.register(
            "mars_priority_moves",
            "Changes of the offline window by the priority controller",
            self.priority_moves.clone(),
        );
    }

    /// Export a deployment's offline windows (by run name) and the controller's moves
    /// (SPEC 10.8).
    pub fn watch_priority(
        &self,
        windows: Vec<(String, Arc<mars_runtime::pool::priority::Window>)>,
    ) {
        if let Ok(mut w) = self.windows.lock() {
            *w = windows;
        }
    }

    /// The online busy cores the priority controller measured last.
    pub fn set_online_busy(&self, cores: f64) {
        self.online_busy.set(cores);
    }

    /// One answered request.
    pub fn answered(&self, pipeline: &str, endpoint: &'static str, outcome: &str, took: Duration) {
        let labels = vec![
            ("pipeline", pipeline.to_string()),
            ("endpoint", endpoint.to_string()),
            ("outcome", outcome.to_string()),
        ];
        self.requests.get_or_create(&labels).inc();
        let labels = vec![
            ("pipeline", pipeline.to_string()),
            ("endpoint", endpoint.to_string()),
        ];
        self.duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if outcome == "ok" {
            let mut all = self
                .answered_ok
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (n, h) = all.entry(pipeline.to_string()).or_default();
            *n += 1;
            h.record(took);
        }
    }

    /// Requests of `pipeline` answered ok so far, and their latency.
    pub fn answered_ok(&self, pipeline: &str) -> (u64, LatencyStats) {
        let all = self
            .answered_ok
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match all.get(pipeline) {
            Some((n, h)) => (*n, h.stats()),
            None => (0, LatencyHistogram::default().stats()),
        }
    }

    /// What the HTTP front end holds open now, for the next scrape.
    pub fn set_open(&self, requests: usize, bytes: usize) {
        self.open_requests.set(requests as i64);
        self.open_bytes.set(bytes as i64);
    }

    /// One request refused at admission.
    pub fn refused(&self, pipeline: &str, reason: &'static str) {
        let labels = vec![
            ("pipeline", pipeline.to_string()),
            ("reason", reason.to_string()),
        ];
        self.refusals.get_or_create(&labels).inc();
    }

    /// The watch a pipeline's service reports batches and KV use to.
    pub fn observer(self: &Arc<Self>, pipeline: &str) -> Arc<dyn Watch> {
        Arc::new(Observer {
            pipeline: pipeline.to_string(),
            metrics: Arc::clone(self),
        })
    }

    /// The exposition text, with the gauges and node counters read now.
    pub fn render(&self, pipelines: &[(String, Option<Arc<Service>>)]) -> String {
        for (name, service) in pipelines {
            let Some(s) = service else { continue };
            let p = vec![("pipeline", name.clone())];
            self.queue_depth.get_or_create(&p).set(s.queued() as i64);
            self.in_flight.get_or_create(&p).set(s.in_flight() as i64);
            for (node, stats) in s.node_stats() {
                let l = vec![("pipeline", name.clone()), ("node", node)];
                let c = self.node_items.get_or_create(&l);
                c.inc_by(stats.items.saturating_sub(c.get()));
                let c = self.node_errors.get_or_create(&l);
                c.inc_by(stats.item_errors.saturating_sub(c.get()));
                let c = self.node_busy.get_or_create(&l);
                let more = stats.busy_s - c.get();
                if more > 0.0 {
                    c.inc_by(more);
                }
                self.node_utilization
                    .get_or_create(&l)
                    .set(stats.utilization);
            }
            let report = crate::stats::report(
                s.plan(),
                &s.node_stats(),
                s.uptime().as_secs_f64(),
                0,
                LatencyHistogram::default().stats(),
            );
            for n in report.nodes {
                for (source, v) in [
                    ("measured", n.measured.capacity_per_s),
                    ("predicted", n.predicted.capacity_per_s),
                ] {
                    if let Some(v) = v {
                        let l = vec![
                            ("pipeline", name.clone()),
                            ("node", n.id.clone()),
                            ("source", source.to_string()),
                        ];
                        self.node_capacity.get_or_create(&l).set(v);
                    }
                }
            }
        }
        let windows = self.windows.lock().map(|w| w.clone()).unwrap_or_default();
        for (name, w) in windows {
            let l = vec![("pipeline", name.clone())];
            self.offline_window.get_or_create(&l).set(w.limit() as i64);
            self.offline_in_flight
                .get_or_create(&l)
                .set(w.in_flight() as i64);
            let done = self.offline_done.get_or_create(&l);
            done.inc_by(w.done().saturating_sub(done.get()));
            let (shrinks, grows) = w.moves();
            for (dir, n) in [("shrink", shrinks), ("grow", grows)] {
                let c = self.priority_moves.get_or_create(&vec![
                    ("pipeline", name.clone()),
                    ("direction", dir.to_string()),
                ]);
                c.inc_by(n.saturating_sub(c.get()));
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

struct Observer {
    pipeline: String,
    metrics: Arc<Metrics>,
}

impl Watch for Observer {
    fn batch(&self, node: &str, items: usize) {
        let l = vec![
            ("pipeline", self.pipeline.clone()),
            ("node", node.to_string()),
        ];
        self.metrics
            .batch_size
            .get_or_create(&l)
            .observe(items as f64);
    }

    fn kv(&self, node: &str, replica: u32, used: usize, capacity: usize) {
        let l = vec![
            ("pipeline", self.pipeline.clone()),
            ("node", node.to_string()),
            ("replica", replica.to_string()),
        ];
        self.metrics.kv_used.get_or_create(&l).set(used as i64);
        self.metrics
            .kv_capacity
            .get_or_create(&l)
            .set(capacity as i64);
    }
}
