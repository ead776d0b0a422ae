//! The server's shared state: the pipelines (each a running [`Service`]), readiness, the
//! limits every endpoint applies, and the one way every endpoint calls a pipeline
//! ([`Server::call`]): admission, deadline, cancellation when the caller goes away.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mars_runtime::dataflow::sink::Outcome;
use mars_runtime::dataflow::Failure;
use mars_runtime::run::service::{Partial, Refused, Service, Ticket};
use mars_runtime::watch::{CANCELLED_NODE, DEADLINE_NODE};
use mars_runtime::Value;

use crate::metrics::Metrics;

/// Limits and defaults every endpoint applies.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request without a deadline of its own gets this one.
    pub default_timeout: Option<Duration>,
    /// Bodies larger than this are refused (413).
    pub max_body: usize,
    /// When set, every endpoint but health and metrics wants `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// At most this many requests open at once over all pipelines (being read, waiting for
    /// admission or their answer); more are refused (503) before their body is read.
    pub max_open: usize,
    /// At most this many body bytes held by open requests (each reserves its
    /// `Content-Length`, or `max_body` when it names none); more are refused (503) before
    /// their body is read. With `max_open`, the bound that keeps memory flat whatever the
    /// clients send.
    pub max_open_bytes: usize,
}

impl Limits {
    /// Limits for tests and benches: no deadline, no key, generous bounds.
    pub fn open_defaults() -> Limits {
        Limits {
            default_timeout: None,
            max_body: DEFAULT_MAX_BODY,
            api_key: None,
            max_open: DEFAULT_MAX_OPEN,
            max_open_bytes: DEFAULT_MAX_OPEN_BYTES,
        }
    }
}

/// Default `--max-body-bytes`.
pub const DEFAULT_MAX_BODY: usize = 16 << 20;
/// Default `--max-open-requests`.
pub const DEFAULT_MAX_OPEN: usize = 1024;
/// Default `--max-open-mib`, in bytes.
pub const DEFAULT_MAX_OPEN_BYTES: usize = 256 << 20;

/// Requests the HTTP and gRPC front ends hold open and the body bytes they reserve (see
/// [`Limits::max_open`]).
#[derive(Debug, Default)]
pub struct Open {
    requests: AtomicUsize,
    bytes: AtomicUsize,
}

/// One open request's reservation; dropping it (the answer is out, or the caller went away
/// and its future was dropped) gives the reservation back.
#[derive(Debug)]
pub struct OpenSlot {
    open: Arc<Open>,
    bytes: usize,
}

impl Open {
    /// Reserve room for a request whose body may be `bytes` long, or `None` when the
    /// server holds as many requests or bytes as `limits` allow.
    pub fn reserve(self: &Arc<Self>, bytes: usize, limits: &Limits) -> Option<OpenSlot> {
        let n = self.requests.fetch_add(1, Ordering::AcqRel) + 1;
        let b = self.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if n > limits.max_open || b > limits.max_open_bytes {
            self.requests.fetch_sub(1, Ordering::AcqRel);
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            return None;
        }
        Some(OpenSlot {
            open: Arc::clone(self),
            bytes,
        })
    }

    /// Why a request past the bounds was refused, naming the flags (both front ends say it).
    pub fn refusal(&self, limits: &Limits) -> String {
        let (requests, bytes) = self.held();
        format!(
            "the server holds {requests} open requests ({} MiB of bodies), its bound \
             (--max-open-requests {}, --max-open-mib {}); retry later",
            bytes >> 20,
            limits.max_open,
            limits.max_open_bytes >> 20
        )
    }

