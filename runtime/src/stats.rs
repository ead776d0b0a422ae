//! What a run measured: per-node counters kept by the replica threads, and the run's summary
//! (`--stats-json` writes [`RunStats`] as JSON; the text summary is [`RunStats::summary`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One batch as a replica ran it, for the trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub replica: u32,
    /// Start, relative to the run's start.
    pub start: Duration,
    pub duration: Duration,
    pub items: u32,
    pub errors: u32,
}

/// Counters of one node, shared by its replica threads.
#[derive(Debug)]
pub struct NodeMeter {
    pub id: String,
    pub replicas: u32,
    epoch: Instant,
    keep_spans: bool,
    inner: Mutex<NodeCounts>,
    /// The continuous-batching scheduler's counters, when the node batches continuously.
    continuous: std::sync::OnceLock<Arc<crate::continuous::Counters>>,
    /// A served run's watch (`crate::watch`): told of every batch.
    watch: std::sync::OnceLock<crate::watch::WatchSlot>,
    /// The node's elastic lease, when the controller may resize it (`crate::pool`).
    lease: std::sync::OnceLock<Arc<crate::pool::Lease>>,
}

#[derive(Debug, Default, Clone)]
struct NodeCounts {
    batches: u64,
    items: u64,
    errors: u64,
    busy: Duration,
    /// Time per batch (a chunk run back to back counts as that many batches of its mean).
    batch_time: LatencyHistogram,
    spans: Vec<Span>,
}

impl NodeMeter {
    pub fn new(id: &str, replicas: u32, epoch: Instant, keep_spans: bool) -> NodeMeter {
        NodeMeter {
            id: id.to_string(),
            replicas,
            epoch,
            keep_spans,
            inner: Mutex::new(NodeCounts::default()),
            continuous: std::sync::OnceLock::new(),
            watch: std::sync::OnceLock::new(),
            lease: std::sync::OnceLock::new(),
        }
    }

    /// Let the pool controller resize this node (`crate::pool::arm`).
    pub fn attach_lease(&self, lease: Arc<crate::pool::Lease>) {
        let _ = self.lease.set(lease);
    }

    /// The node's elastic lease, when it has one.
    pub fn lease(&self) -> Option<&Arc<crate::pool::Lease>> {
        self.lease.get()
    }

    /// This node's counts as numbers, to send to another process: batches, items, errors,
    /// busy nanoseconds, then the continuous scheduler's iterations, prefilled, sequence-steps
    /// and preemptions (all 0 without one), then 1 when it has one.
    pub fn totals(&self) -> [u64; 9] {
        use std::sync::atomic::Ordering::Relaxed;
        let c = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut t = [
            c.batches,
            c.items,
            c.errors,
            u64::try_from(c.busy.as_nanos()).unwrap_or(u64::MAX),
            0,
            0,
            0,
            0,
            0,
        ];
        if let Some(k) = self.continuous.get() {
            t[4] = k.iterations.load(Relaxed);
            t[5] = k.prefilled.load(Relaxed);
            t[6] = k.stepped.load(Relaxed);
            t[7] = k.preemptions.load(Relaxed);
            t[8] = 1;
        }
        t
    }

    /// Add another process's [`NodeMeter::totals`] for this node (in a cluster, process 0
    /// reports every node).
    pub fn absorb(&self, t: [u64; 9]) {
        use std::sync::atomic::Ordering::Relaxed;
        {
            let mut c = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            c.batches += t[0];
            c.items += t[1];
            c.errors += t[2];
            c.busy += Duration::from_nanos(t[3]);
        }
        if t[8] == 1 {
            let k = self.continuous.get_or_init(Default::default);
            k.iterations.fetch_add(t[4], Relaxed);
            k.prefilled.fetch_add(t[5], Relaxed);
            k.stepped.fetch_add(t[6], Relaxed);
            k.preemptions.fetch_add(t[7], Relaxed);
        }
    }

    /// Report the continuous-batching scheduler's counters with this node's stats.
    pub fn watch_continuous(&self, counters: Arc<crate::continuous::Counters>) {
        let _ = self.continuous.set(counters);
    }

    /// Whether spans are kept (a traced run): then every batch is recorded on its own.
    pub fn keeps_spans(&self) -> bool {
        self.keep_spans
    }

    /// Tell `watch` of this node's batches (a served run; see `crate::watch`).
    pub fn attach_watch(&self, watch: Arc<dyn crate::watch::Watch>) {
        let _ = self.watch.set(crate::watch::WatchSlot(watch));
    }

