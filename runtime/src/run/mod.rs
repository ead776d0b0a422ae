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
        steady_throughput: written.steady_throughput().map(round3),
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
mod tests;