    /// (requests, bytes) held now.
    pub fn held(&self) -> (usize, usize) {
        (
            self.requests.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }
}

impl OpenSlot {
    /// Reserve `extra` more body bytes for this request (its length became known after the
    /// request was admitted), or `false` when that would pass the byte bound.
    pub fn grow(&mut self, extra: usize, limits: &Limits) -> bool {
        let b = self.open.bytes.fetch_add(extra, Ordering::AcqRel) + extra;
        if b > limits.max_open_bytes {
            self.open.bytes.fetch_sub(extra, Ordering::AcqRel);
            return false;
        }
        self.bytes += extra;
        true
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.open.requests.fetch_sub(1, Ordering::AcqRel);
        self.open.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Why a call gave no outcome, or a failed one. Each protocol maps it to its own status.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// No such pipeline (404 / NOT_FOUND).
    Unknown(String),
    /// The admission queue is full (503 with Retry-After / UNAVAILABLE).
    Overloaded(String),
    /// The server is starting or draining (503 / UNAVAILABLE).
    NotReady(String),
    /// The deadline passed before the request finished (504 / DEADLINE_EXCEEDED).
    Deadline,
    /// The request is malformed (400 / INVALID_ARGUMENT).
    BadRequest(String),
    /// The pipeline answered with a failure record (the request's own error).
    Failed(Failure),
}

impl CallError {
    pub fn message(&self) -> String {
        match self {
            CallError::Unknown(p) => format!("no pipeline `{p}` on this server"),
            CallError::Overloaded(p) => {
                format!("pipeline `{p}` is at capacity (its admission queue is full); retry later")
            }
            CallError::NotReady(why) => why.clone(),
            CallError::Deadline => "the request's deadline passed before it finished".into(),
            CallError::BadRequest(m) => m.clone(),
            CallError::Failed(f) => format!("node `{}`: {}", f.node, f.message),
        }
    }

    /// A short name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Unknown(_) => "not_found",
            CallError::Overloaded(_) => "overloaded",
            CallError::NotReady(_) => "unavailable",
            CallError::Deadline => "deadline",
            CallError::BadRequest(_) => "bad_request",
            CallError::Failed(_) => "failed",
        }
    }
}

/// Cancels its request when dropped before the outcome came: a caller that goes away (a
/// closed connection drops the handler's future) frees what its request holds.
struct CancelOnDrop {
    service: Arc<Service>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.service.cancel(self.id);
        }
    }
}

/// A request in flight, for callers that want to wait on it themselves (streaming).
pub struct InFlight {
    outcome: tokio::sync::oneshot::Receiver<Outcome>,
    guard: CancelOnDrop,
    deadline: Option<Instant>,
}

impl InFlight {
    /// Cancel the request now (e.g. a stop sequence was seen while streaming).
    pub fn cancel(&mut self) {
        self.guard.service.cancel(self.guard.id);
    }

    /// Wait for the outcome, up to the deadline.
    pub async fn finish(mut self) -> Result<Vec<Value>, CallError> {
        let wait = &mut self.outcome;
        let got = match self.deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), wait).await {
                Ok(got) => got,
                Err(_) => return Err(CallError::Deadline),
            },
            None => wait.await,
        };
        self.guard.armed = false;
        let outcome = got.map_err(|_| CallError::NotReady("the pipeline stopped".into()))?;
        match outcome.result {
            Ok(values) => Ok(values),
            Err(f) if f.node == DEADLINE_NODE => Err(CallError::Deadline),
            Err(f) if f.node == CANCELLED_NODE => Err(CallError::Deadline),
            Err(f) if self.deadline.is_some_and(|d| Instant::now() >= d) => {
                // Dropped by a node between steps because the deadline passed.
                let _ = f;
                Err(CallError::Deadline)
            }
            Err(f) => Err(CallError::Failed(f)),
        }
    }
}

/// The pipelines a process serves, and its lifecycle.
pub struct Server {
    pipelines: RwLock<BTreeMap<String, Arc<Service>>>,
    /// Every pipeline is loaded.
    loaded: AtomicBool,
    /// SIGTERM came: refuse new requests.
    draining: AtomicBool,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// What the HTTP front end holds open now.
    pub open: Arc<Open>,
    next_log_id: AtomicU64,
    /// Names of the pipelines still loading, for messages.
    expected: Vec<String>,
}

impl Server {
    pub fn new(expected: Vec<String>, limits: Limits, metrics: Arc<Metrics>) -> Server {
        Server {
            pipelines: RwLock::new(BTreeMap::new()),
            loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            limits,
            metrics,
            open: Arc::default(),
            next_log_id: AtomicU64::new(1),
            expected,
        }
    }