    /// The served run's watch, when there is one.
    pub fn watch(&self) -> Option<&Arc<dyn crate::watch::Watch>> {
        self.watch.get().map(|w| &w.0)
    }

    /// Record one finished batch.
    pub fn batch(&self, replica: u32, start: Instant, end: Instant, items: usize, errors: usize) {
        self.batches(replica, start, end, 1, items, errors);
    }

    /// Record `batches` batches run back to back between `start` and `end` (a chunk of items
    /// run one at a time, or an inline node's batches of one container), `items` in all.
    pub fn batches(
        &self,
        replica: u32,
        start: Instant,
        end: Instant,
        batches: usize,
        items: usize,
        errors: usize,
    ) {
        if let Some(w) = self.watch.get() {
            w.0.batch(&self.id, items);
        }
        let mut c = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.batches += batches as u64;
        c.items += items as u64;
        c.errors += errors as u64;
        let duration = end.saturating_duration_since(start);
        c.busy += duration;
        if batches > 0 {
            c.batch_time.record_n(
                duration / batches.min(u32::MAX as usize) as u32,
                batches as u64,
            );
        }
        if self.keep_spans {
            c.spans.push(Span {
                replica,
                start: start.saturating_duration_since(self.epoch),
                duration,
                items: items as u32,
                errors: errors as u32,
            });
        }
    }

    /// The spans recorded so far (empty unless spans are kept).
    pub fn spans(&self) -> Vec<Span> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .spans
            .clone()
    }

    /// The node's line of the summary over a run of `wall` time.
    pub fn stats(&self, wall: Duration) -> NodeStats {
        let c = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let elastic = crate::pool::node_report(self);
        let capacity = match &elastic {
            Some(e) if e.replica_s > 0.0 => e.replica_s,
            _ => wall.as_secs_f64() * f64::from(self.replicas.max(1)),
        };
        NodeStats {
            replicas: self.replicas,
            batches: c.batches,
            items: c.items,
            item_errors: c.errors,
            mean_batch: if c.batches == 0 {
                0.0
            } else {
                round3(c.items as f64 / c.batches as f64)
            },
            busy_s: round3(c.busy.as_secs_f64()),
            batch_ms: c.batch_time.stats(),
            utilization: if capacity > 0.0 {
                round3((c.busy.as_secs_f64() / capacity).min(1.0))
            } else {
                0.0
            },
            continuous: self.continuous.get().map(|k| {
                use std::sync::atomic::Ordering::Relaxed;
                ContinuousStats {
                    iterations: k.iterations.load(Relaxed),
                    prefilled: k.prefilled.load(Relaxed),
                    mean_running: round3(k.mean_running()),
                    preemptions: k.preemptions(),
                }
            }),
            elastic,
        }
    }
}

/// One node's summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStats {
    pub replicas: u32,
    pub batches: u64,
    /// Items run (a map node counts elements).
    pub items: u64,
    /// Items the node failed.
    pub item_errors: u64,
    pub mean_batch: f64,
    /// Time the replicas spent running batches, summed over replicas.
    pub busy_s: f64,
    /// Time per batch, as the replicas measured it (in a cluster: process 0's replicas).
    pub batch_ms: LatencyStats,
    /// `busy_s / (replicas × wall_s)`.
    pub utilization: f64,
    /// For a node that batched continuously (chapter 6): its scheduler's counters. There a
    /// "batch" is one scheduler iteration and `items` the sequences that finished in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuous: Option<ContinuousStats>,
    /// For an elastic node (SPEC 10): its range and the replicas it had; `utilization` is then
    /// over its active replica-seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elastic: Option<crate::pool::NodeElastic>,
}

/// What the continuous-batching scheduler of a node did, over all its replicas.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContinuousStats {
    /// Scheduler iterations that prefilled or stepped something.
    pub iterations: u64,
    /// Sequences prefilled, recomputations after a preemption included.
    pub prefilled: u64,
    /// Mean number of sequences running per iteration.
    pub mean_running: f64,
    /// Running sequences preempted to keep the KV bound (`kv_tokens`).
    pub preemptions: u64,
}

