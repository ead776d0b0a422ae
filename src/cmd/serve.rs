//! `marsc serve PLAN... [--http ADDR] [--grpc ADDR]`: keep each plan's dataflow running behind
//! HTTP and gRPC endpoints (KServe v2, OpenAI-compatible completions, plain JSON) until
//! SIGTERM or SIGINT, then drain. The serving itself is `mars_serve::serve`; this file reads
//! the flags and files and runs the async runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use miette::{miette, IntoDiagnostic, WrapErr};

use mars_runtime::run::service::{ServiceOptions, DEFAULT_QUEUE, DEFAULT_SERVE_INFLIGHT};
use mars_serve::{Bound, Config, Limits, Pipeline};

#[derive(clap::Args)]
pub struct Args {
    /// Compiled plans (`*.plan.yaml`), one pipeline each; requests name the pipeline.
    #[arg(required_unless_present = "deployment")]
    pub plans: Vec<PathBuf>,
    /// Serve the online plans of this deployment file and run its offline plans beside them,
    /// yielding its cores to the online load (SPEC 10.8).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["plans", "hosts", "local_cluster"])]
    pub deployment: Option<PathBuf>,
    /// Where HTTP listens (`off`: no HTTP). Loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub http: String,
    /// Where gRPC listens (`off`: no gRPC).
    #[arg(long, default_value = "127.0.0.1:8001")]
    pub grpc: String,
    /// Timely worker threads per pipeline.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// At most this many requests inside each pipeline's dataflow at once.
    #[arg(long, default_value_t = DEFAULT_SERVE_INFLIGHT)]
    pub max_inflight: usize,
    /// Each pipeline's admission queue; when it is full, requests are refused (503 /
    /// UNAVAILABLE) at once.
    #[arg(long, default_value_t = DEFAULT_QUEUE)]
    pub queue: usize,
    /// Seconds a request may take when it names no deadline of its own (`timeout` header,
    /// gRPC deadline).
    #[arg(long, value_name = "SECS")]
    pub default_timeout: Option<f64>,
    /// On SIGTERM, seconds in-flight requests get to finish.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, default_value_t = mars_serve::state::DEFAULT_MAX_BODY)]
    pub max_body_bytes: usize,
    /// At most this many HTTP requests open at once, over all pipelines (being read,
    /// queued or answered); more get 503 before their body is read.
    #[arg(long, default_value_t = mars_serve::state::DEFAULT_MAX_OPEN)]
    pub max_open_requests: usize,
    /// At most this many MiB of request bodies held at once (each request reserves its
    /// Content-Length, or --max-body-bytes without one); more get 503 before their body is
    /// read. At least --max-body-bytes.
    #[arg(long, value_name = "MIB", default_value_t = mars_serve::state::DEFAULT_MAX_OPEN_BYTES >> 20)]
    pub max_open_mib: usize,
    /// Allow `{"$file": …}` and `{"$npy": …}` inputs naming relative paths inside DIR (by
    /// default served requests carry their data inline).
    #[arg(long, value_name = "DIR")]
    pub allow_files: Option<PathBuf>,
    /// Require `Authorization: Bearer KEY` (KEY is this file's first line) on every endpoint
    /// but health and metrics.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// `on`: move replicas within each plan's ranges as the load demands (SPEC 10).
    #[arg(long, value_enum, default_value_t = super::run::Elastic::Off)]
    pub elastic: super::run::Elastic,
    /// Serve HTTP and gRPC over TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds each pipeline's warm-up request may take before it turns ready (0: no
    /// warm-up; readiness then follows loading alone).
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    pub warmup_timeout: f64,
    /// Serve as process 0 of a cluster whose processes are listed here (`host:port` a line,
    /// in the plan's worker order); start the others with `marsc worker PLAN --process I`.
    #[arg(long, value_name = "FILE", conflicts_with = "local_cluster")]
    pub hosts: Option<PathBuf>,
    /// Start a cluster of N processes on 127.0.0.1 (this one is process 0), for development
    /// and tests.
    #[arg(long, value_name = "N")]
    pub local_cluster: Option<usize>,
    /// In a cluster: the file holding the run token every process shares.
    #[arg(long, value_name = "FILE")]
    pub cluster_secret: Option<PathBuf>,
    /// In a cluster: seconds to wait for every process to connect.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub connect_timeout: f64,
    /// In a cluster: a process whose heartbeat is silent this many seconds fails the
    /// pipeline (readiness turns false, requests are answered 503).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub peer_timeout: f64,
    /// At exit, write each pipeline's node stats against its plan (the
    /// `/v1/pipelines/NAME/stats` report) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// No stats table on stderr at exit.
    #[arg(long)]
    pub quiet: bool,
}

