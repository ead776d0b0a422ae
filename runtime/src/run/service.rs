//! A long-lived run of a plan, for serving: [`Service::start`] keeps the plan's dataflow running
//! on its own threads and takes requests one at a time from any thread, each with a reply slot
//! that gets the request's [`Outcome`].
//!
//! The seam is the same as a file run's: requests go into the source's [`Feed`] channel and
//! the sink sends [`Outcome`]s; a router thread hands each outcome to its request's reply slot
//! by request id. The feed channel is bounded (the admission queue): when it is full,
//! [`Service::submit`] refuses at once instead of queueing without bound, and the source
//! admits from it while fewer than `max_inflight` requests are inside the dataflow.
//!
//! Deadlines and cancellations travel with the request id (see [`crate::watch`]): a request
//! whose deadline passed, or whose caller went away, is dropped by the source before it enters
//! the dataflow, and by the continuous-batching scheduler between steps (freeing its KV
//! cache); it still leaves exactly once, as a failure record. A streamed request's reply slot
//! also gets the generated text as it grows.
//!
//! Several services (plans) may run in one process; each has its own timely workers.
//!
//! ```
//! use std::sync::{mpsc, Arc};
//! use mars_runtime::run::service::{Service, ServiceOptions, Ticket};
//! use mars_runtime::{node::per_item, NodeContext, Registry, Value};
//!
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
//!     replicas: 1
//!     batch: {policy: dynamic, max: 8, wait_ms: 1.0}
//!     predicted: {latency_ms: 1.0, p99_ms: 1.0, throughput: 1000.0, utilization: 0.1}
//! predicted: {throughput: 1000.0, latency_p50_ms: 1.0, latency_p99_ms: 1.0, bottleneck: d}
//! "#, "demo.plan.yaml").unwrap();
//!
//! let service = Service::start(&plan, std::path::Path::new("."), &registry, ServiceOptions::default()).unwrap();
//! let (tx, rx) = mpsc::channel();
//! let values = service.decode(&serde_json::json!({"x": 21})).unwrap();
//! service.submit(values, Ticket::default(), Box::new(move |o| { let _ = tx.send(o); })).unwrap();
//! let outcome = rx.recv().unwrap();
//! assert_eq!(outcome.result, Ok(vec![Value::Int(42)]));
//! assert!(service.drain(std::time::Duration::from_secs(5)));
//! ```

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use mars_plan::{DataType, Plan};
use serde_json::Value as Json;
use timely::scheduling::SyncActivator;

use super::{images, join, launch, meters_of, Guards, RunError, RunOptions};
use crate::cluster::Cluster;
use crate::codec::{self, EdgeContext};
use crate::dataflow::sink::Outcome;
use crate::dataflow::source::{Feed, Request};
use crate::dataflow::{InputSpec, Lowered};
use crate::node::Registry;
use crate::stats::{NodeMeter, NodeStats};
use crate::value::Value;
use crate::watch::{Abandoned, Watch, WatchSlot};

/// How to serve a plan.
#[derive(Clone)]
pub struct ServiceOptions {
    /// Timely worker threads (at least 1).
    pub workers: usize,
    /// At most this many requests inside the dataflow at once.
    pub max_inflight: usize,
    /// The admission queue: requests accepted and not yet inside the dataflow. When it is
    /// full, [`Service::submit`] refuses.
    pub queue: usize,
    /// The folder `{"$file": …}` and `{"$npy": …}` inputs may name (relative paths inside it
    /// only); `None` refuses them: served requests carry their data inline.
    pub allow_files: Option<PathBuf>,
    /// Told of every batch and of generating replicas' KV use (for metrics).
    pub observer: Option<Arc<dyn Watch>>,
    /// Run as process 0 of a cluster (the other processes run `run_peer`).
    pub cluster: Option<Cluster>,
    /// Let the pool controller move replicas within the plan's ranges (SPEC 10).
    pub elastic: bool,
    /// In a cluster: how long the other processes may take to connect.
    pub connect_timeout: Duration,
    /// In a cluster: a process silent this long fails the service.
    pub peer_timeout: Duration,
}

