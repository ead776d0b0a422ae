//! `mars-serve`: compiled plans behind network endpoints (`marsc serve`).
//!
//! Each plan runs as a [`mars_runtime::run::service::Service`]: its dataflow stays up on its
//! own threads, and this crate's async side (tokio) only parses requests, checks admission and
//! deadlines, and moves values in and results out. Protocols:
//!
//! - KServe v2 / Open Inference Protocol over HTTP ([`http`]) and gRPC ([`grpc`]), so
//!   Triton's clients work unchanged; the type mapping is in [`tensor`];
//! - OpenAI-compatible completions and chat completions, streamed as server-sent events
//!   ([`openai`]);
//! - `POST /v1/pipelines/{name}` with `marsc run`'s request and record JSON.
//!
//! Operations: a bounded admission queue per pipeline (503 / `UNAVAILABLE` when full),
//! per-request deadlines (504 / `DEADLINE_EXCEEDED`), readiness that waits for every model,
//! drain on SIGTERM, Prometheus metrics ([`metrics`]), one access-log line per request, a
//! body size limit, an optional bearer token. [`bench`] is the load generator of `marsc bench serve`.

pub mod bench;
pub mod grpc;
mod grpc_open;
pub mod http;
pub mod kserve;
pub mod metrics;
pub mod openai;
pub mod priority;
pub mod state;
pub mod stats;
pub mod tensor;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mars_plan::Plan;
use mars_runtime::run::service::{Service, ServiceOptions};
use mars_runtime::Registry;

pub use state::{Limits, Server};

/// How to serve.
#[derive(Clone)]
pub struct Config {
    /// Where the HTTP endpoints listen (`None`: no HTTP).
    pub http: Option<SocketAddr>,
    /// Where the gRPC service listens (`None`: no gRPC).
    pub grpc: Option<SocketAddr>,
    pub limits: Limits,
    /// On shutdown, how long in-flight requests get to finish.
    pub drain_timeout: Duration,
    /// Each pipeline's service options (its observer is set per pipeline).
    pub service: ServiceOptions,
    /// Serve both listeners over TLS with this certificate and key.
    pub tls: Option<tls::Tls>,
    /// Send each pipeline a warm-up request before it turns ready, and wait this long at
    /// most for it (`None`: no warm-up; readiness follows loading alone).
    pub warmup: Option<Duration>,
    /// A deployment's offline run to steer (SPEC 10.8): the controller moves its window as
    /// the served pipelines' load moves.
    pub priority: Option<priority::PriorityConfig>,
}

/// A plan to serve and the folder its relative paths resolve against.
pub struct Pipeline {
    pub plan: Plan,
    pub base_dir: PathBuf,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("two plans serve pipeline `{0}`; each pipeline name may appear once")]
    Duplicate(String),
    #[error("pipeline `{pipeline}` cannot start: {message}")]
    Start { pipeline: String, message: String },
    #[error("the {0} server failed: {1}")]
    Io(&'static str, String),
    #[error("{0}")]
    Tls(String),
}

/// Where the server listens, once bound.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub http: Option<SocketAddr>,
    pub grpc: Option<SocketAddr>,
}

/// How a server ended.
#[derive(Debug, Clone)]
pub struct Drained {
    /// Every accepted request was answered within the drain bound.
    pub complete: bool,
    /// Each loaded pipeline's stats against its plan, read once the drain ended.
    pub reports: Vec<stats::PipelineReport>,
}