fn read_file(flag: &str, path: &std::path::Path) -> miette::Result<Vec<u8>> {
    std::fs::read(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read --{flag} {}", path.display()))
}

fn addr(flag: &str, v: &str) -> miette::Result<Option<SocketAddr>> {
    if v == "off" {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| {
        miette!(
            code = "mars::serve::address",
            "--{flag} `{v}` is not an address like 127.0.0.1:8000 (or `off`)"
        )
    })
}

fn seconds(flag: &str, v: f64) -> miette::Result<Duration> {
    if v.is_finite() && v > 0.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(miette!(
            code = "mars::serve::seconds",
            "--{flag} must be a positive number of seconds, got {v}"
        ))
    }
}

pub fn run(mut args: Args) -> miette::Result<ExitCode> {
    let deployment = match &args.deployment {
        Some(path) => Some(super::deployment::load(path)?),
        None => None,
    };
    let mut offline = None;
    if let Some(d) = deployment {
        args.plans = d.online;
        offline = d.offline;
    }
    let http = addr("http", &args.http)?;
    let grpc = addr("grpc", &args.grpc)?;
    if http.is_none() && grpc.is_none() {
        return Err(miette!(
            code = "mars::serve::address",
            "both --http and --grpc are off: nothing to listen on"
        ));
    }
    let api_key = match &args.api_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .into_diagnostic()
                .wrap_err_with(|| format!("cannot read --api-key-file {}", path.display()))?;
            let key = text.lines().next().unwrap_or("").trim().to_string();
            if key.is_empty() {
                return Err(miette!(
                    code = "mars::serve::api_key",
                    "--api-key-file {} has no key on its first line",
                    path.display()
                ));
            }
            Some(key)
        }
        None => None,
    };
    if let Some(dir) = &args.allow_files {
        if !dir.is_dir() {
            return Err(miette!(
                code = "mars::serve::allow_files",
                "--allow-files {} is not a folder",
                dir.display()
            ));
        }
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(mars_serve::tls::Tls {
            cert_pem: read_file("tls-cert", cert)?,
            key_pem: read_file("tls-key", key)?,
        }),
        _ => None,
    };
    let warmup = match args.warmup_timeout {
        t if t == 0.0 => None,
        t => Some(seconds("warmup-timeout", t)?),
    };
    let clustered = args.hosts.is_some() || args.local_cluster.is_some();
    if clustered && args.plans.len() != 1 {
        return Err(miette!(
            code = "mars::serve::cluster",
            "a cluster serves one plan; {} were given",
            args.plans.len()
        ));
    }
    // A local cluster's other processes run as children (`marsc worker`), stopped on every
    // way out; they exit by themselves once the served dataflow ends.
    let mut peers = match args.local_cluster {
        Some(0) => {
            return Err(miette!(
                code = "mars::cluster::size",
                "--local-cluster needs at least 1 process"
            ))
        }
        Some(n) => Some(super::run::spawn_peers(
            &args.plans[0],
            n,
            args.workers.max(1),
        )?),
        None => None,
    };
    let cluster = match (&args.hosts, &peers) {
        (Some(path), _) => Some(mars_runtime::cluster::Cluster {
            hosts: super::run::read_hosts(path)?,
            process: 0,
            token: super::run::read_secret(args.cluster_secret.as_deref())?,
        }),
        (None, Some(p)) => Some(p.cluster()),
        (None, None) => None,
    };
    if let Some(c) = &cluster {
        mars_runtime::cluster::report_lost_links(c.hosts.clone());
    }
    let max_open_bytes = args.max_open_mib.saturating_mul(1 << 20);
    if max_open_bytes < args.max_body_bytes {
        return Err(miette::miette!(
            "--max-open-mib {} is less than one largest body (--max-body-bytes {}): no such \
             request could ever be read",
            args.max_open_mib,
            args.max_body_bytes
        ));
    }
    let mut pipelines = Vec::new();
    for path in &args.plans {
        let (plan, base_dir) = super::run::load_plan(path)?;
        pipelines.push(Pipeline { plan, base_dir });
    }
    let config = Config {
        http,
        grpc,
        limits: Limits {
            default_timeout: args
                .default_timeout
                .map(|t| seconds("default-timeout", t))
                .transpose()?,
            max_body: args.max_body_bytes,
            api_key,
            max_open: args.max_open_requests.max(1),
            max_open_bytes,
        },
        drain_timeout: seconds("drain-timeout", args.drain_timeout)?,
        service: ServiceOptions {
            workers: args.workers.max(1),
            max_inflight: args.max_inflight.max(1),
            queue: args.queue.max(1),
            allow_files: args.allow_files.clone(),
            observer: None,
            elastic: args.elastic == super::run::Elastic::On,
            cluster,
            connect_timeout: super::run::connect_timeout(args.connect_timeout)?,
            peer_timeout: super::run::seconds(args.peer_timeout, "--peer-timeout")?,
        },
        tls,
        warmup,
        priority: offline.as_ref().map(|o| o.priority.clone()),
    };
    let offline = offline.map(super::deployment::start).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .into_diagnostic()
        .wrap_err("starting the async runtime")?;
    let registry = mars_stdlib::registry();
    let drained = runtime.block_on(mars_serve::serve(
        config,
        pipelines,
        registry,
        announce,
        shutdown_signal(),
    ));
    if let Some(p) = &mut peers {
        // After a clean drain the other processes end with the dataflow; otherwise stop them.
        let stop = !matches!(&drained, Ok(d) if d.complete);
        for failed in p.wait(stop) {
            if !stop {
                eprintln!("warning[mars::cluster::lost]: cluster {failed}");
            }
        }
    }
    if let Some(o) = offline {
        o.finish(seconds("drain-timeout", args.drain_timeout)?)?;
    }
    if let Ok(d) = &drained {
        if !args.quiet {
            for r in &d.reports {
                eprint!("{}", r.summary());
            }
        }
        if let Some(path) = &args.stats_json {
            let text = serde_json::to_string_pretty(&serde_json::json!({ "pipelines": d.reports }))
                .into_diagnostic()?;
            super::file_io::write_whole(path, (text + "\n").as_bytes())?;
        }
    }
    match drained {
        Ok(d) if d.complete => Ok(ExitCode::SUCCESS),
        Ok(_) => {
            eprintln!("warning[mars::serve::drain]: some requests were still in flight at the drain bound");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(miette!(code = "mars::serve::start", "{e}")),
    }
}

/// One line on stdout with the bound addresses (tests and scripts read it).
fn announce(b: Bound) {
    use std::io::Write;
    let show = |a: Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
    println!("marsc serve: http={} grpc={}", show(b.http), show(b.grpc));
    let _ = std::io::stdout().flush();
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    // `marsc` takes signals on a thread of its own (`crate::shutdown`); it hands the first
    // SIGTERM/SIGINT to the server, which then drains.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    crate::shutdown::drain_on_signal(move || {
        let _ = tx.send(());
    });
    let _ = rx.await;
}
