//! `marsc bench serve`: a plan behind `marsc serve`'s HTTP endpoint in this process, loaded by
//! an HTTP/1.1 client (`mars_serve::bench`) closed-loop at fixed client counts and open-loop
//! at fixed Poisson rates; reports req/s, p50, p99, p99.9 and refusals for each load.
//!
//! The default plan is the two-node shape: A passes its input on, B takes 2 ms per
//! batch of up to 16 (`std.bench.delay`). `--plan pipelines/title_translate.plan.yaml --input
//! pipelines/data/titles.jsonl` loads the demo pipeline instead.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use miette::{miette, IntoDiagnostic, WrapErr};

use mars_runtime::run::service::ServiceOptions;
use mars_runtime::scenarios::{batch_dynamic, batch_none, delay_chain};
use mars_serve::bench::{run_load, Load, LoadReport};
use mars_serve::{Config, Limits, Pipeline};

#[derive(clap::Args)]
pub struct Args {
    /// The plan to serve (default: the built-in A → B, B 2 ms per batch of up to 16).
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Request bodies, one JSON object a line, sent in turn (default: `{"x": i}`).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Closed-loop client counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub clients: Vec<usize>,
    /// Open-loop Poisson rates in requests per second, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Seconds per load.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// The admission queue.
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
    /// Requests inside the dataflow at once.
    #[arg(long, default_value_t = 512)]
    pub max_inflight: usize,
}

/// The A → B shape.
fn ab_plan() -> mars_plan::Plan {
    let mut plan = delay_chain("ab", &[0.0, 0.0], batch_dynamic(16, 1.0), 1);
    plan.nodes[0].batch = batch_none();
    plan.nodes[1].params.insert("batch_ms".into(), 2.0.into());
    plan.predicted.throughput = 8000.0;
    plan
}

/// An open load at the rate the plan was compiled for (`--rate`), against the plan's latencies
/// at that rate.
#[derive(Debug, Clone, serde::Serialize)]
struct PredictionCheck {
    rate: f64,
    measured_p50_ms: f64,
    measured_p99_ms: f64,
    predicted_p50_ms: f64,
    predicted_p99_ms: f64,
    p50_ratio: f64,
    p99_ratio: f64,
}

impl PredictionCheck {
    fn of(r: &LoadReport, rate: f64, predicted: &mars_plan::PipelinePrediction) -> PredictionCheck {
        let ratio = |m: f64, p: f64| {
            if p > 0.0 {
                (m / p * 1000.0).round() / 1000.0
            } else {
                f64::NAN
            }
        };
        PredictionCheck {
            rate,
            measured_p50_ms: r.p50_ms,
            measured_p99_ms: r.p99_ms,
            predicted_p50_ms: predicted.latency_p50_ms,
            predicted_p99_ms: predicted.latency_p99_ms,
            p50_ratio: ratio(r.p50_ms, predicted.latency_p50_ms),
            p99_ratio: ratio(r.p99_ms, predicted.latency_p99_ms),
        }
    }
}

fn print(r: &LoadReport) {
    println!(
        "  {:<32} {:>9.1} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   p99.9 {:>7.2} ms   refused {:>6} (p99 {:.2} ms)   errors {}",
        r.load, r.throughput, r.p50_ms, r.p99_ms, r.p999_ms, r.refused, r.refused_p99_ms, r.errors
    );
}