/// The default admission queue length.
pub const DEFAULT_QUEUE: usize = 1024;
/// The default bound on requests inside a served dataflow.
pub const DEFAULT_SERVE_INFLIGHT: usize = 512;

impl Default for ServiceOptions {
    fn default() -> ServiceOptions {
        ServiceOptions {
            workers: 1,
            max_inflight: DEFAULT_SERVE_INFLIGHT,
            queue: DEFAULT_QUEUE,
            allow_files: None,
            observer: None,
            cluster: None,
            elastic: false,
            connect_timeout: RunOptions::default().connect_timeout,
            peer_timeout: RunOptions::default().peer_timeout,
        }
    }
}

/// Gets a request's outcome, once, on the router thread: it must not block.
pub type Reply = Box<dyn FnOnce(Outcome) + Send>;

/// Gets a streamed request's generated text so far, each time it grows; must not block.
pub type Partial = Box<dyn Fn(&str) + Send + Sync>;

/// What travels with a request besides its values.
#[derive(Default)]
pub struct Ticket {
    /// Drop the request (it fails with a `deadline` record) if it has not finished by then.
    pub deadline: Option<Instant>,
    /// Stream the generated text of the pipeline's generated output ([`Service::streamed_output`]).
    pub partial: Option<Partial>,
}

/// Why [`Service::submit`] did not take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the admission queue is full")]
    Full,
    #[error("the service is shutting down")]
    Closed,
}

struct Pending {
    reply: Reply,
    deadline: Option<Instant>,
    cancelled: bool,
    partial: Option<Arc<Partial>>,
}

/// The requests in a service, by id: what the router, the source and the scheduler ask about.
struct Live {
    pending: Mutex<HashMap<u64, Pending>>,
    /// The node whose text a streamed request gets.
    stream_node: Option<String>,
    observer: Option<Arc<dyn Watch>>,
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Watch for Live {
    fn abandoned(&self, id: u64) -> Option<Abandoned> {
        let pending = self.lock();
        let Some(p) = pending.get(&id) else {
            // Answered already, or never ours: nobody waits for it.
            return Some(Abandoned::Cancelled);
        };
        if p.cancelled {
            Some(Abandoned::Cancelled)
        } else if p.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(Abandoned::DeadlineExceeded)
        } else {
            None
        }
    }

    fn streams(&self, id: u64) -> bool {
        self.stream_node.is_some() && self.lock().get(&id).is_some_and(|p| p.partial.is_some())
    }

    fn partial(&self, id: u64, node: &str, text: &str) {
        if self.stream_node.as_deref() != Some(node) {
            return;
        }
        // Called outside the lock: the callback may take its time without stopping the router.
        let f = self.lock().get(&id).and_then(|p| p.partial.clone());
        if let Some(f) = f {
            f(text);
        }
    }

    fn batch(&self, node: &str, items: usize) {
        if let Some(o) = &self.observer {
            o.batch(node, items);
        }
    }

    fn kv(&self, node: &str, replica: u32, used: usize, capacity: usize) {
        if let Some(o) = &self.observer {
            o.kv(node, replica, used, capacity);
        }
    }
}

/// A plan kept running, taking requests from any thread.
pub struct Service {
    plan: Plan,
    lowered: Arc<Lowered>,
    cx: EdgeContext,
    allow_files: Option<PathBuf>,
    requests: RwLock<Option<Sender<Request>>>,
    queue: usize,
    wake: Arc<AtomicBool>,
    source: SyncActivator,
    live: Arc<Live>,
    next_id: AtomicU64,
    meters: Arc<Vec<Arc<NodeMeter>>>,
    guards: Mutex<Option<Guards>>,
    router: Mutex<Option<JoinHandle<()>>>,
    started: Instant,
    /// In a cluster: the watch on the other processes, and what failed once one is lost.
    health: Option<Arc<crate::cluster::health::Health>>,
    /// Dropped with the service: ends the thread that watches the cluster.
    _cluster_watch: Option<Sender<()>>,
    failed: Arc<Mutex<Option<String>>>,
}