/// Serve `pipelines` until `shutdown` completes, then drain. `on_bound` learns the addresses
/// as soon as the listeners are bound (before the models load: readiness says when they
/// have).
pub async fn serve(
    config: Config,
    pipelines: Vec<Pipeline>,
    registry: Registry,
    on_bound: impl FnOnce(Bound),
    shutdown: impl Future<Output = ()>,
) -> Result<Drained, ServeError> {
    let mut names: Vec<String> = Vec::new();
    for p in &pipelines {
        if names.contains(&p.plan.pipeline) {
            return Err(ServeError::Duplicate(p.plan.pipeline.clone()));
        }
        names.push(p.plan.pipeline.clone());
    }
    // Bad TLS files fail before anything listens.
    let tls_http = match &config.tls {
        Some(t) => Some(t.server_config().map_err(ServeError::Tls)?),
        None => None,
    };
    let mut metrics = metrics::Metrics::new();
    if let Some(p) = &config.priority {
        metrics.register_priority();
        metrics.watch_priority(
            p.offline
                .iter()
                .map(|r| (r.name.clone(), Arc::clone(&r.window)))
                .collect(),
        );
    }
    let metrics = Arc::new(metrics);
    let server = Arc::new(Server::new(
        names,
        config.limits.clone(),
        Arc::clone(&metrics),
    ));
    let controller_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let controller = match &config.priority {
        Some(p) => Some(
            priority::start(Arc::clone(&server), p.clone(), Arc::clone(&controller_stop))
                .map_err(|e| ServeError::Io("priority controller", e.to_string()))?,
        ),
        None => None,
    };

    let http = match config.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?,
        ),
        None => None,
    };
    let grpc = match config.grpc {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?,
        ),
        None => None,
    };
    on_bound(Bound {
        http: http.as_ref().and_then(|l| l.local_addr().ok()),
        grpc: grpc.as_ref().and_then(|l| l.local_addr().ok()),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(listener) = http {
        let app = http::router(Arc::clone(&server));
        let mut stop = stop_rx.clone();
        match tls_http {
            None => tasks.push(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
                    .map_err(|e| ServeError::Io("HTTP", e.to_string()))
            })),
            Some(tls) => {
                let listener = listener
                    .into_std()
                    .map_err(|e| ServeError::Io("HTTP", e.to_string()))?;
                let handle = axum_server::Handle::new();
                let serving = axum_server::tls_rustls::from_tcp_rustls(
                    listener,
                    axum_server::tls_rustls::RustlsConfig::from_config(tls),
                )
                .map_err(|e| ServeError::Io("HTTPS", e.to_string()))?
                .handle(handle.clone());
                let drain = config.drain_timeout;
                tokio::spawn(async move {
                    let _ = stop.wait_for(|s| *s).await;
                    handle.graceful_shutdown(Some(drain));
                });
                tasks.push(tokio::spawn(async move {
                    serving
                        .serve(app.into_make_service())
                        .await
                        .map_err(|e| ServeError::Io("HTTPS", e.to_string()))
                }));
            }
        }
    }
    if let Some(listener) = grpc {
        let svc = grpc::service(Arc::clone(&server));
        let mut stop = stop_rx.clone();
        let incoming = tokio_stream_of(listener);
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = &config.tls {
            builder = builder
                .tls_config(t.grpc_config())
                .map_err(|e| ServeError::Tls(format!("gRPC: {e}")))?;
        }
        tasks.push(tokio::spawn(async move {
            builder
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .map_err(|e| ServeError::Io("gRPC", e.to_string()))
        }));
    }

    // Models load on blocking threads while the listeners answer health checks.
    let loading = {
        let server = Arc::clone(&server);
        let opts = config.service.clone();
        let warmup = config.warmup;
        tokio::task::spawn_blocking(move || -> Result<Vec<Arc<Service>>, ServeError> {
            let mut services = Vec::new();
            for p in pipelines {
                let name = p.plan.pipeline.clone();
                let t0 = Instant::now();
                let mut o = opts.clone();
                o.observer = Some(server.metrics.observer(&name));
                let s = Service::start(&p.plan, &p.base_dir, &registry, o).map_err(|e| {
                    ServeError::Start {
                        pipeline: name.clone(),
                        message: e.to_string(),
                    }
                })?;
                let s = Arc::new(s);
                let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
                if let Some(bound) = warmup {
                    warm_up(&name, &s, bound);
                }
                // Only now does the pipeline take requests and report ready.
                server.add(name.clone(), Arc::clone(&s));
                tracing::info!(pipeline = %name, load_ms, ready_ms = t0.elapsed().as_secs_f64() * 1000.0, "pipeline ready");
                services.push(s);
            }
            server.set_loaded();
            Ok(services)
        })
    };
    tokio::pin!(loading);
    tokio::pin!(shutdown);
    let services = tokio::select! {
        loaded = &mut loading => match loaded {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                let _ = stop_tx.send(true);
                return Err(e);
            }
            Err(e) => {
                let _ = stop_tx.send(true);
                return Err(ServeError::Start { pipeline: "?".into(), message: e.to_string() });
            }
        },
        () = &mut shutdown => None,
    };
    if services.is_some() {
        shutdown.await;
    }
    // Drain: readiness false, refuse new requests, let accepted ones finish.
    tracing::info!("shutting down: draining in-flight requests");
    server.start_draining();
    controller_stop.store(true, std::sync::atomic::Ordering::Release);
    if let Some(c) = controller {
        let _ = c.join();
    }
    let services = services.unwrap_or_default();
    for s in &services {
        s.close();
    }
    let until = Instant::now() + config.drain_timeout;
    let mut complete = true;
    while services.iter().any(|s| s.in_flight() > 0) {
        if Instant::now() >= until {
            complete = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reports: Vec<stats::PipelineReport> = server
        .all()
        .iter()
        .filter_map(|(name, s)| Some(stats::of_service(name, s.as_ref()?, &server.metrics)))
        .collect();
    let _ = stop_tx.send(true);
    let left = until.saturating_duration_since(Instant::now()) + Duration::from_millis(200);
    for t in tasks {
        match tokio::time::timeout(left, t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("{e}"),
            Ok(Err(e)) => tracing::warn!("a server task failed: {e}"),
            Err(_) => complete = false,
        }
    }
    if complete {
        let joined = tokio::task::spawn_blocking(move || {
            services.iter().all(|s| s.drain(Duration::from_secs(5)))
        });
        complete = joined.await.unwrap_or(false);
    }
    tracing::info!(complete, "drained");
    Ok(Drained { complete, reports })
}

/// Send `service` its warm-up request and say how it went. A failure record or a warm-up that
/// takes longer than `bound` is a warning, not a reason to stay unready: the weights are
/// loaded, and the sample request is made up (SPEC 8.1).
fn warm_up(name: &str, service: &Service, bound: Duration) {
    match service.warm_up(bound) {
        Ok(w) => match w.failure {
            None => {
                tracing::info!(pipeline = %name, warmup_ms = w.took.as_secs_f64() * 1000.0, "warmed up")
            }
            Some(f) => tracing::warn!(
                pipeline = %name,
                node = %f.node,
                "the warm-up request failed ({}); the nodes before `{}` ran",
                f.message,
                f.node
            ),
        },
        Err(e) => tracing::warn!(pipeline = %name, "{e}; serving without a complete warm-up"),
    }
}

/// A listener as the stream of connections tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures_util::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((next, l))
    })
}
