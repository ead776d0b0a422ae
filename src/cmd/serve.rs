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
    #[arg(required = true)]
    pub plans: Vec<PathBuf>,
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
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
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

pub fn run(args: Args) -> miette::Result<ExitCode> {
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
        },
        drain_timeout: seconds("drain-timeout", args.drain_timeout)?,
        service: ServiceOptions {
            workers: args.workers.max(1),
            max_inflight: args.max_inflight.max(1),
            queue: args.queue.max(1),
            allow_files: args.allow_files.clone(),
            observer: None,
            cluster: None,
            elastic: args.elastic == super::run::Elastic::On,
        },
    };
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