/// How a warm-up request ([`Service::warm_up`]) went.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmUp {
    /// From submitting it to its outcome.
    pub took: Duration,
    /// The pipeline answered it with a failure record (it still ran the nodes before).
    pub failure: Option<crate::dataflow::Failure>,
}

impl Service {
    /// Build every node (models load here) and start the dataflow. Returns once it runs.
    pub fn start(
        plan: &Plan,
        base_dir: &Path,
        registry: &Registry,
        opts: ServiceOptions,
    ) -> Result<Service, RunError> {
        if opts.cluster.as_ref().is_some_and(|c| c.process != 0) {
            return Err(RunError::Runtime(
                "a service is process 0 of its cluster; the others run `marsc worker`".into(),
            ));
        }
        let cx = EdgeContext {
            base_dir: opts.allow_files.clone(),
            images: images::from_registry(registry, base_dir),
            allow: opts.allow_files.iter().cloned().collect(),
        };
        let lowered = Arc::new(Lowered::from_plan(plan, &cx).map_err(RunError::Plan)?);
        let meters = meters_of(plan, Instant::now(), false);
        let live = Arc::new(Live {
            pending: Mutex::new(HashMap::new()),
            stream_node: streamed_output(plan).map(|(_, node)| node),
            observer: opts.observer.clone(),
        });
        let watch: Arc<dyn Watch> = live.clone();
        for m in meters.iter() {
            m.attach_watch(Arc::clone(&watch));
        }
        let queue = opts.queue.max(1);
        let (req_tx, req_rx) = crossbeam_channel::bounded::<Request>(queue);
        let (out_tx, out_rx) = crossbeam_channel::unbounded::<Outcome>();
        let (act_tx, act_rx) = crossbeam_channel::bounded(1);
        let wake = Arc::new(AtomicBool::new(false));
        let feed = Feed {
            requests: req_rx,
            wake: Arc::clone(&wake),
            stop: Arc::new(AtomicBool::new(false)),
            activator: act_tx,
            watch: Some(WatchSlot(watch)),
            window: None,
        };
        let run_opts = RunOptions {
            workers: opts.workers.max(1),
            max_inflight: opts.max_inflight.max(1),
            cluster: opts.cluster.clone(),
            elastic: opts.elastic,
            connect_timeout: opts.connect_timeout,
            peer_timeout: opts.peer_timeout,
            ..RunOptions::default()
        };
        let launched = launch(
            plan,
            base_dir,
            registry,
            &run_opts,
            &lowered,
            &meters,
            Some(feed),
            out_tx,
        )?;
        let guards = launched.guards;
        let Ok(source) = act_rx.recv() else {
            drop(req_tx);
            join(guards)?;
            return Err(RunError::Runtime("worker 0 did not start".into()));
        };
        let router = {
            let live = Arc::clone(&live);
            std::thread::Builder::new()
                .name(format!("{}-router", plan.pipeline))
                .spawn(move || {
                    for o in out_rx.iter() {
                        let p = live.lock().remove(&o.id);
                        if let Some(p) = p {
                            (p.reply)(o);
                        }
                    }
                })
                .map_err(|e| RunError::Runtime(format!("cannot start the router thread: {e}")))?
        };
        let failed = Arc::new(Mutex::new(None));
        let health = launched.health.map(Arc::new);
        let cluster_watch = health.as_ref().map(|h| watch_cluster(h, &live, &failed));
        Ok(Service {
            health,
            _cluster_watch: cluster_watch,
            failed,
            plan: plan.clone(),
            lowered,
            cx,
            allow_files: opts.allow_files,
            requests: RwLock::new(Some(req_tx)),
            queue,
            wake,
            source,
            live,
            next_id: AtomicU64::new(1),
            meters,
            guards: Mutex::new(Some(guards)),
            router: Mutex::new(Some(router)),
            started: Instant::now(),
        })
    }