    pub fn add(&self, name: String, service: Arc<Service>) {
        self.pipelines
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name, service);
    }

    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::SeqCst);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Live: the process answers.
    pub fn live(&self) -> bool {
        true
    }

    /// Ready: every pipeline loaded and warmed up, none failed (a lost cluster process), and
    /// not draining.
    pub fn ready(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
            && !self.is_draining()
            && self
                .all()
                .iter()
                .all(|(_, s)| s.as_ref().is_some_and(|s| s.failure().is_none()))
    }

    /// Whether pipeline `name` takes requests now (loaded, warmed up, not failed, not
    /// draining).
    pub fn pipeline_ready(&self, name: &str) -> bool {
        !self.is_draining() && self.get(name).is_some_and(|s| s.failure().is_none())
    }

    /// `name` as a metrics label: a pipeline this server serves, else `-` (names from
    /// request paths must not grow the label set without bound).
    pub fn label<'a>(&self, name: &'a str) -> &'a str {
        if self.expected.iter().any(|e| e == name) {
            name
        } else {
            "-"
        }
    }

    /// A request number for the access log.
    pub fn log_id(&self) -> u64 {
        self.next_log_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Service>> {
        self.pipelines
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Every pipeline, loaded or not: (name, its service once loaded).
    pub fn all(&self) -> Vec<(String, Option<Arc<Service>>)> {
        let loaded = self
            .pipelines
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        self.expected
            .iter()
            .map(|n| (n.clone(), loaded.get(n).cloned()))
            .collect()
    }

    /// The pipeline, or why it cannot take a request now.
    pub fn service(&self, name: &str) -> Result<Arc<Service>, CallError> {
        if self.is_draining() {
            self.metrics.refused(self.label(name), "draining");
            return Err(CallError::NotReady(
                "the server is shutting down; send new requests elsewhere".into(),
            ));
        }
        match self.get(name) {
            Some(s) => match s.failure() {
                None => Ok(s),
                Some(why) => Err(CallError::NotReady(format!(
                    "pipeline `{name}` stopped: {why}"
                ))),
            },
            None if self.expected.iter().any(|e| e == name) => Err(CallError::NotReady(format!(
                "pipeline `{name}` is still loading or warming up"
            ))),
            None => Err(CallError::Unknown(name.to_string())),
        }
    }

    /// The deadline of a request that asked for `timeout` (or the default).
    pub fn deadline(&self, timeout: Option<Duration>) -> Option<Instant> {
        timeout
            .or(self.limits.default_timeout)
            .map(|t| Instant::now() + t)
    }

    /// Admit one request; its outcome comes through the returned handle.
    pub fn admit(
        &self,
        name: &str,
        service: &Arc<Service>,
        values: Vec<Value>,
        deadline: Option<Instant>,
        partial: Option<Partial>,
    ) -> Result<InFlight, CallError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ticket = Ticket { deadline, partial };
        let reply = Box::new(move |o: Outcome| {
            let _ = tx.send(o);
        });
        match service.submit(values, ticket, reply) {
            Ok(id) => Ok(InFlight {
                outcome: rx,
                guard: CancelOnDrop {
                    service: Arc::clone(service),
                    id,
                    armed: true,
                },
                deadline,
            }),
            Err(Refused::Full) => {
                self.metrics.refused(name, "queue_full");
                Err(CallError::Overloaded(name.to_string()))
            }
            Err(Refused::Closed) => {
                self.metrics.refused(name, "draining");
                Err(CallError::NotReady(
                    "the server is shutting down; send new requests elsewhere".into(),
                ))
            }
        }
    }

    /// Run several rows as one call each, all admitted before any is awaited (so the runtime
    /// batches them); the first refusal refuses the whole call.
    pub async fn call_rows(
        &self,
        name: &str,
        rows: Vec<Vec<Value>>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Result<Vec<Value>, CallError>>, CallError> {
        let service = self.service(name)?;
        let mut flights = Vec::with_capacity(rows.len());
        for values in rows {
            flights.push(self.admit(name, &service, values, deadline, None)?);
        }
        let mut out = Vec::with_capacity(flights.len());
        for f in flights {
            out.push(f.finish().await);
        }
        Ok(out)
    }
}
