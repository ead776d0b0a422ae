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
        };
        let run_opts = RunOptions {
            workers: opts.workers.max(1),
            max_inflight: opts.max_inflight.max(1),
            cluster: opts.cluster.clone(),
            elastic: opts.elastic,
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
        Ok(Service {
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
                (Some(j), _) => self.decode_value(j, &i.ty).map_err(|e| format!("field `{}`: {e}", i.name)),
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
mod tests {
    use super::*;
    use crate::node::{per_item, NodeContext};
    use crate::value::NodeError;
    use std::sync::mpsc;

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.builtin(
            "t.slow_inc",
            Arc::new(|_: &NodeContext| {
                Ok(per_item(|it| match it.first() {
                    Some(Value::Int(i)) => {
                        std::thread::sleep(Duration::from_millis(2));
                        Ok(vec![Value::Int(i + 1)])
                    }
                    _ => Err(NodeError::new("expected an Int")),
                }))
            }),
        );
        r
    }

    fn plan() -> Plan {
        Plan::from_yaml(
            r#"
mars_plan: 1
mars_version: test
pipeline: p
inputs_of_plan: {source: p.mars, source_hash: "sha256:0"}
inputs: [{name: x, type: Int}, {name: b, type: Bytes, default: {"$base64": ""}}]
outputs: [{name: y, type: Int, from: {node: a}}]
nodes:
  - id: a
    kind: inc
    implementation: {builtin: t.slow_inc}
    args: [{input: x}]
    in_types: [Int]
    out_types: [Int]
    device: cpu
    worker: local
    replicas: 1
    batch: {policy: none, max: 1, wait_ms: 0.0}
    predicted: {latency_ms: 1.0, p99_ms: 1.0, throughput: 1000.0, utilization: 0.1}
predicted: {throughput: 1000.0, latency_p50_ms: 1.0, latency_p99_ms: 1.0, bottleneck: a}
"#,
            "p.plan.yaml",
        )
        .expect("a valid plan")
    }

    fn start(opts: ServiceOptions) -> Service {
        Service::start(&plan(), Path::new("."), &registry(), opts).expect("starts")
    }

    #[test]
    fn every_request_gets_its_own_outcome_from_many_threads() {
        let s = Arc::new(start(ServiceOptions::default()));
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|scope| {
            for t in 0..4i64 {
                let s = Arc::clone(&s);
                let tx = tx.clone();
                scope.spawn(move || {
                    for k in 0..50i64 {
                        let x = t * 1000 + k;
                        let values = s.decode(&serde_json::json!({ "x": x })).expect("decodes");
                        let tx = tx.clone();
                        let reply: Reply = Box::new(move |o: Outcome| {
                            let _ = tx.send((x, o));
                        });
                        // The queue holds 1024: nothing is refused here.
                        s.submit(values, Ticket::default(), reply).expect("admitted");
                    }
                });
            }
        });
        drop(tx);
        let got: Vec<(i64, Outcome)> = rx.iter().collect();
        assert_eq!(got.len(), 200);
        for (x, o) in got {
            assert_eq!(o.result, Ok(vec![Value::Int(x + 1)]));
        }
        assert!(s.drain(Duration::from_secs(10)));
        assert_eq!(s.node_stats()[0].1.items, 200);
    }

    #[test]
    fn a_full_queue_refuses_and_a_passed_deadline_never_reaches_the_node() {
        let s = start(ServiceOptions {
            queue: 2,
            max_inflight: 1,
            ..ServiceOptions::default()
        });
        let (tx, rx) = mpsc::channel();
        let mut refused = 0;
        let mut admitted = 0;
        for x in 0..200 {
            let tx = tx.clone();
            let values = s.decode(&serde_json::json!({ "x": x })).expect("decodes");
            match s.submit(values, Ticket::default(), Box::new(move |o| drop(tx.send(o)))) {
                Ok(_) => admitted += 1,
                Err(Refused::Full) => refused += 1,
                Err(Refused::Closed) => panic!("not closing"),
            }
        }
        assert!(refused > 0, "a queue of 2 before a 2 ms node refuses some of 200");
        let past = Some(Instant::now() - Duration::from_millis(1));
        let values = s.decode(&serde_json::json!({"x": 1})).expect("decodes");
        let (dtx, drx) = mpsc::channel();
        let mut late = None;
        // Wait for room in the queue without sleeping on a clock: retry while refused.
        while late.is_none() {
            let dtx = dtx.clone();
            let v = values.clone();
            let t = Ticket {
                deadline: past,
                partial: None,
            };
            late = s.submit(v, t, Box::new(move |o| drop(dtx.send(o)))).ok();
            std::thread::yield_now();
        }
        let o = drx.recv().expect("answered");
        let f = o.result.expect_err("dropped");
        assert_eq!(f.node, crate::watch::DEADLINE_NODE);
        drop(tx);
        assert_eq!(rx.iter().count(), admitted);
        assert!(s.drain(Duration::from_secs(10)));
        assert_eq!(s.node_stats()[0].1.items, admitted as u64);
        let after = s.decode(&serde_json::json!({"x": 1})).expect("decodes");
        assert_eq!(
            s.submit(after, Ticket::default(), Box::new(|_| {})),
            Err(Refused::Closed)
        );
    }

    /// A generating node that spells its input out one character per step.
    #[derive(Default)]
    struct Spell {
        seqs: HashMap<u64, (Vec<char>, usize)>,
        forgotten: Arc<AtomicU64>,
    }

    impl crate::node::Node for Spell {
        fn run_batch(&mut self, _: Vec<crate::node::Item>) -> Vec<Result<crate::node::Outputs, NodeError>> {
            unreachable!("driven step by step")
        }
        fn generator(&mut self) -> Option<&mut dyn crate::node::Generate> {
            Some(self)
        }
    }

    impl crate::node::Generate for Spell {
        fn admit(&mut self, seq: u64, item: crate::node::Item) -> Result<usize, NodeError> {
            let text = item[0].as_text()?.chars().collect();
            self.seqs.insert(seq, (text, 0));
            Ok(1)
        }
        fn prefill(&mut self, seqs: &[u64]) -> Vec<(u64, crate::node::Step)> {
            seqs.iter().map(|&s| (s, crate::node::Step::Running { cached: 1 })).collect()
        }
        fn step(&mut self, seqs: &[u64]) -> Vec<(u64, crate::node::Step)> {
            seqs.iter()
                .map(|&s| {
                    let e = self.seqs.get_mut(&s).expect("admitted");
                    e.1 += 1;
                    if e.1 > e.0.len() {
                        let (t, _) = self.seqs.remove(&s).expect("present");
                        let out = t.into_iter().collect::<String>();
                        (s, crate::node::Step::Done(Ok(vec![Value::Text(out)])))
                    } else {
                        (s, crate::node::Step::Running { cached: 1 + e.1 })
                    }
                })
                .collect()
        }
        fn preempt(&mut self, _: u64) -> usize {
            0
        }
        fn forget(&mut self, seq: u64) {
            if self.seqs.remove(&seq).is_some() {
                self.forgotten.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn max_sequence_tokens(&self) -> usize {
            64
        }
        fn generated_text(&self, seq: u64) -> Option<String> {
            self.seqs.get(&seq).map(|(t, n)| t[..(*n).min(t.len())].iter().collect())
        }
    }

    fn spell_plan() -> Plan {
        Plan::from_yaml(
            r#"
mars_plan: 1
mars_version: test
pipeline: spell
inputs_of_plan: {source: p.mars, source_hash: "sha256:0"}
inputs: [{name: text, type: Text}]
outputs: [{name: out, type: Text, from: {node: g}}]
nodes:
  - id: g
    kind: Speller
    implementation: {model: {arch: t.spell, config: {generate: true}}}
    args: [{input: text}]
    in_types: [Text]
    out_types: [Text]
    device: cpu
    worker: local
    replicas: 1
    batch: {policy: continuous, max: 4, wait_ms: 0.0}
    predicted: {latency_ms: 1.0, p99_ms: 1.0, throughput: 1000.0, utilization: 0.1}
predicted: {throughput: 1000.0, latency_p50_ms: 1.0, latency_p99_ms: 1.0, bottleneck: g}
"#,
            "spell.plan.yaml",
        )
        .expect("a valid plan")
    }

    #[test]
    fn a_streamed_request_sees_its_text_grow_and_a_cancelled_one_frees_its_sequence() {
        let forgotten = Arc::new(AtomicU64::new(0));
        let mut r = Registry::new();
        let f = Arc::clone(&forgotten);
        r.model(
            "t.spell",
            Arc::new(move |_: &NodeContext| {
                Ok(Box::new(Spell {
                    forgotten: Arc::clone(&f),
                    ..Spell::default()
                }) as Box<dyn crate::node::Node>)
            }),
        );
        let s = Service::start(&spell_plan(), Path::new("."), &r, ServiceOptions::default()).expect("starts");
        assert_eq!(s.streamed_output(), Some(0));
        let (ptx, prx) = mpsc::channel::<String>();
        let (tx, rx) = mpsc::channel();
        let ticket = Ticket {
            deadline: None,
            partial: Some(Box::new(move |t: &str| drop(ptx.send(t.to_string())))),
        };
        let v = s.decode(&serde_json::json!({"text": "hello"})).expect("decodes");
        let tx2 = tx.clone();
        s.submit(v, ticket, Box::new(move |o| drop(tx2.send(o)))).expect("admitted");
        let o = rx.recv().expect("answered");
        assert_eq!(o.result, Ok(vec![Value::Text("hello".into())]));
        let seen: Vec<String> = prx.try_iter().collect();
        assert_eq!(seen, vec!["h", "he", "hel", "hell", "hello"]);

        // Cancelled after its first piece of text: it leaves as an error and the node forgets it.
        // The replica waits in the callback until the test has cancelled, so the sequence is
        // still running when it is cancelled.
        let long = "x".repeat(60);
        let (ptx, prx) = mpsc::channel::<String>();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate = Mutex::new(gate_rx);
        let ticket = Ticket {
            deadline: None,
            partial: Some(Box::new(move |t: &str| {
                if ptx.send(t.to_string()).is_ok() {
                    let _ = gate.lock().map(|g| g.recv());
                }
            })),
        };
        let v = s.decode(&serde_json::json!({ "text": long })).expect("decodes");
        let id = s.submit(v, ticket, Box::new(move |o| drop(tx.send(o)))).expect("admitted");
        prx.recv().expect("a first piece");
        s.cancel(id);
        drop(prx);
        drop(gate_tx);
        let o = rx.recv().expect("answered");
        let f = o.result.expect_err("cancelled");
        assert!(f.message.contains("the caller went away"), "{f:?}");
        assert_eq!(forgotten.load(Ordering::SeqCst), 1);
        assert!(s.drain(Duration::from_secs(10)));
    }

    #[test]
    fn file_references_are_refused_unless_a_folder_allows_them() {
        let s = start(ServiceOptions::default());
        let e = s
            .decode(&serde_json::json!({"x": 1, "b": {"$file": "/etc/passwd"}}))
            .expect_err("refused");
        assert!(e.starts_with("field `b`: `$file` inputs are refused"), "{e}");
        let dir = std::env::temp_dir().join(format!("mars-serve-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("a.bin"), b"abc").expect("writes");
        let s = start(ServiceOptions {
            allow_files: Some(dir.clone()),
            ..ServiceOptions::default()
        });
        let ok = s
            .decode(&serde_json::json!({"x": 1, "b": {"$file": "a.bin"}}))
            .expect("allowed");
        assert_eq!(ok[1], Value::Bytes(Arc::new(b"abc".to_vec())));
        let e = s
            .decode(&serde_json::json!({"x": 1, "b": {"$file": "../a.bin"}}))
            .expect_err("outside");
        assert!(e.contains("only relative paths inside"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