    /// The plan served.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The pipeline's inputs, in declaration order, with their types and defaults.
    pub fn inputs(&self) -> &[InputSpec] {
        &self.lowered.inputs
    }

    /// The pipeline's outputs: names and types, in declaration order.
    pub fn outputs(&self) -> Vec<(String, DataType)> {
        self.plan
            .outputs
            .iter()
            .map(|o| (o.name.clone(), o.ty.parse().unwrap_or(DataType::Json)))
            .collect()
    }

    /// The output whose text a generating node produces directly (index into the outputs),
    /// the one OpenAI-style endpoints answer with and stream.
    pub fn streamed_output(&self) -> Option<usize> {
        streamed_output(&self.plan).map(|(i, _)| i)
    }

    /// Decode a request given as a JSON object keyed by the pipeline's inputs (as a line of
    /// `marsc run`'s input). File references are refused unless the service allows a folder.
    pub fn decode(&self, json: &Json) -> Result<Vec<Value>, String> {
        let obj = json
            .as_object()
            .ok_or_else(|| "expected a JSON object keyed by the pipeline's inputs".to_string())?;
        self.inputs()
            .iter()
            .map(|i| match (obj.get(&i.name), &i.default) {
                (Some(j), _) => self
                    .decode_value(j, &i.ty)
                    .map_err(|e| format!("field `{}`: {e}", i.name)),
                (None, Some(d)) => Ok(d.clone()),
                (None, None) => Err(format!("missing field `{}` ({})", i.name, i.ty)),
            })
            .collect()
    }

    /// Decode one value of type `ty`, with the service's rule for file references.
    pub fn decode_value(&self, json: &Json, ty: &DataType) -> Result<Value, String> {
        check_file_refs(json, self.allow_files.as_deref())?;
        codec::decode(json, ty, &self.cx)
    }

    /// Encode an outcome's values as a JSON object keyed by output name.
    pub fn encode(&self, values: &[Value]) -> Result<serde_json::Map<String, Json>, String> {
        self.plan
            .outputs
            .iter()
            .zip(values)
            .map(|(o, v)| {
                codec::encode(v, &self.cx)
                    .map(|j| (o.name.clone(), j))
                    .map_err(|e| format!("output `{}`: {e}", o.name))
            })
            .collect()
    }

    /// Encode one value as JSON, as records do (`Bytes` and `Image` as `{"$base64": …}`).
    pub fn encode_value(&self, v: &Value) -> Result<Json, String> {
        codec::encode(v, &self.cx)
    }