pub fn run(args: Args, json: Option<PathBuf>) -> miette::Result<ExitCode> {
    let (plan, base_dir) = match &args.plan {
        Some(p) => super::run::load_plan(p)?,
        None => (ab_plan(), PathBuf::from(".")),
    };
    let name = plan.pipeline.clone();
    let predicted = plan.predicted.clone();
    let planned_rate = plan.rate;
    let bodies: Vec<Vec<u8>> = match &args.input {
        Some(path) => std::fs::read_to_string(path)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot read {}", path.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.as_bytes().to_vec())
            .collect(),
        None => (0..1000)
            .map(|i| format!("{{\"x\": {i}}}").into_bytes())
            .collect(),
    };
    if bodies.is_empty() {
        return Err(miette!(
            code = "mars::bench::input",
            "no requests in --input"
        ));
    }
    let bodies = Arc::new(bodies);
    let config = Config {
        http: Some(([127, 0, 0, 1], 0).into()),
        grpc: None,
        limits: Limits::open_defaults(),
        drain_timeout: Duration::from_secs(10),
        service: ServiceOptions {
            queue: args.queue,
            max_inflight: args.max_inflight,
            ..ServiceOptions::default()
        },
        tls: None,
        warmup: Some(Duration::from_secs(60)),
        priority: None,
    };
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .into_diagnostic()?;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let registry = mars_stdlib::registry();
    let server = server_rt.spawn(mars_serve::serve(
        config,
        vec![Pipeline { plan, base_dir }],
        registry,
        move |b| {
            let _ = addr_tx.send(b.http);
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let addr = addr_rx
        .recv()
        .ok()
        .flatten()
        .ok_or_else(|| miette!(code = "mars::bench::serve", "the server did not start"))?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .into_diagnostic()?;
    // Wait for readiness (models load after the listener is bound).
    client_rt.block_on(async {
        for _ in 0..1200 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s
                    .write_all(
                        b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
                if buf.starts_with(b"HTTP/1.1 200") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let path = format!("/v1/pipelines/{name}");
    println!(
        "serve: pipeline `{name}` over HTTP (POST {path}), {} s per load",
        args.seconds
    );
    println!(
        "plan: {}; predicts {:.1} req/s at saturation, p50 {:.2} ms, p99 {:.2} ms{}",
        planned_rate.map_or_else(
            || "made for saturation".to_string(),
            |r| format!("planned for {r} req/s")
        ),
        predicted.throughput,
        predicted.latency_p50_ms,
        predicted.latency_p99_ms,
        planned_rate.map_or_else(String::new, |r| format!(" at {r} req/s")),
    );
    let mut reports = Vec::new();
    let mut checks = Vec::new();
    let loads = args
        .clients
        .iter()
        .map(|&c| Load::Closed { clients: c })
        .chain(args.rates.iter().map(|&rate| Load::Open {
            rate,
            connections: 1024,
        }));
    for load in loads {
        let r = client_rt.block_on(run_load(
            addr,
            &path,
            Arc::clone(&bodies),
            load,
            args.seconds,
        ));
        print(&r);
        if let (Load::Open { rate, .. }, Some(planned)) = (load, planned_rate) {
            if (rate - planned).abs() <= planned * 0.01 {
                let check = PredictionCheck::of(&r, planned, &predicted);
                println!(
                    "  {:<32} predicted p50 {:>7.2} ms   p99 {:>7.2} ms   measured/predicted: p50 {:.2}×, p99 {:.2}×",
                    "(the plan, at its rate)",
                    check.predicted_p50_ms,
                    check.predicted_p99_ms,
                    check.p50_ratio,
                    check.p99_ratio
                );
                checks.push(check);
            }
        }
        reports.push(r);
    }
    let _ = stop_tx.send(());
    let drained = server_rt.block_on(server).ok().and_then(Result::ok);
    let nodes = drained.map(|d| d.reports).unwrap_or_default();
    // Every load together, node by node, against the plan (the served stats of SPEC 8.3.1).
    if !nodes.is_empty() {
        println!("nodes over all loads:");
    }
    for n in &nodes {
        for line in n.summary().lines() {
            println!("  {line}");
        }
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(
            &serde_json::json!({"serve": reports, "prediction_checks": checks, "nodes": nodes}),
        )
        .into_diagnostic()?;
        std::fs::write(&path, text).into_diagnostic()?;
    }
    Ok(ExitCode::SUCCESS)
}