/// Request latency from admission to the last output, over successful requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyStats {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// The summary of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunStats {
    pub pipeline: String,
    /// Input lines read (each yields exactly one output line).
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub wall_s: f64,
    /// Requests written per second of wall time.
    pub throughput: f64,
    /// Requests written per second while the pipeline was full (between 10% and 90% of the
    /// records: no start-up fill, no drain), the figure to compare with a saturation
    /// prediction; absent in runs under 20,480 records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steady_throughput: Option<f64>,
    /// The plan's predicted throughput, for comparison.
    pub predicted_throughput: f64,
    pub latency: LatencyStats,
    /// Error records by the node that failed them (`input` for malformed lines, `output` for
    /// results with no JSON encoding).
    pub errors_by_node: BTreeMap<String, u64>,
    pub nodes: BTreeMap<String, NodeStats>,
    /// Set when `--fail-fast` stopped the run: the first error's request id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<u64>,
    /// Peak resident memory of the process (VmHWM), in MiB, where the OS reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// What the elastic controller did, when some node was elastic (SPEC 10.3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elastic: Option<crate::pool::ElasticStats>,
    /// What the priority controller did to this offline run's window (SPEC 10.8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<crate::pool::priority::PriorityStats>,
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Latencies in a log-linear histogram (relative error under 1%), so that a run's memory does
/// not grow with its length: the buckets grow only up to the largest value seen (at most 8,192
/// of them, 64 KiB; a few KiB for values of milliseconds). Values are recorded in microseconds.
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    n: u64,
    sum_us: f64,
    max_us: u64,
}

const SUB: u64 = 128;

impl LatencyHistogram {
    fn bucket(us: u64) -> usize {
        if us < SUB {
            return us as usize;
        }
        let shift = 63 - us.leading_zeros() as u64 - 7;
        ((shift + 1) * SUB + ((us >> shift) - SUB)) as usize
    }

    /// The middle of a bucket, in microseconds.
    fn value(bucket: usize) -> f64 {
        let b = bucket as u64;
        if b < SUB {
            return b as f64;
        }
        let shift = b / SUB - 1;
        let low = (b % SUB + SUB) << shift;
        low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
    }

    pub fn record(&mut self, d: Duration) {
        self.record_n(d, 1);
    }

    /// Record `n` values of `d`.
    pub fn record_n(&mut self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let us = d.as_micros().min(u128::from(u64::MAX / 2)) as u64;
        let b = Self::bucket(us);
        if b >= self.counts.len() {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += n;
        self.n += n;
        self.sum_us += us as f64 * n as f64;
        self.max_us = self.max_us.max(us);
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Nearest-rank percentile in microseconds.
    fn rank(&self, q: f64) -> f64 {
        let want = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Self::value(b).min(self.max_us as f64);
            }
        }
        self.max_us as f64
    }

    pub fn stats(&self) -> LatencyStats {
        if self.n == 0 {
            return LatencyStats {
                p50_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
                mean_ms: 0.0,
            };
        }
        LatencyStats {
            p50_ms: round3(self.rank(0.50) / 1000.0),
            p99_ms: round3(self.rank(0.99) / 1000.0),
            max_ms: round3(self.max_us as f64 / 1000.0),
            mean_ms: round3(self.sum_us / self.n as f64 / 1000.0),
        }
    }
}

/// The process's peak resident set size in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(round3(kb / 1024.0))
}

