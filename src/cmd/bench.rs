//! `marsc bench`: whole-run benchmarks of the runtime, each printing what it measured next to
//! the bound it is held to. The scenarios live in `mars_runtime::scenarios`.
//!
//! - `pipelining`: four `std.bench.delay` stages of 2, 8, 4 and 1 ms per item, `@batch(none)
//!   @replicas(1)`: the bound is the slowest stage (125 req/s); serial execution would give 66.7.
//! - `overhead`: a chain of no-op nodes (`bench.delay` of 0 ms); requests/s end to end, input
//!   parsing and output encoding included, and the cost per request per node.
//! - `memory`: requests through a slow node; peak RSS after a short run and after a long one.
//! - `fidelity PLAN --input F`: a compiled plan's measured throughput over its prediction.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

use miette::{miette, IntoDiagnostic, WrapErr};

use mars_runtime::run::RunOptions;
use mars_runtime::scenarios::{batch_dynamic, batch_none, delay_chain, measure, CountingSink};
use mars_runtime::stats::peak_rss_mib;
use mars_runtime::RunReport;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub which: Which,
    /// Also write the results as JSON to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum Which {
    /// Four delay stages (2, 8, 4, 1 ms) pipelined: measured vs the 125 req/s bound.
    Pipelining {
        #[arg(long, default_value_t = 1000)]
        requests: u64,
    },
    /// A chain of no-op nodes: requests/s end to end and the cost per node.
    Overhead {
        #[arg(long, default_value_t = 1_000_000)]
        requests: u64,
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// Requests through a slow node: peak RSS stays flat as the input grows.
    Memory {
        #[arg(long, default_value_t = 300_000)]
        requests: u64,
    },
    /// Delay stages spread over a local cluster of processes: measured vs predicted, and the
    /// cost per request of crossing processes (a no-op chain, in one process and spread).
    Cluster {
        #[arg(long, default_value_t = 3)]
        processes: usize,
        #[arg(long, default_value_t = 1000)]
        requests: u64,
        #[arg(long, default_value_t = 300_000)]
        noop_requests: u64,
    },
    /// Run a compiled plan over an input file: measured throughput over the plan's prediction.
    Fidelity {
        plan: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

fn quiet() -> RunOptions {
    RunOptions::default()
}

fn fail(e: mars_runtime::RunError) -> miette::Report {
    miette!(code = "mars::bench::run", "{e}")
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    let registry = mars_stdlib::registry();
    let result = match args.which {
        Which::Pipelining { requests } => {
            let plan = delay_chain("pipelining", &[2.0, 8.0, 4.0, 1.0], batch_none(), 1);
            let (r, _) = measure(&plan, &registry, requests, quiet()).map_err(fail)?;
            let bound = 125.0;
            let measured = r.stats.throughput;
            println!("pipelining: 4 delay stages (2, 8, 4, 1 ms/item), batch none, 1 replica each, {requests} requests");
            println!("  measured   {measured:>8.1} req/s");
            println!(
                "  bound      {bound:>8.1} req/s (slowest stage, 8 ms)   measured/bound = {:.3}",
                measured / bound
            );
            println!(
                "  serial     {:>8.1} req/s (15 ms per request)       measured/serial = {:.2}",
                1000.0 / 15.0,
                measured / (1000.0 / 15.0)
            );
            print_nodes(&r);
            serde_json::json!({"bench": "pipelining", "requests": requests, "measured": measured, "bound": bound,
                               "ratio": measured / bound, "stats": r.stats})
        }
        Which::Overhead {
            requests,
            nodes,
            workers,
        } => {
            let plan = delay_chain("overhead", &vec![0.0; nodes], batch_dynamic(1024, 0.0), 1);
            let opts = RunOptions { workers, ..quiet() };
            let (r, bytes) = measure(&plan, &registry, requests, opts).map_err(fail)?;
            let rate = r.stats.throughput;
            let per_node_us = 1e6 / rate / nodes as f64;
            println!("overhead: {nodes} no-op nodes, {requests} requests, {workers} worker(s), JSON in and out ({bytes} bytes written)");
            println!("  measured   {rate:>12.0} req/s   (bound: >= 200000)   {:.2} us per request per node", per_node_us);
            print_nodes(&r);
            serde_json::json!({"bench": "overhead", "requests": requests, "nodes": nodes, "workers": workers,
                               "measured": rate, "bound": 200000.0, "per_node_us": per_node_us, "stats": r.stats})
        }
        Which::Memory { requests } => {
            // A slow node: 0.02 ms per item in batches of up to 64, ~50,000 items/s at most,
            // slower than input can be read, so without flow control the queue would grow.
            let plan = delay_chain("memory", &[0.02], batch_dynamic(64, 1.0), 1);
            let small = requests / 10;
            let (r1, _) = measure(&plan, &registry, small, quiet()).map_err(fail)?;
            let after_small = peak_rss_mib().unwrap_or(0.0);
            let (r2, _) = measure(&plan, &registry, requests, quiet()).map_err(fail)?;
            let after_large = peak_rss_mib().unwrap_or(0.0);
            println!(
                "memory: a slow node (0.02 ms/item), max-inflight {}",
                mars_runtime::run::DEFAULT_MAX_INFLIGHT
            );
            println!(
                "  {small:>8} requests: {:>8.1} req/s, peak RSS {after_small:>7.1} MiB",
                r1.stats.throughput
            );
            println!("  {requests:>8} requests: {:>8.1} req/s, peak RSS {after_large:>7.1} MiB   (bound: well under 400 MiB)", r2.stats.throughput);
            serde_json::json!({"bench": "memory", "requests": requests, "peak_rss_mib_small": after_small,
                               "peak_rss_mib": after_large, "bound_mib": 400.0, "stats": r2.stats})
        }
        Which::Cluster {
            processes,
            requests,
            noop_requests,
        } => {
            let stages = delay_chain("cluster", &[2.0, 8.0, 4.0], batch_none(), 1);
            let spread = on_workers(stages, processes);
            let r = run_on_cluster(&spread, processes, requests)?;
            let predicted = spread.predicted.throughput;
            let noop = delay_chain(
                "noop",
                &vec![0.0; 3 * processes.max(1)],
                batch_dynamic(1024, 0.0),
                1,
            );
            let (one, _) = measure(&noop, &registry, noop_requests, quiet()).map_err(fail)?;
            let many = run_on_cluster(&on_workers(noop, processes), processes, noop_requests)?;
            let per_request_us = 1e6 / many.stats.throughput - 1e6 / one.stats.throughput;
            println!("cluster: {processes} processes on 127.0.0.1");
            println!(
                "  delay stages 2, 8, 4 ms, one per process: {:.1} req/s, predicted {predicted:.1}, measured/predicted = {:.3} (bound: >= 0.9)",
                r.stats.throughput,
                r.stats.throughput / predicted
            );
            println!(
                "  no-op chain of {} nodes: {:.0} req/s in one process, {:.0} req/s spread over {processes}",
                3 * processes,
                one.stats.throughput,
                many.stats.throughput
            );
            println!("  cross-process cost: {per_request_us:.2} us per request ({processes} hops between processes)");
            serde_json::json!({"bench": "cluster", "processes": processes, "measured": r.stats.throughput,
                               "predicted": predicted, "ratio": r.stats.throughput / predicted,
                               "noop_one_process": one.stats.throughput, "noop_spread": many.stats.throughput,
                               "cross_process_us_per_request": per_request_us})
        }
        Which::Fidelity {
            plan,
            input,
            workers,
        } => {
            let (p, base_dir) = super::run::load_plan(&plan)?;
            let f = File::open(&input)
                .into_diagnostic()
                .wrap_err_with(|| format!("cannot open {}", input.display()))?;
            let opts = RunOptions {
                workers,
                input_dir: input.parent().map(PathBuf::from),
                ..quiet()
            };
            let mut sink = CountingSink::default();
            let r = mars_runtime::run_plan(
                &p,
                &base_dir,
                &registry,
                opts,
                BufReader::new(f),
                &mut sink,
            )
            .map_err(fail)?;
            let predicted = p.predicted.throughput;
            let ratio = if predicted > 0.0 {
                r.stats.throughput / predicted
            } else {
                0.0
            };
            println!(
                "fidelity: {} ({} requests)",
                plan.display(),
                r.stats.requests
            );
            println!("  measured   {:>10.1} req/s", r.stats.throughput);
            println!(
                "  predicted  {predicted:>10.1} req/s (bottleneck {})",
                p.predicted.bottleneck
            );
            println!("  measured/predicted = {ratio:.3}   (bound: within 0.85..1.15)");
            print_nodes(&r);
            serde_json::json!({"bench": "fidelity", "plan": plan.display().to_string(), "measured": r.stats.throughput,
                               "predicted": predicted, "ratio": ratio, "stats": r.stats})
        }
    };
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&result).into_diagnostic()? + "\n",
        )
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Split the plan's chain of nodes into `processes` contiguous runs on workers `w0, w1, …`.
fn on_workers(mut plan: mars_plan::Plan, processes: usize) -> mars_plan::Plan {
    let n = processes.max(1);
    let len = plan.nodes.len().max(1);
    for (i, node) in plan.nodes.iter_mut().enumerate() {
        node.worker = format!("w{}", i * n / len);
    }
    plan
}

/// Run `plan` over `requests` synthetic requests on a local cluster: this process is
/// process 0, the others are `marsc worker` children.
fn run_on_cluster(
    plan: &mars_plan::Plan,
    processes: usize,
    requests: u64,
) -> miette::Result<RunReport> {
    let dir = std::env::temp_dir().join(format!("mars-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).into_diagnostic()?;
    let plan_path = dir.join(format!("{}.plan.yaml", plan.pipeline));
    std::fs::write(&plan_path, plan.to_yaml()).into_diagnostic()?;
    let (hosts, mut children, hosts_file) = super::run::spawn_peers(&plan_path, processes, 1)?;
    mars_runtime::cluster::exit_on_lost_peer(hosts.clone());
    let opts = RunOptions {
        cluster: Some(mars_runtime::cluster::Cluster { hosts, process: 0 }),
        ..quiet()
    };
    let mut sink = CountingSink::default();
    let input = mars_runtime::scenarios::SyntheticInput::new(requests);
    let result =
        mars_runtime::run_plan(plan, &dir, &mars_stdlib::registry(), opts, input, &mut sink);
    for c in &mut children {
        if result.is_err() {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
    let _ = std::fs::remove_file(&hosts_file);
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(fail)
}

fn print_nodes(r: &RunReport) {
    for (id, n) in &r.stats.nodes {
        println!(
            "  node {id:<6} batches {:>8}  mean batch {:>7.1}  utilization {:>5.1}%",
            n.batches,
            n.mean_batch,
            n.utilization * 100.0
        );
    }
}