    /// Hand a request to the dataflow. `reply` gets its outcome exactly once (also when it is
    /// dropped for its deadline or a cancellation). Refuses at once when the admission queue
    /// is full or the service is closing.
    pub fn submit(&self, values: Vec<Value>, ticket: Ticket, reply: Reply) -> Result<u64, Refused> {
        let guard = self
            .requests
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(tx) = guard.as_ref() else {
            return Err(Refused::Closed);
        };
        if self.health.is_some() && self.failure().is_some() {
            return Err(Refused::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.live.lock().insert(
            id,
            Pending {
                reply,
                deadline: ticket.deadline,
                cancelled: false,
                partial: ticket.partial.map(Arc::new),
            },
        );
        match tx.try_send(Request { id, values }) {
            Ok(()) => {
                if !self.wake.swap(true, Ordering::SeqCst) {
                    let _ = self.source.activate();
                }
                Ok(id)
            }
            Err(e) => {
                self.live.lock().remove(&id);
                Err(match e {
                    TrySendError::Full(_) => Refused::Full,
                    TrySendError::Disconnected(_) => Refused::Closed,
                })
            }
        }
    }

    /// A request made of each input's default, or else a small value of its type (`Text`
    /// "one", `Int` 1, a 32×32 grey `Image`, a one-element `List`, a zero `Tensor` with
    /// symbolic dimensions 1): what [`Service::warm_up`] sends.
    pub fn warm_up_values(&self) -> Vec<Value> {
        self.inputs()
            .iter()
            .map(|i| i.default.clone().unwrap_or_else(|| sample(&i.ty)))
            .collect()
    }

    /// Send one request of [`Service::warm_up_values`] through the pipeline and wait up to
    /// `bound` for its outcome, so that every node it reaches has run once (first-call costs
    /// such as weight repacking and allocator growth are paid before real traffic). A
    /// failure record is not an error (the sample input may be one a node refuses); not
    /// finishing within `bound`, or the service refusing, is.
    pub fn warm_up(&self, bound: Duration) -> Result<WarmUp, String> {
        let t0 = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let ticket = Ticket {
            deadline: Some(t0 + bound),
            partial: None,
        };
        let reply: Reply = Box::new(move |o: Outcome| {
            let _ = tx.send(o);
        });
        let id = self
            .submit(self.warm_up_values(), ticket, reply)
            .map_err(|e| format!("the warm-up request was refused: {e}"))?;
        match rx.recv_timeout(bound + Duration::from_millis(100)) {
            Ok(o) => match o.result {
                Err(f) if f.node == crate::watch::DEADLINE_NODE || t0.elapsed() >= bound => {
                    Err(format!(
                        "the warm-up request did not finish within {:.1} s",
                        bound.as_secs_f64()
                    ))
                }
                r => Ok(WarmUp {
                    took: t0.elapsed(),
                    failure: r.err(),
                }),
            },
            Err(_) => {
                self.cancel(id);
                Err(format!(
                    "the warm-up request did not finish within {:.1} s",
                    bound.as_secs_f64()
                ))
            }
        }
    }

    /// In a cluster: why the service stopped, once a process was lost or stalled.
    pub fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Nobody waits for request `id` any more: the dataflow drops it where it can (its reply
    /// slot still gets the outcome).
    pub fn cancel(&self, id: u64) {
        if let Some(p) = self.live.lock().get_mut(&id) {
            p.cancelled = true;
        }
    }

    /// Requests accepted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.live.lock().len()
    }

    /// Requests waiting in the admission queue.
    pub fn queued(&self) -> usize {
        self.requests
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map_or(0, Sender::len)
    }

    /// The admission queue's length bound.
    pub fn queue_capacity(&self) -> usize {
        self.queue
    }

    /// Time since the service started taking requests.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Each node's counters since the service started, in plan order.
    pub fn node_stats(&self) -> Vec<(String, NodeStats)> {
        let wall = self.started.elapsed();
        self.meters
            .iter()
            .map(|m| (m.id.clone(), m.stats(wall)))
            .collect()
    }

    /// Stop taking requests; those accepted go on. Idempotent.
    pub fn close(&self) {
        let tx = self
            .requests
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        drop(tx);
        // The source learns of the end by finding its channel closed.
        let _ = self.source.activate();
    }

    /// Close, then wait up to `bound` for every accepted request to be answered and the
    /// dataflow to end. Returns whether it drained in time; if not, the requests left are
    /// abandoned (their reply slots never called) and the dataflow's threads are left to end
    /// with the process.
    pub fn drain(&self, bound: Duration) -> bool {
        self.close();
        if self.failure().is_some() {
            // A lost process: the dataflow cannot end; its threads end with the process.
            return false;
        }
        let until = Instant::now() + bound;
        while self.in_flight() > 0 {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let guards = self
            .guards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(g) = guards {
            if join(g).is_err() {
                return false;
            }
        }
        if let Some(h) = &self.health {
            h.finish();
        }
        let router = self
            .router
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(r) = router {
            let _ = r.join();
        }
        true
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Closing lets the dataflow end; its guards join the worker threads when dropped.
        self.close();
    }
}

/// In a cluster, answer every accepted request with a failure once a process is lost or
/// stalled (the dataflow cannot finish them), and refuse new ones. The watching thread ends
/// when `ended` is dropped (with the service).
fn watch_cluster(
    health: &Arc<crate::cluster::health::Health>,
    live: &Arc<Live>,
    failed: &Arc<Mutex<Option<String>>>,
) -> Sender<()> {
    let (ended_tx, ended) = crossbeam_channel::bounded::<()>(0);
    let health = Arc::clone(health);
    let live = Arc::clone(live);
    let failed = Arc::clone(failed);
    let _ = std::thread::Builder::new()
        .name("mars:service-cluster".into())
        .spawn(move || {
            crossbeam_channel::select! {
                recv(health.failed()) -> _ => {}
                recv(ended) -> _ => return,
            }
            let message = health
                .failure()
                .map_or_else(|| "a cluster process was lost".to_string(), |f| f.message);
            *failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message.clone());
            let pending: Vec<(u64, Pending)> = live.lock().drain().collect();
            for (id, p) in pending {
                (p.reply)(Outcome {
                    id,
                    result: Err(crate::dataflow::Failure::new("cluster", message.clone())),
                    latency: None,
                });
            }
        });
    ended_tx
}

/// A small value of type `ty`, for a warm-up request.
fn sample(ty: &DataType) -> Value {
    use crate::value::{BoxData, ImageData, TensorData};
    match ty {
        DataType::Bytes => Value::Bytes(Arc::new(b"warm-up".to_vec())),
        DataType::Text => Value::Text("one".into()),
        DataType::Int => Value::Int(1),
        DataType::Float => Value::Float(1.0),
        DataType::Bool => Value::Bool(true),
        DataType::Json | DataType::Var(_) => Value::Json(Json::Object(serde_json::Map::new())),
        DataType::Image => Value::Image(Arc::new(ImageData {
            width: 32,
            height: 32,
            rgb: vec![128; 32 * 32 * 3],
        })),
        DataType::Box => Value::Box(BoxData {
            x: 0.0,
            y: 0.0,
            w: 1.0,
            h: 1.0,
        }),
        DataType::List(t) => Value::List(vec![sample(t)]),
        DataType::Tensor(d, dims) => {
            let shape: Vec<usize> = dims
                .iter()
                .map(|dim| match dim {
                    mars_plan::types::Dim::Fixed(n) => *n as usize,
                    mars_plan::types::Dim::Sym(_) => 1,
                })
                .collect();
            Value::Tensor(Arc::new(TensorData {
                dtype: d.name().to_string(),
                data: vec![0.0; shape.iter().product()],
                shape,
            }))
        }
    }
}

/// The first `Text` output that comes straight from a generating model node (not a `map`):
/// its index and the node's id.
fn streamed_output(plan: &Plan) -> Option<(usize, String)> {
    plan.outputs.iter().enumerate().find_map(|(i, o)| {
        let id = o.from.node.as_ref()?;
        let node = plan.nodes.iter().find(|n| &n.id == id)?;
        let generates = node
            .implementation
            .model
            .as_ref()
            .and_then(|m| m.config.get("generate"))
            .and_then(Json::as_bool)
            == Some(true);
        (generates && node.map_over.is_none() && o.ty == "Text").then(|| (i, id.clone()))
    })
}

/// Refuse `$file` / `$npy` references unless a folder allows them, and then only relative
/// paths that stay inside it.
fn check_file_refs(json: &Json, allow: Option<&Path>) -> Result<(), String> {
    match json {
        Json::Array(items) => items.iter().try_for_each(|j| check_file_refs(j, allow)),
        Json::Object(map) => {
            for key in ["$file", "$npy"] {
                let Some(path) = map.get(key) else { continue };
                let Some(dir) = allow else {
                    return Err(format!(
                        "`{key}` inputs are refused by this server (send the data inline, e.g. \
                         {{\"$base64\": …}}); start `marsc serve` with --allow-files DIR to allow \
                         files under DIR"
                    ));
                };
                let path = path.as_str().ok_or(format!("`{key}` must be a string"))?;
                let inside = Path::new(path)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
                if !inside {
                    return Err(format!(
                        "`{key}` {path}: only relative paths inside {} are allowed",
                        dir.display()
                    ));
                }
            }
            map.values().try_for_each(|j| check_file_refs(j, allow))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