impl RunStats {
    /// The human-readable summary `marsc run` prints.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} requests in {:.2}s: {} ok, {} errors; {:.1} req/s (plan predicted {:.1})",
            self.pipeline,
            self.requests,
            self.wall_s,
            self.ok,
            self.errors,
            self.throughput,
            self.predicted_throughput
        );
        if let Some(steady) = self.steady_throughput {
            let _ = writeln!(
                s,
                "steady: {steady:.1} req/s while the pipeline was full (10%–90% of the records; {:.3} of the prediction)",
                steady / self.predicted_throughput.max(1e-9)
            );
        }
        let _ = writeln!(
            s,
            "latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.latency.p50_ms, self.latency.p99_ms, self.latency.max_ms
        );
        if !self.errors_by_node.is_empty() {
            let parts: Vec<String> = self
                .errors_by_node
                .iter()
                .map(|(n, c)| format!("{n}: {c}"))
                .collect();
            let _ = writeln!(s, "errors by node: {}", parts.join(", "));
        }
        let width = self.nodes.keys().map(String::len).max().unwrap_or(4).max(4);
        let _ = writeln!(
            s,
            "{:<width$}  replicas  batches  mean batch  utilization",
            "node"
        );
        for (id, n) in &self.nodes {
            let _ = writeln!(
                s,
                "{:<width$}  {:>8}  {:>7}  {:>10.2}  {:>10.1}%",
                id,
                n.replicas,
                n.batches,
                n.mean_batch,
                n.utilization * 100.0
            );
        }
        for (id, n) in &self.nodes {
            if let Some(c) = &n.continuous {
                let _ = writeln!(
                    s,
                    "{id}: continuous batching, {} iterations, {:.2} sequences running on average, {} prefilled, {} preempted",
                    c.iterations, c.mean_running, c.prefilled, c.preemptions
                );
            }
        }
        if let Some(e) = &self.elastic {
            let _ = writeln!(
                s,
                "elastic: {} moves in {} ticks ({} grows, {} transfers)",
                e.moves, e.ticks, e.grows, e.transfers
            );
            for m in &e.log {
                let from = m
                    .from
                    .as_ref()
                    .map(|f| format!("{f} → "))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {:>7.2}s {} {from}{}: {}",
                    m.at_s, m.kind, m.to, m.reason
                );
            }
        }
        if let Some(p) = &self.priority {
            let _ = writeln!(
                s,
                "priority: offline window {} at the end ({}..={}), {} moves ({} shrinks, {} grows), {:.1} core-seconds lent{}",
                p.window,
                p.fewest,
                p.most,
                p.moves,
                p.shrinks,
                p.grows,
                p.window_s,
                if p.stopped { "; stopped before the input ended (rerun with resume)" } else { "" }
            );
        }
        if let Some(id) = self.stopped_at {
            let _ = writeln!(
                s,
                "stopped at the first error (request {id}) because of --fail-fast"
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_within_one_percent() {
        let mut h = LatencyHistogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let l = h.stats();
        assert!((l.p50_ms - 50.0).abs() <= 0.5, "{l:?}");
        assert!((l.p99_ms - 99.0).abs() <= 0.99, "{l:?}");
        assert_eq!((l.max_ms, l.mean_ms), (100.0, 50.5));
        assert_eq!(LatencyHistogram::default().stats().max_ms, 0.0);
        let mut small = LatencyHistogram::default();
        small.record(Duration::from_micros(37));
        assert_eq!(small.stats().p50_ms, 0.037);
    }

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in (0..5_000_000u64).step_by(997) {
            let b = LatencyHistogram::bucket(us);
            assert!(b >= last);
            last = b;
            let v = LatencyHistogram::value(b);
            assert!(
                (v - us as f64).abs() <= us as f64 / 100.0 + 0.5,
                "{us} -> {v}"
            );
        }
    }

    #[test]
    fn meter_counts_batches_and_utilization() {
        let t0 = Instant::now();
        let m = NodeMeter::new("a", 2, t0, true);
        m.batch(0, t0, t0 + Duration::from_millis(500), 4, 1);
        m.batch(1, t0, t0 + Duration::from_millis(500), 2, 0);
        let s = m.stats(Duration::from_secs(1));
        assert_eq!(
            (
                s.batches,
                s.items,
                s.item_errors,
                s.mean_batch,
                s.utilization
            ),
            (2, 6, 1, 3.0, 0.5)
        );
        assert_eq!(m.spans().len(), 2);
        assert_eq!((s.batch_ms.p50_ms, s.batch_ms.max_ms), (500.0, 500.0));
        // A chunk of 4 batches run back to back in 8 ms: four batches of 2 ms.
        let m = NodeMeter::new("b", 1, t0, false);
        m.batches(0, t0, t0 + Duration::from_millis(8), 4, 4, 0);
        m.batch(0, t0, t0 + Duration::from_millis(20), 1, 0);
        let s = m.stats(Duration::from_secs(1));
        assert_eq!(s.batches, 5);
        assert!((s.batch_ms.p50_ms - 2.0).abs() < 0.02, "{:?}", s.batch_ms);
        assert_eq!((s.batch_ms.max_ms, s.batch_ms.mean_ms), (20.0, 5.6));
    }

    #[test]
    fn histograms_grow_only_to_the_largest_value() {
        let mut h = LatencyHistogram::default();
        assert!(h.is_empty() && h.counts.is_empty());
        h.record_n(Duration::from_millis(3), 10);
        assert!(h.counts.len() < 1024, "{}", h.counts.len());
        assert_eq!(h.len(), 10);
        assert!((h.stats().p99_ms - 3.0).abs() < 0.03);
        h.record(Duration::from_secs(100_000));
        assert!(h.counts.len() <= (64 * SUB) as usize);
        assert!((h.stats().p50_ms - 3.0).abs() < 0.03);
    }
}
