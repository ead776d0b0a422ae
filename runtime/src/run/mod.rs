//! Running a plan: [`run_plan`] reads JSONL requests, runs them through the plan's timely
//! dataflow and writes one JSONL record per request; [`run_peer`] runs another process of a
//! cluster (see [`crate::cluster`]).
//!
//! Threads: the caller's thread writes output; a reader thread parses input; `workers` timely
//! worker threads run the dataflow (worker 0 holds the source and the sink); each node has
//! `replicas` threads of its own (see [`crate::replicas`]).
//!
//! ```
//! use std::sync::Arc;
//! use mars_runtime::{node::per_item, run_plan, NodeContext, Registry, RunOptions, Value};
//!
//! // A builtin of our own: doubles an Int.
//! let mut registry = Registry::new();
//! registry.builtin("demo.double", Arc::new(|_: &NodeContext| {
//!     Ok(per_item(|item| match item.first() {
//!         Some(Value::Int(i)) => Ok(vec![Value::Int(i * 2)]),
//!         _ => Err(mars_runtime::NodeError::new("expected an Int")),
//!     }))
//! }));
//! let plan = mars_plan::Plan::from_yaml(r#"
//! mars_plan: 1
//! mars_version: 0.1.0
//! pipeline: demo
//! inputs_of_plan: {source: demo.mars, source_hash: "sha256:0"}
//! inputs: [{name: x, type: Int}]
//! outputs: [{name: y, type: Int, from: {node: d}}]
//! nodes:
//!   - id: d
//!     kind: double
//!     implementation: {builtin: demo.double}
//!     args: [{input: x}]
//!     in_types: [Int]
//!     out_types: [Int]
//!     device: cpu
//!     worker: local
//!     replicas: 2
//!     batch: {policy: dynamic, max: 8, wait_ms: 1.0}
//!     predicted: {latency_ms: 1.0, p99_ms: 1.0, throughput: 1000.0, utilization: 0.1}
//! predicted: {throughput: 1000.0, latency_p50_ms: 1.0, latency_p99_ms: 1.0, bottleneck: d}
//! "#, "demo.plan.yaml").unwrap();
//!
//! let input = "{\"x\": 1}\n{\"x\": \"one\"}\n{\"x\": 3}\n";
//! let mut output = Vec::new();
//! let opts = RunOptions { ordered: true, ..RunOptions::default() };
//! let report = run_plan(&plan, std::path::Path::new("."), &registry, opts, input.as_bytes(), &mut output).unwrap();
//! let text = String::from_utf8(output).unwrap();
//! let lines: Vec<&str> = text.lines().collect();
//! assert!(lines[0].starts_with(r#"{"id":1,"ok":{"y":2},"latency_ms":"#));
//! assert_eq!(lines[1], r#"{"id":2,"error":{"node":"input","message":"field `x`: expected Int, got `\"one\"`"}}"#);
//! assert!(lines[2].starts_with(r#"{"id":3,"ok":{"y":6}"#));
//! assert_eq!((report.stats.ok, report.stats.errors), (2, 1));
//! ```

pub mod images;
pub mod reader;
pub mod service;
pub mod writer;

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::Sender;
use mars_plan::Plan;
use timely::dataflow::operators::Concatenate;
use timely::{CommunicationConfig, WorkerConfig};

use crate::cluster::{self, Cluster};
use crate::codec::EdgeContext;
use crate::dataflow::sink::{output_sink, Outcome};
use crate::dataflow::source::{request_source, Feed, Flow, Request, ROUND};
use crate::dataflow::stage::node_stage;
use crate::dataflow::Lowered;
use crate::node::{Node, NodeContext, Registry};
use crate::stats::{peak_rss_mib, round3, NodeMeter, RunStats};

pub use writer::{Progress, ProgressFn};

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    /// Timely worker threads (per process, in a cluster; at least 1).
    pub workers: usize,
    /// At most this many requests inside the dataflow at once.
    pub max_inflight: usize,
    /// At most this many bytes of request values inside the dataflow at once (SPEC 7.3).
    pub max_inflight_bytes: usize,
    /// Write records in input order instead of completion order.
    pub ordered: bool,
    /// Stop admitting requests at the first error record.
    pub fail_fast: bool,
    /// Record one span per batch for [`RunReport::trace`].
    pub trace: bool,
    /// The folder `{"$file": …}` inputs resolve against (the input file's folder); files
    /// inside it may be read.
    pub input_dir: Option<PathBuf>,
    /// Further folders `{"$file": …}` inputs may read from (`--allow-files`; SPEC 7.2).
    pub allow_files: Vec<PathBuf>,
    /// Called about every 100 ms with the run's progress.
    pub progress: Option<Arc<ProgressFn>>,
    /// Run as one process of a cluster.
    pub cluster: Option<Cluster>,
    /// Input ids (line numbers) not to run: they already have records (`--resume`).
    pub skip: Arc<HashSet<u64>>,
    /// In a cluster: how long to wait for every process to connect before giving up with an
    /// error naming the hosts (timely itself would wait forever).
    pub connect_timeout: std::time::Duration,
    /// Write `Bytes` and `Image` outputs as files in this folder (which must exist) and put
    /// `{"$file": "FOLDER/ID-OUTPUT.EXT"}` in the records instead of base64.
    pub files_dir: Option<PathBuf>,
    /// In a cluster: a peer whose heartbeat is silent this long fails the run
    /// ([`RunError::Cluster`]).
    pub peer_timeout: std::time::Duration,
    /// Let the pool controller move replicas within each node's `replica_range` (SPEC 10).
    pub elastic: bool,
    /// An offline run's admission window, moved by a priority controller (SPEC 10.8). A run
    /// whose window is stopped ends once the requests inside are written, as `--fail-fast`
    /// does; the rest of the input is left for `--resume`.
    pub window: Option<Arc<crate::pool::priority::Window>>,
}

/// The default bound on requests in flight.
pub const DEFAULT_MAX_INFLIGHT: usize = 8192;

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            workers: 1,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_inflight_bytes: crate::dataflow::source::MAX_INFLIGHT_BYTES,
            ordered: false,
            fail_fast: false,
            trace: false,
            input_dir: None,
            allow_files: Vec::new(),
            progress: None,
            cluster: None,
            skip: Arc::new(HashSet::new()),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            files_dir: None,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            elastic: false,
            window: None,
        }
    }
}

/// The default for [`RunOptions::peer_timeout`].
pub const DEFAULT_PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The default for [`RunOptions::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a run reports.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub stats: RunStats,
    /// The Chrome trace, when [`RunOptions::trace`] was set.
    pub trace: Option<serde_json::Value>,
}

/// Why a run could not start or finish. Per-request failures are not errors: they are records.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the plan cannot run: {0}")]
    Plan(String),
    #[error("cannot build node `{node}`: {message}")]
    Build { node: String, message: String },
    #[error("reading input: {0}")]
    Input(std::io::Error),
    #[error("writing output: {0}")]
    Output(std::io::Error),
    #[error("the runtime failed: {0}")]
    Runtime(String),
    /// The cluster did not form, or a peer was lost or stalled (SPEC 3.10).
    #[error("{}", .0.message)]
    Cluster(cluster::health::Failure),
}

/// The built replicas of one node.
type Replicas = Vec<Box<dyn Node>>;

/// Build every replica of the nodes this process runs (`None` for the others), in plan order.
fn build_replicas(
    plan: &Plan,
    base_dir: &Path,
    registry: &Registry,
    mine: impl Fn(usize) -> bool,
    meters: &[Arc<NodeMeter>],
) -> Result<Vec<Option<Replicas>>, RunError> {
    let mut gpus: Option<Result<Vec<crate::gpu::GpuInfo>, String>> = None;
    for (i, node) in plan.nodes.iter().enumerate() {
        if !mine(i) || node.device != mars_plan::Device::Gpu {
            continue;
        }
        let gpu = node.gpu.as_deref().unwrap_or("a GPU");
        match gpus.get_or_insert_with(crate::gpu::probe) {
            Err(why) => {
                return Err(RunError::Build {
                    node: node.id.clone(),
                    message: format!(
                        "the plan places it on {gpu}, but {why}; compile the plan for a target without GPUs, or run it where a GPU is"
                    ),
                })
            }
            Ok(found) => tracing::warn!(
                node = %node.id,
                "placed on {gpu} ({} GPU(s) found, first {}); it runs on the CPU: this runtime has no CUDA kernels yet",
                found.len(),
                found.first().map_or("?", |g| g.name.as_str())
            ),
        }
    }
    plan.nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            if !mine(i) {
                return Ok(None);
            }
            (0..crate::pool::replicas_to_build(plan, meters, i))
                .map(|replica| {
                    let ctx = NodeContext {
                        node: crate::pool::with_gpu_share(plan, i),
                        replica,
                        base_dir: base_dir.to_path_buf(),
                    };
                    registry.instantiate(&ctx).map_err(|e| RunError::Build {
                        node: node.id.clone(),
                        message: e.message,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        })
        .collect()
}

pub(crate) type Guards = timely::communication::initialize::WorkerGuards<Result<(), String>>;

/// The running workers of this process, and in a cluster the watch on its peers.
pub(crate) struct Launched {
    pub(crate) guards: Guards,
    health: Option<cluster::health::Health>,
}

/// Start this process's timely workers on the plan. `feed` and `out` are used by global worker
/// 0 only (process 0).
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch(
    plan: &Plan,
    base_dir: &Path,
    registry: &Registry,
    opts: &RunOptions,
    lowered: &Arc<Lowered>,
    meters: &Arc<Vec<Arc<NodeMeter>>>,
    feed: Option<Feed>,
    out: Sender<Outcome>,
) -> Result<Launched, RunError> {
    let threads = opts.workers.max(1);
    let (process, hosts) = match &opts.cluster {
        None => (0, Vec::new()),
        Some(c) => {
            if c.process >= c.hosts.len() {
                return Err(RunError::Runtime(format!(
                    "process {} of a cluster of {} hosts",
                    c.process,
                    c.hosts.len()
                )));
            }
            (c.process, c.hosts.clone())
        }
    };
    let processes = hosts.len().max(1);
    let owners = Arc::new(cluster::placement(plan, processes, threads));
    let mine = |i: usize| owners[i] / threads == process;
    if opts.elastic {
        crate::pool::arm(plan, meters, mine);
    }
    let replicas = build_replicas(plan, base_dir, registry, mine, meters)?;
    let replicas = Arc::new(Mutex::new(replicas));
    let feed = Arc::new(Mutex::new(feed));
    let fingerprint = format!(
        "{}, {threads} threads per process",
        cluster::fingerprint(plan)
    );
    let in_cluster = opts.cluster.is_some();
    let max_inflight = opts.max_inflight.max(1);
    let max_bytes = opts.max_inflight_bytes.max(1);
    let lowered = Arc::clone(lowered);
    let meters_handle = Arc::clone(meters);
    let meters = Arc::clone(meters);
    // In a cluster, the processes connect and authenticate each other before timely starts.
    let (builders, comms, health) = match &opts.cluster {
        None => {
            let (b, o) = CommunicationConfig::Process(threads)
                .try_build()
                .map_err(RunError::Runtime)?;
            (b, o, None)
        }
        Some(c) => {
            let joined = cluster::Joining {
                cluster: c,
                threads,
                fingerprint: fingerprint.clone(),
                connect_timeout: opts.connect_timeout,
                peer_timeout: opts.peer_timeout,
            }
            .join()
            .map_err(RunError::Cluster)?;
            (joined.builders, joined.comms, Some(joined.health))
        }
    };
    let guards =
        timely::execute::execute_from(builders, comms, WorkerConfig::default(), move |worker| {
            if in_cluster {
                cluster::agree(worker, &fingerprint, threads, &hosts)?;
            }
            let index = worker.index();
            let feed = if index == 0 {
                feed.lock().ok().and_then(|mut f| f.take())
            } else {
                None
            };
            let out = out.clone();
            worker.dataflow::<u64, _, _>(|scope| {
                let flow = Rc::new(Flow::default());
                let mut streams = vec![request_source(
                    scope,
                    feed,
                    Rc::clone(&flow),
                    max_inflight,
                    max_bytes,
                )];
                for (i, spec) in lowered.nodes.iter().enumerate() {
                    let input = if spec.deps.len() == 1 {
                        streams[spec.deps[0] as usize].clone()
                    } else {
                        scope.concatenate(spec.deps.iter().map(|&d| streams[d as usize].clone()))
                    };
                    let owner = owners[i];
                    let nodes = if owner == index {
                        replicas
                            .lock()
                            .ok()
                            .and_then(|mut r| r.get_mut(i).and_then(Option::take))
                    } else {
                        None
                    };
                    let stream = node_stage(
                        input,
                        spec.clone(),
                        i as u32 + 1,
                        owner,
                        nodes,
                        Arc::clone(&meters[i]),
                    );
                    streams.push(stream);
                }
                let deps = &lowered.sink_deps;
                let input = if deps.len() == 1 {
                    streams[deps[0] as usize].clone()
                } else {
                    scope.concatenate(deps.iter().map(|&d| streams[d as usize].clone()))
                };
                output_sink(input, deps.clone(), lowered.outputs.clone(), flow, out);
            });
            while worker.step_or_park(None) {}
            if in_cluster {
                cluster::gather_stats(worker, &meters, &owners, threads);
            }
            Ok(())
        })
        .map_err(RunError::Runtime)?;
    crate::pool::start(plan, &meters_handle);
    Ok(Launched { guards, health })
}

/// In a cluster, records reach the writer through this relay, which stops at the first
/// cluster failure (a lost or stalled peer) so that the writer returns instead of waiting for
/// records that will never come. After a failure it also sets `stop` and drains the request
/// queue until the run's threads are done, so that a reader blocked on a full queue returns.
fn relay_unless_failed(
    health: &cluster::health::Health,
    from: crossbeam_channel::Receiver<Outcome>,
    requests: crossbeam_channel::Receiver<Request>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
) -> crossbeam_channel::Receiver<Outcome> {
    let (to, rx) = crossbeam_channel::unbounded::<Outcome>();
    let failed = health.failed().clone();
    let _ = std::thread::Builder::new()
        .name("mars:cluster-relay".into())
        .spawn(move || {
            loop {
                crossbeam_channel::select! {
                    recv(from) -> o => match o {
                        Ok(o) => if to.send(o).is_err() { return },
                        Err(_) => return,
                    },
                    recv(failed) -> _ => break,
                }
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            drop(to);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = requests.recv_timeout(std::time::Duration::from_millis(50));
            }
        });
    rx
}

pub(crate) fn join(guards: Guards) -> Result<(), RunError> {
    for result in guards.join() {
        result
            .map_err(RunError::Runtime)?
            .map_err(RunError::Runtime)?;
    }
    Ok(())
}

pub(crate) fn meters_of(plan: &Plan, start: Instant, trace: bool) -> Arc<Vec<Arc<NodeMeter>>> {
    Arc::new(
        plan.nodes
            .iter()
            .map(|n| Arc::new(NodeMeter::new(&n.id, n.replicas, start, trace)))
            .collect(),
    )
}

/// Run a process other than process 0 of a cluster: it runs its nodes and exits when the run
/// is over. Reads no input and writes no output.
pub fn run_peer(
    plan: &Plan,
    base_dir: &Path,
    registry: &Registry,
    opts: RunOptions,
) -> Result<(), RunError> {
    match &opts.cluster {
        Some(c) if c.process > 0 => {}
        _ => {
            return Err(RunError::Runtime(
                "run_peer runs processes 1.. of a cluster; process 0 uses run_plan".into(),
            ))
        }
    }
    let cx = EdgeContext {
        base_dir: opts.input_dir.clone(),
        images: None,
        allow: opts.allow_files.clone(),
    };
    let lowered = Arc::new(Lowered::from_plan(plan, &cx).map_err(RunError::Plan)?);
    let meters = meters_of(plan, Instant::now(), false);
    let (out_tx, _out_rx) = crossbeam_channel::unbounded();
    let Launched { guards, health } = launch(
        plan, base_dir, registry, &opts, &lowered, &meters, None, out_tx,
    )?;
    let Some(health) = health else {
        return join(guards);
    };
    // Wait for the workers or the first cluster failure, whichever comes first; after a
    // failure the workers are left to end with the process.
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let _ = std::thread::Builder::new()
        .name("mars:cluster-join".into())
        .spawn(move || {
            let _ = done_tx.send(join(guards));
        });
    crossbeam_channel::select! {
        recv(done) -> r => {
            health.finish();
            r.unwrap_or_else(|_| Err(RunError::Runtime("the workers' joiner failed".into())))
        }
        recv(health.failed()) -> _ => Err(RunError::Cluster(health.failure().unwrap_or(cluster::health::Failure {
            code: cluster::health::LOST,
            message: "the cluster failed".into(),
        }))),
    }
}

/// Run `plan` over the JSONL requests of `input`, writing one JSONL record per request to
/// `output`. `base_dir` is where the plan's relative paths (exec commands, weights) resolve.
/// In a cluster, this is process 0.
pub fn run_plan(
    plan: &Plan,
    base_dir: &Path,
    registry: &Registry,
    opts: RunOptions,
    input: impl BufRead + Send,
    output: &mut dyn Write,
) -> Result<RunReport, RunError> {
    if opts.cluster.as_ref().is_some_and(|c| c.process != 0) {
        return Err(RunError::Runtime(
            "only process 0 of a cluster reads input; use run_peer".into(),
        ));
    }
    let cx = EdgeContext {
        base_dir: opts.input_dir.clone(),
        images: images::from_registry(registry, base_dir),
        allow: opts.allow_files.clone(),
    };
    let lowered = Arc::new(Lowered::from_plan(plan, &cx).map_err(RunError::Plan)?);
    let meters = meters_of(plan, Instant::now(), opts.trace);

    let (req_tx, req_rx) = crossbeam_channel::bounded::<Request>(2 * ROUND);
    let (out_tx, out_rx) = crossbeam_channel::unbounded::<Outcome>();
    let (act_tx, act_rx) = crossbeam_channel::bounded(1);
    let wake = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Kept to unblock the reader after a cluster failure (see `relay_unless_failed`).
    let req_drain = req_rx.clone();
    let feed = Feed {
        requests: req_rx,
        wake: Arc::clone(&wake),
        stop: Arc::clone(&stop),
        activator: act_tx,
        watch: None,
        window: opts.window.clone(),
    };
    let Launched { guards, health } = launch(
        plan,
        base_dir,
        registry,
        &opts,
        &lowered,
        &meters,
        Some(feed),
        out_tx.clone(),
    )?;
    let reader_out = out_tx;
    let scope_done = Arc::new(AtomicBool::new(false));
    let out_rx = match &health {
        Some(h) => relay_unless_failed(
            h,
            out_rx,
            req_drain,
            Arc::clone(&stop),
            Arc::clone(&scope_done),
        ),
        None => {
            // Only a cluster needs the drain: holding it would keep the request channel open
            // after the source has stopped (`--fail-fast`), and the reader would block on a
            // full channel forever.
            drop(req_drain);
            out_rx
        }
    };

    let Ok(source) = act_rx.recv() else {
        drop(reader_out);
        join(guards)?;
        return Err(RunError::Runtime("worker 0 did not start".into()));
    };
    // The clock of throughput and progress starts once the dataflow is built (in a cluster:
    // once every process is connected and agrees on the plan).
    let start = Instant::now();

    let output_names: Vec<String> = lowered.outputs.iter().map(|o| o.name.clone()).collect();
    let (read, written) = std::thread::scope(|s| {
        let reader = {
            let link = reader::ReaderLink {
                inputs: &lowered.inputs,
                cx: &cx,
                requests: req_tx,
                outcomes: reader_out,
                wake: &wake,
                source: &source,
                stop: &stop,
                skip: &opts.skip,
            };
            s.spawn(move || reader::read_requests(input, link))
        };
        let written = writer::write_outcomes(
            out_rx,
            output,
            writer::WriterLink {
                output_names,
                cx: &cx,
                ordered: opts.ordered,
                fail_fast: opts.fail_fast,
                stop: &stop,
                source: &source,
                progress: opts.progress.as_deref(),
                start,
                check_ids: true,
                skip: &opts.skip,
                files_dir: opts.files_dir.as_deref(),
            },
        );
        if written.is_err() {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = source.activate();
        }
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the reader thread panicked")));
        (read, written)
    });
    let wall = start.elapsed();
    scope_done.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(h) = &health {
        if let Some(why) = h.failure() {
            // The dataflow cannot finish without the lost peer: its threads are left to end
            // with the process, which is what a caller does with this error.
            std::mem::forget(guards);
            return Err(RunError::Cluster(why));
        }
    }
    let written = match written {
        Ok(w) => w,
        Err(e) => {
            // Nothing can be written any more (a full disk, a closed pipe): do not wait for
            // the requests in flight to drain through the pipeline. The dataflow's threads are
            // left to end with the process, which is what a caller does with this error.
            std::mem::forget(guards);
            return Err(RunError::Output(e));
        }
    };
    join(guards)?;
    if let Some(h) = &health {
        h.finish();
    }
    let (lines, skipped) = read.map_err(RunError::Input)?;
    let stopped = opts.window.as_ref().is_some_and(|w| w.stopped());
    // A stopped window leaves requests read but never admitted: they have no records, and
    // count as not read (a later `--resume` runs them).
    let requests = if stopped {
        written.records
    } else {
        lines - skipped
    };
    if written.stopped_at.is_none() && written.records != requests {
        return Err(RunError::Runtime(format!(
            "{requests} requests read but {} records written; this is a bug in the runtime",
            written.records
        )));
    }

    let stats = RunStats {
        pipeline: plan.pipeline.clone(),
        requests,
        ok: written.ok,
        errors: written.errors,
        wall_s: round3(wall.as_secs_f64()),
        throughput: if wall.as_secs_f64() > 0.0 {
            round3(written.records as f64 / wall.as_secs_f64())
        } else {
            0.0
        },
        predicted_throughput: plan.predicted.throughput,
        latency: written.latency.stats(),
        errors_by_node: written.errors_by_node,
        nodes: meters
            .iter()
            .map(|m| (m.id.clone(), m.stats(wall)))
            .collect(),
        stopped_at: written.stopped_at,
        peak_rss_mib: peak_rss_mib(),
        elastic: crate::pool::report(&meters),
        priority: opts.window.as_ref().map(|w| w.report()),
    };
    let trace = opts
        .trace
        .then(|| crate::trace::chrome_trace(&plan.pipeline, &meters));
    Ok(RunReport { stats, trace })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::per_item;
    use crate::value::{NodeError, Value};
    use mars_plan::{
        Arg, BatchPolicy, BatchSpec, Device, Implementation, NodePrediction, PipelinePrediction,
        PlanInput, PlanNode, PlanOrigin, PlanOutput,
    };

    fn int(item: &[Value], k: usize) -> Result<i64, NodeError> {
        match item.get(k) {
            Some(Value::Int(i)) => Ok(*i),
            other => Err(NodeError::new(format!("expected Int, got {other:?}"))),
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.builtin(
            "t.inc",
            Arc::new(|_: &NodeContext| Ok(per_item(|it| Ok(vec![Value::Int(int(&it, 0)? + 1)])))),
        );
        r.builtin(
            "t.double",
            Arc::new(|_: &NodeContext| Ok(per_item(|it| Ok(vec![Value::Int(int(&it, 0)? * 2)])))),
        );
        r.builtin(
            "t.add",
            Arc::new(|_: &NodeContext| {
                Ok(per_item(|it| {
                    Ok(vec![Value::Int(int(&it, 0)? + int(&it, 1)?)])
                }))
            }),
        );
        r.builtin(
            "t.odd_fails",
            Arc::new(|_: &NodeContext| {
                Ok(per_item(|it| {
                    let i = int(&it, 0)?;
                    if i % 2 == 1 {
                        Err(NodeError::new(format!("{i} is odd")))
                    } else {
                        Ok(vec![Value::Int(i)])
                    }
                }))
            }),
        );
        r.builtin(
            "t.panics_on_7",
            Arc::new(|_: &NodeContext| {
                Ok(per_item(|it| {
                    let i = int(&it, 0)?;
                    assert!(i != 7, "seven");
                    Ok(vec![Value::Int(i)])
                }))
            }),
        );
        r
    }

    fn node(id: &str, builtin: &str, args: Vec<Arg>, batch: BatchSpec, replicas: u32) -> PlanNode {
        PlanNode {
            id: id.into(),
            kind: builtin.into(),
            implementation: Implementation {
                builtin: Some(builtin.into()),
                exec: None,
                model: None,
            },
            map_over: None,
            in_types: vec!["Int".into(); args.len()],
            args,
            params: Default::default(),
            out_types: vec!["Int".into()],
            device: Device::Cpu,
            worker: "w0".into(),
            gpu: None,
            replicas,
            replica_range: None,
            batch,
            timeout_ms: None,
            predicted: NodePrediction {
                latency_ms: 0.0,
                p99_ms: 0.0,
                throughput: 0.0,
                utilization: 0.0,
            },
        }
    }

    fn none() -> BatchSpec {
        BatchSpec {
            policy: BatchPolicy::None,
            max: 1,
            wait_ms: 0.0,
        }
    }

    fn dynamic(max: u32, wait_ms: f64) -> BatchSpec {
        BatchSpec {
            policy: BatchPolicy::Dynamic,
            max,
            wait_ms,
        }
    }

    fn plan(
        inputs: &[(&str, &str)],
        nodes: Vec<PlanNode>,
        outputs: Vec<(&str, &str, Arg)>,
    ) -> Plan {
        Plan {
            mars_plan: mars_plan::PLAN_VERSION,
            workers: Vec::new(),
            budget: Vec::new(),
            gpu_shares: Vec::new(),
            mars_version: "test".into(),
            pipeline: "p".into(),
            inputs_of_plan: PlanOrigin {
                source: "p.mars".into(),
                source_hash: "sha256:0".into(),
                profile_hash: None,
                target_hash: None,
            },
            inputs: inputs
                .iter()
                .map(|(n, t)| PlanInput {
                    name: (*n).into(),
                    ty: (*t).into(),
                    default: None,
                })
                .collect(),
            outputs: outputs
                .into_iter()
                .map(|(n, t, from)| PlanOutput {
                    name: n.into(),
                    ty: t.into(),
                    from,
                })
                .collect(),
            nodes,
            rate: None,
            predicted: PipelinePrediction {
                throughput: 1.0,
                latency_p50_ms: 0.0,
                latency_p99_ms: 0.0,
                bottleneck: "none".into(),
            },
            slos: vec![],
            notes: vec![],
            inline: vec![],
        }
    }

    fn run(plan: &Plan, input: &str, opts: RunOptions) -> (Vec<serde_json::Value>, RunReport) {
        let mut out = Vec::new();
        let report = run_plan(
            plan,
            Path::new("."),
            &registry(),
            opts,
            input.as_bytes(),
            &mut out,
        )
        .expect("the run finishes");
        let lines = String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        (lines, report)
    }

    fn by_id(lines: &[serde_json::Value]) -> BTreeMap<u64, serde_json::Value> {
        let mut m = BTreeMap::new();
        for l in lines {
            let id = l["id"].as_u64().expect("id");
            assert!(
                m.insert(id, l.clone()).is_none(),
                "request {id} written twice"
            );
        }
        m
    }

    use std::collections::BTreeMap;

    fn xs(n: i64) -> String {
        (0..n).map(|i| format!("{{\"x\": {i}}}\n")).collect()
    }

    #[test]
    fn a_chain_runs_every_request_once_in_order_when_asked() {
        let p = plan(
            &[("x", "Int")],
            vec![
                node("inc", "t.inc", vec![Arg::input("x")], dynamic(16, 1.0), 2),
                node("double", "t.double", vec![Arg::node("inc", 0)], none(), 1),
            ],
            vec![("y", "Int", Arg::node("double", 0))],
        );
        let opts = RunOptions {
            ordered: true,
            max_inflight: 7,
            trace: true,
            ..RunOptions::default()
        };
        let (lines, report) = run(&p, &xs(500), opts);
        assert_eq!(lines.len(), 500);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l["id"], i as u64 + 1);
            assert_eq!(l["ok"]["y"], (i as i64 + 1) * 2);
            assert!(l["latency_ms"].as_f64().is_some());
        }
        assert_eq!(
            (report.stats.requests, report.stats.ok, report.stats.errors),
            (500, 500, 0)
        );
        assert_eq!(report.stats.nodes["inc"].items, 500);
        let trace = report.trace.expect("trace");
        let slices = trace["traceEvents"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["ph"] == "X")
            .count();
        assert_eq!(
            slices as u64,
            report.stats.nodes["inc"].batches + report.stats.nodes["double"].batches
        );
    }

    #[test]
    fn a_diamond_joins_its_branches_by_request() {
        let p = plan(
            &[("x", "Int")],
            vec![
                node("a", "t.inc", vec![Arg::input("x")], none(), 1),
                node("b", "t.double", vec![Arg::input("x")], dynamic(8, 0.5), 1),
                node(
                    "sum",
                    "t.add",
                    vec![Arg::node("a", 0), Arg::node("b", 0)],
                    none(),
                    1,
                ),
            ],
            vec![
                ("s", "Int", Arg::node("sum", 0)),
                ("x", "Int", Arg::input("x")),
                ("k", "Int", Arg::value(5.into())),
            ],
        );
        for workers in [1, 3] {
            let (lines, _) = run(
                &p,
                &xs(300),
                RunOptions {
                    workers,
                    ..RunOptions::default()
                },
            );
            let m = by_id(&lines);
            assert_eq!(m.len(), 300);
            for (id, l) in m {
                let x = id as i64 - 1;
                assert_eq!(
                    l["ok"],
                    serde_json::json!({"s": 3 * x + 1, "x": x, "k": 5}),
                    "workers {workers}"
                );
            }
        }
    }

    #[test]
    fn failures_panics_and_bad_lines_are_records_exactly_once() {
        let p = plan(
            &[("x", "Int")],
            vec![
                node(
                    "odd",
                    "t.odd_fails",
                    vec![Arg::input("x")],
                    dynamic(4, 0.0),
                    2,
                ),
                node("seven", "t.panics_on_7", vec![Arg::input("x")], none(), 1),
                node(
                    "sum",
                    "t.add",
                    vec![Arg::node("odd", 0), Arg::node("seven", 0)],
                    none(),
                    1,
                ),
            ],
            vec![("s", "Int", Arg::node("sum", 0))],
        );
        let input =
            "{\"x\": 2}\n{\"x\": 3}\nnot json\n{\"x\": \"a\"}\n{}\n{\"x\": 8}\n{\"x\": 7}\n";
        let (lines, report) = run(&p, input, RunOptions::default());
        let m = by_id(&lines);
        assert_eq!(
            m.keys().copied().collect::<Vec<_>>(),
            (1..=7).collect::<Vec<_>>()
        );
        assert_eq!(m[&1]["ok"]["s"], 4);
        assert_eq!(
            m[&2]["error"],
            serde_json::json!({"node": "odd", "message": "3 is odd"})
        );
        assert_eq!(m[&3]["error"]["node"], "input");
        assert_eq!(
            m[&4]["error"]["message"],
            "field `x`: expected Int, got `\"a\"`"
        );
        assert_eq!(m[&5]["error"]["message"], "missing field `x` (Int)");
        assert_eq!(m[&6]["ok"]["s"], 16);
        // 7 is odd too: the first failing producer in argument order names the request's error.
        assert_eq!(m[&7]["error"]["node"], "odd");
        assert_eq!(report.stats.errors_by_node.get("input"), Some(&3));
        assert_eq!(report.stats.nodes["seven"].item_errors, 1);
    }

    #[test]
    fn a_panic_fails_only_its_batch() {
        let p = plan(
            &[("x", "Int")],
            vec![node(
                "seven",
                "t.panics_on_7",
                vec![Arg::input("x")],
                none(),
                1,
            )],
            vec![("y", "Int", Arg::node("seven", 0))],
        );
        let (lines, _) = run(&p, &xs(10), RunOptions::default());
        let m = by_id(&lines);
        assert_eq!(
            m[&8]["error"],
            serde_json::json!({"node": "seven", "message": "panic in node: seven"})
        );
        assert_eq!(m.values().filter(|l| l.get("ok").is_some()).count(), 9);
    }

    #[test]
    fn a_panic_in_a_batch_fails_only_the_item_that_panics_again() {
        for inline in [false, true] {
            let mut p = plan(
                &[("x", "Int")],
                vec![node(
                    "seven",
                    "t.panics_on_7",
                    vec![Arg::input("x")],
                    dynamic(16, 50.0),
                    1,
                )],
                vec![("y", "Int", Arg::node("seven", 0))],
            );
            if inline {
                p.inline = vec!["seven".into()];
            }
            let (lines, report) = run(&p, &xs(40), RunOptions::default());
            let m = by_id(&lines);
            assert_eq!(m.len(), 40, "one record per request (inline {inline})");
            let failed: Vec<u64> = m
                .iter()
                .filter(|(_, l)| l.get("error").is_some())
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(failed, vec![8], "inline {inline}");
            assert_eq!(m[&8]["error"]["message"], "panic in node: seven");
            assert_eq!(report.stats.nodes["seven"].item_errors, 1);
        }
    }

    /// Records without their latencies, by request id.
    fn records(lines: &[serde_json::Value]) -> BTreeMap<u64, serde_json::Value> {
        by_id(lines)
            .into_iter()
            .map(|(id, mut l)| {
                l.as_object_mut().map(|o| o.remove("latency_ms"));
                (id, l)
            })
            .collect()
    }

    #[test]
    fn inline_nodes_give_the_records_replica_threads_give() {
        let mut mapped = node(
            "each",
            "t.odd_fails",
            vec![Arg::node("inc", 0), Arg::value(0.into())],
            dynamic(5, 0.0),
            1,
        );
        mapped.map_over = Some(0);
        mapped.in_types = vec!["Int".into(), "Int".into()];
        let mut inc = node("inc", "t.inc", vec![Arg::input("xs")], none(), 1);
        inc.map_over = Some(0);
        let pool = plan(
            &[("xs", "List<Int>"), ("x", "Int")],
            vec![
                inc,
                mapped,
                node(
                    "odd",
                    "t.odd_fails",
                    vec![Arg::input("x")],
                    dynamic(4, 0.0),
                    1,
                ),
                node("seven", "t.panics_on_7", vec![Arg::input("x")], none(), 1),
                node(
                    "sum",
                    "t.add",
                    vec![Arg::node("odd", 0), Arg::node("seven", 0)],
                    none(),
                    1,
                ),
            ],
            vec![
                ("s", "Int", Arg::node("sum", 0)),
                ("ys", "List<Int>", Arg::node("each", 0)),
            ],
        );
        let mut inline = pool.clone();
        inline.inline = inline.nodes.iter().map(|n| n.id.clone()).collect();
        let input: String = (0..200)
            .map(|i| format!("{{\"xs\": [{}, {}], \"x\": {}}}\n", i, i + 1, 2 * (i % 5)))
            .chain([
                "{\"xs\": 3, \"x\": 7}\n".to_string(),
                "{\"xs\": [], \"x\": 7}\n".to_string(),
            ])
            .collect();
        let (want, _) = run(&pool, &input, RunOptions::default());
        let want = records(&want);
        assert_eq!(want.len(), 202);
        assert_eq!(want[&201]["error"]["node"], "input");
        assert_eq!(want[&202]["error"]["node"], "odd");
        for workers in [1, 3] {
            let opts = RunOptions {
                workers,
                ..RunOptions::default()
            };
            let (got, report) = run(&inline, &input, opts);
            assert_eq!(records(&got), want, "workers {workers}");
            assert_eq!(report.stats.nodes["inc"].items, 400);
        }
    }

    #[test]
    fn map_nodes_keep_element_order_and_fail_as_a_whole() {
        let mut inc = node(
            "inc",
            "t.odd_fails",
            vec![Arg::input("xs"), Arg::value(0.into())],
            dynamic(5, 0.0),
            2,
        );
        inc.map_over = Some(0);
        inc.in_types = vec!["Int".into(), "Int".into()];
        let p = plan(
            &[("xs", "List<Int>")],
            vec![inc],
            vec![("ys", "List<Int>", Arg::node("inc", 0))],
        );
        let input = "{\"xs\": [2, 4, 6, 8, 10, 12, 14]}\n{\"xs\": []}\n{\"xs\": [2, 5, 7]}\n";
        let (lines, report) = run(&p, input, RunOptions::default());
        let m = by_id(&lines);
        assert_eq!(
            m[&1]["ok"]["ys"],
            serde_json::json!([2, 4, 6, 8, 10, 12, 14])
        );
        assert_eq!(m[&2]["ok"]["ys"], serde_json::json!([]));
        assert_eq!(m[&3]["error"]["message"], "element 1: 5 is odd");
        assert_eq!(report.stats.nodes["inc"].items, 10);
    }

    #[test]
    fn fail_fast_stops_admitting_at_the_first_error() {
        let p = plan(
            &[("x", "Int")],
            vec![node("odd", "t.odd_fails", vec![Arg::input("x")], none(), 1)],
            vec![("y", "Int", Arg::node("odd", 0))],
        );
        let input: String = std::iter::once("{\"x\": 1}\n".to_string())
            .chain((0..20000).map(|_| "{\"x\": 2}\n".into()))
            .collect();
        let opts = RunOptions {
            fail_fast: true,
            max_inflight: 4,
            ..RunOptions::default()
        };
        let (lines, report) = run(&p, &input, opts);
        assert_eq!(report.stats.stopped_at, Some(1));
        assert!(lines.len() < 20001, "{} lines", lines.len());
        assert_eq!(by_id(&lines)[&1]["error"]["node"], "odd");
    }

    #[test]
    fn records_cross_processes_through_bincode() {
        use crate::dataflow::{Failure, Rec};
        let recs = vec![
            Rec {
                id: 3,
                src: 1,
                body: Ok(vec![
                    Value::Json(serde_json::json!({"a": [1, null, "x"]})),
                    Value::Bytes(Arc::new(vec![0, 255])),
                    Value::List(vec![Value::Float(0.5), Value::Text("t".into())]),
                ]),
            },
            Rec {
                id: 4,
                src: 2,
                body: Err(Failure::new("n", "m")),
            },
        ];
        let bytes = bincode::serialize(&recs).expect("serializes");
        let back: Vec<Rec> = bincode::deserialize(&bytes).expect("deserializes");
        assert_eq!(back, recs);
    }

    #[test]
    fn a_plan_with_a_dangling_edge_or_unknown_builtin_does_not_start() {
        let p = plan(
            &[("x", "Int")],
            vec![node("a", "t.inc", vec![Arg::node("nope", 0)], none(), 1)],
            vec![("y", "Int", Arg::node("a", 0))],
        );
        let e = run_plan(
            &p,
            Path::new("."),
            &registry(),
            RunOptions::default(),
            &b""[..],
            &mut Vec::new(),
        );
        assert!(matches!(e, Err(RunError::Plan(m)) if m.contains("`nope`")));
        let p = plan(
            &[("x", "Int")],
            vec![node("a", "t.missing", vec![Arg::input("x")], none(), 1)],
            vec![("y", "Int", Arg::node("a", 0))],
        );
        let e = run_plan(
            &p,
            Path::new("."),
            &registry(),
            RunOptions::default(),
            &b""[..],
            &mut Vec::new(),
        );
        assert!(matches!(e, Err(RunError::Build { node, .. }) if node == "a"));
    }
}
