//! `marsc bench`: whole-run benchmarks of the runtime, each printing what it measured next to
//! the bound it is held to. The scenarios live in `mars_runtime::scenarios`.
//!
//! - `pipelining`: four `std.bench.delay` stages of 2, 8, 4 and 1 ms per item, `@batch(none)
//!   @replicas(1)`: the bound is the slowest stage (125 req/s); serial execution would give 66.7.
//! - `overhead`: a chain of no-op nodes (`bench.delay` of 0 ms); requests/s end to end, input
//!   parsing and output encoding included, and the cost per request per node.
//! - `memory`: requests through a slow node; peak RSS after a short run and after a long one.
//! - `fidelity PLAN --input F`: a compiled plan's measured throughput over its prediction.
//! - `continuous`: the tiny translator on a heavy-tailed output-length mix under static,
//!   dynamic and continuous batching at one maximum batch: throughput, latency, and the ratio
//!   continuous/static against the ideal the length mix allows (SPEC §6.5).
//! - `quantize`: the tiny translator in every `quantize` mode: held-out exact match and
//!   prefill / decode-step time (SPEC §4.2).

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

/// A share from 0 to 1 (NaN and infinity refused: SPEC 7.1).
fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        Ok(x) => Err(format!("{x} is not a share from 0 to 1")),
        Err(e) => Err(e.to_string()),
    }
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
        /// `unbatched`: `delay(x) @batch(none)` nodes compiled without a profile; `batched`:
        /// the same without `@batch` (batchable: dynamic, no wait); `cluster`: the unbatched
        /// chain spread over `--processes` processes against one process; `pool`: the chain
        /// built in code with batches of 1,024 on replica threads; `all`: each in turn.
        #[arg(long, value_enum, default_value_t = OverheadMode::All)]
        mode: OverheadMode,
        #[arg(long, default_value_t = 3)]
        processes: usize,
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
    /// The tiny translator under static, dynamic and continuous batching at one max batch, on
    /// a heavy-tailed output-length mix: throughput, latency, continuous/static vs the ideal.
    Continuous {
        #[arg(long, default_value_t = 480)]
        requests: usize,
        #[arg(long, default_value_t = 16)]
        max_batch: u32,
        /// Rounds: the modes take turns this many times; each is reported by its median run.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Share of long outputs (10 to 12 words); the rest have 1 to 3.
        #[arg(long, default_value_t = 0.15, value_parser = share)]
        long_share: f64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// The translator's weights (default: pipelines/weights/mt.safetensors of this repo).
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// The tiny translator in every `quantize` mode: held-out exact match, load time (AWQ's
    /// search included), prefill and decode-step time at batch 1 and 16.
    Quantize {
        /// Held-out numbers to translate per mode.
        #[arg(long, default_value_t = 500)]
        held_out: usize,
        /// Timed repetitions per measurement (the median is reported).
        #[arg(long, default_value_t = 200)]
        reps: usize,
        /// The translator's weights, calibrated (default: pipelines/weights/mt.safetensors).
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// A CPU-bound pipeline of spin and delay nodes on a 2-core target, profiled (the
    /// runtime's own cost included), compiled and run here: measured throughput over the
    /// plan's prediction (bound: within ±10%).
    FidelityCpu {
        #[arg(long, default_value_t = 40_000)]
        requests: u64,
        /// Cores of the target (the plan keeps them busy).
        #[arg(long, default_value_t = 2.0)]
        cpus: f64,
    },
    /// A plan behind `marsc serve`: closed- and open-loop HTTP load, req/s and tail latency.
    Serve(super::bench_serve::Args),
    /// zh→en translators (the `llama`/`gemma3` nodes of .mars files) scored with chrF.
    Translate(super::bench_translate::Args),
    /// OCR on rendered images: character accuracy, line exact match, detection recall, images/s.
    Ocr(super::bench_ocr::Args),
    /// A stage three times slower than its profile: fixed vs elastic vs the true profile's plan.
    Elastic(super::bench_elastic::Args),
    /// An online pipeline and an offline run on one machine: a load step, the online p99 and
    /// the cores the offline run takes back (SPEC 10.8).
    Priority(super::bench_priority::Args),
    /// SmolLM2 in each `quantize` mode: decode/prefill speed, perplexity, KL, agreement.
    Llm(super::bench_llm::Args),
    /// `compress_prompt` on long support-chat prompts: time to first token and whether the
    /// answers still state the fact, against the uncompressed prompts.
    Compress(super::bench_compress::Args),
    /// SmolLM2's KV options on long prompts: pruning (`kv_keep`) and int8 KV, decode speed,
    /// agreement with the unpruned f32 cache, sequences per KV memory.
    LlmKv(super::bench_llm_kv::Args),
    /// Run a compiled plan over an input file: measured throughput over the plan's prediction.
    Fidelity {
        plan: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OverheadMode {
    Unbatched,
    Batched,
    Cluster,
    Pool,
    All,
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
        Which::Serve(a) => return super::bench_serve::run(a, args.json),
        Which::Translate(a) => return super::bench_translate::run(a, args.json),
        Which::Ocr(a) => return super::bench_ocr::run(a, args.json),
        Which::Elastic(a) => super::bench_elastic::bench(a)?,
        Which::Priority(a) => super::bench_priority::bench(a)?,
        Which::Llm(a) => return super::bench_llm::run(a, args.json),
        Which::Compress(a) => return super::bench_compress::run(a, args.json),
        Which::LlmKv(a) => return super::bench_llm_kv::run(a, args.json),
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
            mode,
            processes,
        } => overhead::bench(requests, nodes, workers, mode, processes)?,
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
        Which::Continuous {
            requests,
            max_batch,
            long_share,
            seed,
            weights,
            repeat,
        } => continuous::bench(requests, max_batch, repeat, long_share, seed, weights)?,
        Which::Quantize {
            held_out,
            reps,
            weights,
        } => quantize::bench(held_out, reps, weights)?,
        Which::FidelityCpu { requests, cpus } => fidelity_cpu(requests, cpus)?,
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
            if let Some(steady) = r.stats.steady_throughput {
                println!(
                    "  steady     {steady:>10.1} req/s (10%-90% of the records: {:.3} of the prediction)",
                    steady / predicted.max(1e-9)
                );
            }
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
    plan.workers = (0..n).map(|w| format!("w{w}")).collect();
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
    let mut peers = super::run::spawn_peers(&plan_path, processes, 1)?;
    mars_runtime::cluster::report_lost_links(peers.hosts.clone());
    let opts = RunOptions {
        cluster: Some(peers.cluster()),
        ..quiet()
    };
    let mut sink = CountingSink::default();
    let input = mars_runtime::scenarios::SyntheticInput::new(requests);
    let result =
        mars_runtime::run_plan(plan, &dir, &mars_stdlib::registry(), opts, input, &mut sink);
    peers.wait(result.is_err());
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

/// `marsc bench overhead`.
mod overhead {
    use miette::IntoDiagnostic;

    use super::{fail, measure_json, on_workers, quiet, run_on_cluster, OverheadMode};
    use mars_runtime::run::RunOptions;
    use mars_runtime::scenarios::{batch_dynamic, delay_chain, measure};

    /// A chain of `nodes` `std.bench.delay(…)` nodes (no cost), compiled by `marsc compile`
    /// without a profile, `@batch(none)` on each when `unbatched`.
    fn compiled_chain(nodes: usize, unbatched: bool) -> miette::Result<mars_plan::Plan> {
        let dir = std::env::temp_dir().join(format!("mars-overhead-{}", std::process::id()));
        std::fs::create_dir_all(&dir).into_diagnostic()?;
        let ann = if unbatched { "  @batch(none)" } else { "" };
        let mut src =
            String::from("use std.bench.{delay}\n\npipeline overhead(x: Int) -> (y: Int) {\n");
        let mut prev = "x".to_string();
        for i in 0..nodes.max(1) {
            let name = if i + 1 == nodes.max(1) {
                "y".to_string()
            } else {
                format!("s{i}")
            };
            let kw = if name == "y" { "" } else { "let " };
            src.push_str(&format!(
                "  {kw}{name} = delay({prev}, batch_ms = 0.0){ann}\n"
            ));
            prev = name;
        }
        src.push_str("}\n");
        let file = dir.join("overhead.mars");
        let out = dir.join("overhead.plan.yaml");
        std::fs::write(&file, src).into_diagnostic()?;
        let code = crate::cmd::compile::run(crate::cmd::compile::Args {
            file,
            profile: None,
            target: None,
            output: Some(out.clone()),
            pipeline: None,
            explain: false,
            allow_slo_miss: false,
            rate: None,
        })?;
        if code != std::process::ExitCode::SUCCESS {
            return Err(miette::miette!("the overhead chain did not compile"));
        }
        let (plan, _) = crate::cmd::run::load_plan(&out)?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(plan)
    }

    fn line(what: &str, rate: f64, nodes: usize, target: &str, plan: &mars_plan::Plan) {
        let ns = 1e9 / rate / nodes as f64;
        println!(
            "  {what:<10} {rate:>12.0} req/s  {ns:>8.1} ns per request per node   ({} of {} nodes inline; {target})",
            plan.inline.len(),
            plan.nodes.len()
        );
    }

    pub fn bench(
        requests: u64,
        nodes: usize,
        workers: usize,
        mode: OverheadMode,
        processes: usize,
    ) -> miette::Result<serde_json::Value> {
        let registry = mars_stdlib::registry();
        let opts = || RunOptions { workers, ..quiet() };
        let all = mode == OverheadMode::All;
        let mut json = serde_json::Map::new();
        println!("overhead: {nodes} no-op nodes, {requests} requests, {workers} worker(s), JSON in and out");
        if all || mode == OverheadMode::Unbatched || mode == OverheadMode::Cluster {
            let plan = compiled_chain(nodes, true)?;
            let (one, _) = measure(&plan, &registry, requests, opts()).map_err(fail)?;
            if all || mode == OverheadMode::Unbatched {
                line(
                    "unbatched",
                    one.stats.throughput,
                    nodes,
                    "bound: >= 200000",
                    &plan,
                );
                json.insert("unbatched".into(), measure_json(&one, nodes));
            }
            if all || mode == OverheadMode::Cluster {
                let spread = on_workers(plan.clone(), processes);
                let many = run_on_cluster(&spread, processes, requests)?;
                line(
                    &format!("{processes} procs"),
                    many.stats.throughput,
                    nodes,
                    "",
                    &plan,
                );
                let ratio = one.stats.throughput / many.stats.throughput.max(1e-9);
                println!("  one process / {processes} processes = {ratio:.2}   (bound: <= 2)");
                json.insert("cluster".into(), measure_json(&many, nodes));
                json.insert("one_process".into(), measure_json(&one, nodes));
                json.insert("cluster_slowdown".into(), ratio.into());
            }
        }
        if all || mode == OverheadMode::Batched {
            let plan = compiled_chain(nodes, false)?;
            let (r, _) = measure(&plan, &registry, requests, opts()).map_err(fail)?;
            line(
                "batched",
                r.stats.throughput,
                nodes,
                "bound: >= 1000000",
                &plan,
            );
            json.insert("batched".into(), measure_json(&r, nodes));
        }
        if all || mode == OverheadMode::Pool {
            let plan = delay_chain("overhead", &vec![0.0; nodes], batch_dynamic(1024, 0.0), 1);
            let (r, _) = measure(&plan, &registry, requests, opts()).map_err(fail)?;
            line(
                "pool",
                r.stats.throughput,
                nodes,
                "replica threads, batches of 1024",
                &plan,
            );
            json.insert("pool".into(), measure_json(&r, nodes));
        }
        json.insert("bench".into(), "overhead".into());
        json.insert("requests".into(), requests.into());
        json.insert("nodes".into(), nodes.into());
        Ok(serde_json::Value::Object(json))
    }
}

/// `marsc bench fidelity-cpu`: profile, compile and run a spin + delay pipeline whose
/// bottleneck is the CPU pool.
fn fidelity_cpu(requests: u64, cpus: f64) -> miette::Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!("mars-fidelity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).into_diagnostic()?;
    let src = "use std.bench.{delay, spin}\n\npipeline cpu_bound(x: Int) -> (y: Int) {\n  let a = spin(x, item_ms = 0.02)\n  let b = delay(a, batch_ms = 0.5, item_ms = 0.01)\n  let c = spin(b, item_ms = 0.03)\n  y = spin(c, batch_ms = 0.05, item_ms = 0.01)\n}\n";
    let file = dir.join("cpu_bound.mars");
    let target = dir.join("target.yaml");
    let profile = dir.join("cpu_bound.profile.yaml");
    let plan_path = dir.join("cpu_bound.plan.yaml");
    std::fs::write(&file, src).into_diagnostic()?;
    std::fs::write(
        &target,
        format!("mars_target: 1\nworkers:\n  - {{name: w0, cpus: {cpus}, memory_gb: 16}}\n"),
    )
    .into_diagnostic()?;
    super::profile::run(super::profile::Args {
        file: file.clone(),
        pipeline: None,
        target: target.clone(),
        output: profile.clone(),
        input: None,
        samples: 256,
        max_batch: 32,
        min_runs: 10,
        min_time_ms: 200,
        max_runs: 1000,
    })?;
    let code = super::compile::run(super::compile::Args {
        file,
        profile: Some(profile.clone()),
        target: Some(target),
        output: Some(plan_path.clone()),
        pipeline: None,
        explain: true,
        allow_slo_miss: false,
        rate: None,
    })?;
    if code != ExitCode::SUCCESS {
        return Err(miette!("the fidelity pipeline did not compile"));
    }
    let (plan, _) = super::run::load_plan(&plan_path)?;
    let runtime = mars_plan::Profile::from_yaml(
        &std::fs::read_to_string(&profile).into_diagnostic()?,
        "profile",
    )
    .into_diagnostic()?
    .runtime;
    let registry = mars_stdlib::registry();
    let (r, _) = measure(&plan, &registry, requests, quiet()).map_err(fail)?;
    let _ = std::fs::remove_dir_all(&dir);
    let predicted = plan.predicted.throughput;
    // The prediction is a saturation throughput: it is compared with the rate while the
    // pipeline was full, not with one that counts filling and draining it (at ~30k/s and a
    // 300 ms pipeline, those are a tenth of a 40,000-request run).
    let steady = r.stats.steady_throughput.unwrap_or(r.stats.throughput);
    let ratio = steady / predicted.max(1e-9);
    println!("fidelity-cpu: spin/delay/spin/spin on {cpus} cores, {requests} requests");
    if let Some(rt) = runtime {
        println!(
            "  runtime cost (profiled): {} us per request, {} us per hop, {} us per hand-off",
            rt.request_us, rt.hop_us, rt.batch_us
        );
    }
    println!(
        "  measured   {:>10.1} req/s over the whole run (filling and draining included)",
        r.stats.throughput
    );
    println!("  steady     {steady:>10.1} req/s (10%-90% of the records)");
    println!(
        "  predicted  {predicted:>10.1} req/s (bottleneck {})",
        plan.predicted.bottleneck
    );
    println!(
        "  steady/predicted = {ratio:.3}   (bound: within 0.9..1.1); whole run/predicted = {:.3}",
        r.stats.throughput / predicted.max(1e-9)
    );
    print_nodes(&r);
    Ok(
        serde_json::json!({"bench": "fidelity-cpu", "measured": r.stats.throughput, "steady": steady, "predicted": predicted,
                          "ratio": ratio, "runtime": runtime, "stats": r.stats}),
    )
}

/// A run's throughput and cost per request per node, as JSON.
fn measure_json(r: &RunReport, nodes: usize) -> serde_json::Value {
    let rate = r.stats.throughput;
    serde_json::json!({"measured": rate, "ns_per_request_per_node": 1e9 / rate.max(1e-9) / nodes.max(1) as f64,
                       "latency": r.stats.latency})
}

/// `marsc bench continuous`.
mod continuous {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use miette::{miette, IntoDiagnostic, WrapErr};

    use mars_plan::{BatchPolicy, BatchSpec, ModelImpl, Plan, PlanInput, PlanOutput};
    use mars_runtime::run::RunOptions;
    use mars_runtime::scenarios::{batch_dynamic, delay_chain};
    use mars_runtime::RunReport;
    use mars_stdlib::models::transformer_lm::SplitMix;
    use mars_stdlib::models::{numbers, padded_lm_factory, tokenizer::Tokenizer};

    /// Generated tokens are at most this many; the mix's longest outputs take 14 with `<eos>`.
    const MAX_TOKENS: i64 = 24;

    /// One request of the mix: its English phrase and the length of its French translation
    /// in the tokenizer's words.
    struct Phrase {
        english: String,
        words: usize,
    }

    /// `n` phrases, a share `long_share` of them with 10 to 12 French words (tokenizer words:
    /// `quatre-vingt-dix` is 3), the rest with 1 to 3, in a seeded random order.
    fn length_mix(tok: &Tokenizer, n: usize, long_share: f64, seed: u64) -> Vec<Phrase> {
        let mut rng = SplitMix(seed);
        (0..n)
            .map(|_| {
                let long = rng.next_f64() < long_share;
                loop {
                    let x = if long {
                        100_000 + (rng.next_u64() % 900_000) as u32
                    } else {
                        (rng.next_u64() % 1_000) as u32
                    };
                    let words = tok.encode(&numbers::french(x)).len();
                    let fits = if long {
                        (10..=12).contains(&words)
                    } else {
                        (1..=3).contains(&words)
                    };
                    if fits {
                        return Phrase {
                            english: numbers::english(x),
                            words,
                        };
                    }
                }
            })
            .collect()
    }

    /// A one-node plan: `text → Translator(arch) → fr`, under `batch`.
    fn translator_plan(arch: &str, weights: &str, batch: BatchSpec) -> Plan {
        let mut plan = delay_chain("translate", &[0.0], batch, 1);
        let node = &mut plan.nodes[0];
        node.id = "mt".into();
        node.kind = "Translator".into();
        node.implementation.builtin = None;
        node.implementation.model = Some(ModelImpl {
            arch: arch.into(),
            config: [
                ("weights".to_string(), serde_json::json!(weights)),
                ("generate".to_string(), serde_json::json!(true)),
                ("max_tokens".to_string(), serde_json::json!(MAX_TOKENS)),
            ]
            .into_iter()
            .collect(),
        });
        node.params.clear();
        node.args = vec![mars_plan::Arg::input("text")];
        node.in_types = vec!["Text".into()];
        node.out_types = vec!["Text".into()];
        plan.inputs = vec![PlanInput {
            name: "text".into(),
            ty: "Text".into(),
            default: None,
        }];
        plan.outputs = vec![PlanOutput {
            name: "fr".into(),
            ty: "Text".into(),
            from: mars_plan::Arg::node("mt", 0),
        }];
        plan
    }

    /// What one run gave: its report and each request's output (or error) by id.
    struct Measured {
        report: RunReport,
        outputs: BTreeMap<u64, Result<String, String>>,
    }

    fn run(
        plan: &Plan,
        base: &Path,
        registry: &mars_runtime::Registry,
        input: &[u8],
    ) -> miette::Result<Measured> {
        let mut out: Vec<u8> = Vec::new();
        let report =
            mars_runtime::run_plan(plan, base, registry, RunOptions::default(), input, &mut out)
                .map_err(super::fail)?;
        let mut outputs = BTreeMap::new();
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let r: serde_json::Value = serde_json::from_slice(line).into_diagnostic()?;
            let id = r["id"]
                .as_u64()
                .ok_or_else(|| miette!("a record without an id: {r}"))?;
            let o = match r["ok"]["fr"].as_str() {
                Some(t) => Ok(t.to_string()),
                None => Err(r["error"]["message"].to_string()),
            };
            outputs.insert(id, o);
        }
        Ok(Measured { report, outputs })
    }

    pub fn bench(
        requests: usize,
        max_batch: u32,
        repeat: usize,
        long_share: f64,
        seed: u64,
        weights: Option<PathBuf>,
    ) -> miette::Result<serde_json::Value> {
        let weights = weights.unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pipelines/weights/mt.safetensors")
        });
        let (_, tok, _) =
            mars_stdlib::models::load_lm(&weights, mars_stdlib::models::linear::Quantize::None)
                .map_err(|e| miette!(code = "mars::bench::weights", "{e}"))?;
        let base = weights
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let file = weights
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| miette!("weights path `{}` has no file name", weights.display()))?
            .to_string();
        let b = max_batch.max(1);
        let mix = length_mix(&tok, requests, long_share, seed);
        let mut input = Vec::new();
        for p in &mix {
            input.extend_from_slice(
                serde_json::json!({ "text": p.english })
                    .to_string()
                    .as_bytes(),
            );
            input.push(b'\n');
        }
        let mut registry = mars_stdlib::registry();
        registry.model("transformer_lm_padded", padded_lm_factory());
        let fixed = batch_dynamic(b, 1e9);
        let continuous = BatchSpec {
            policy: BatchPolicy::Continuous,
            max: b,
            wait_ms: 0.0,
        };
        let modes: [(&str, &str, &str, BatchSpec); 4] = [
            (
                "static",
                "fixed batches, padded: every row decoded until the longest ends",
                "transformer_lm_padded",
                fixed.clone(),
            ),
            (
                "static-drop",
                "fixed batches, finished rows dropped from compute (run_batch)",
                "transformer_lm",
                fixed,
            ),
            (
                "dynamic",
                "runtime dynamic policy, wait 5 ms (run_batch)",
                "transformer_lm",
                batch_dynamic(b, 5.0),
            ),
            (
                "continuous",
                "runtime continuous policy (iteration-level scheduler)",
                "transformer_lm",
                continuous,
            ),
        ];
        // Warm-up: page in the weights and the allocator's arenas.
        let warm: Vec<u8> = input
            .split_inclusive(|&c| c == b'\n')
            .take(2 * b as usize)
            .flatten()
            .copied()
            .collect();
        let warm_plan = translator_plan("transformer_lm", &file, modes[3].3.clone());
        run(&warm_plan, &base, &registry, &warm).wrap_err("warm-up run")?;
        // The modes take turns, `repeat` rounds, so that load from other processes falls on
        // all of them alike; each mode is reported by its median run.
        let mut runs: Vec<Vec<Measured>> = modes.iter().map(|_| Vec::new()).collect();
        for _ in 0..repeat.max(1) {
            for ((name, _, arch, batch), done) in modes.iter().zip(runs.iter_mut()) {
                let m = run(
                    &translator_plan(arch, &file, batch.clone()),
                    &base,
                    &registry,
                    &input,
                )
                .wrap_err_with(|| format!("the {name} run"))?;
                done.push(m);
            }
        }
        for r in runs.iter_mut() {
            r.sort_by(|a, b| {
                let t = |m: &Measured| m.report.stats.throughput;
                t(a).total_cmp(&t(b))
            });
        }
        let median = |i: usize| &runs[i][runs[i].len() / 2];
        let tput = |i: usize| median(i).report.stats.throughput;

        // Decode steps per request: its output's tokens plus the `<eos>` pick, from the
        // continuous run's outputs (checked equal to the others' below).
        let reference = &median(3).outputs;
        let steps: Vec<usize> = (1..=mix.len() as u64)
            .map(|id| match reference.get(&id) {
                Some(Ok(t)) => (tok.encode(t).len() + 1).min(MAX_TOKENS as usize),
                _ => 1,
            })
            .collect();
        let mean_len = steps.iter().sum::<usize>() as f64 / steps.len().max(1) as f64;
        let padded: usize = steps
            .chunks(b as usize)
            .map(|c| c.iter().max().copied().unwrap_or(0) * c.len())
            .sum();
        let mean_padded = padded as f64 / steps.len().max(1) as f64;
        let ideal = mean_padded / mean_len;
        // The same in decode passes: the final `<eos>` pick of a sequence needs no pass, in
        // static batching (its longest row ends the batch) as in continuous batching.
        let passes: usize = steps
            .chunks(b as usize)
            .map(|c| (c.iter().max().copied().unwrap_or(1) - 1) * c.len())
            .sum();
        let ideal_passes =
            passes as f64 / (steps.iter().sum::<usize>() - steps.len()).max(1) as f64;
        let generated: usize = steps.iter().map(|s| s - 1).sum();
        let short = mix.iter().filter(|p| p.words <= 3).count();
        let intended_match = mix
            .iter()
            .zip(&steps)
            .filter(|(p, s)| p.words + 1 == **s)
            .count();

        println!(
            "continuous: tiny translator ({}), {} requests queued at t=0, max batch {b}, seed {seed}, {} rounds (median run shown)",
            weights.display(),
            mix.len(),
            repeat.max(1)
        );
        println!(
            "  mix: {short} short (1-3 words), {} long (10-12 words); {intended_match}/{} outputs of the intended length",
            mix.len() - short,
            mix.len()
        );
        println!(
            "  decode steps per request (words + <eos>): mean {mean_len:.2}; padded to the longest of its static batch: mean {mean_padded:.2}"
        );
        println!("  tokens generated: {generated} (+ {} <eos>)", mix.len());
        println!(
            "  {:<12} {:>9} {:>17} {:>9} {:>9} {:>8} {:>10}   policy",
            "mode", "req/s", "(min..max)", "p50 ms", "p99 ms", "batches", "mean batch"
        );
        let mut rows = Vec::new();
        for (i, (name, what, _, _)) in modes.iter().enumerate() {
            let m = median(i);
            let st = &m.report.stats;
            let node = st.nodes.get("mt");
            let all: Vec<f64> = runs[i].iter().map(|r| r.report.stats.throughput).collect();
            let (lo, hi) = (all[0], all[all.len() - 1]);
            println!(
                "  {name:<12} {:>9.1} {:>17} {:>9.1} {:>9.1} {:>8} {:>10.2}   {what}",
                st.throughput,
                format!("({lo:.1}..{hi:.1})"),
                st.latency.p50_ms,
                st.latency.p99_ms,
                node.map_or(0, |n| n.batches),
                node.map_or(0.0, |n| n.mean_batch),
            );
            let same = runs[i]
                .iter()
                .map(|r| {
                    (1..=mix.len() as u64)
                        .filter(|id| r.outputs.get(id) == reference.get(id))
                        .count()
                })
                .min()
                .unwrap_or(0);
            rows.push(
                serde_json::json!({"mode": name, "policy": what, "throughput": st.throughput,
                "throughput_runs": all, "p50_ms": st.latency.p50_ms, "p99_ms": st.latency.p99_ms,
                "errors": st.errors, "same_as_continuous": same, "stats": st}),
            );
        }
        let measured = tput(3) / tput(0);
        println!(
            "  continuous/static = {measured:.2}; ideal (mean padded length / mean length) = {ideal:.2}; measured/ideal = {:.2} (target >= 0.90)",
            measured / ideal
        );
        println!(
            "  in decode passes (length - 1: the final <eos> pick needs none): ideal = {ideal_passes:.2}; measured/ideal = {:.2}",
            measured / ideal_passes
        );
        println!(
            "  continuous/static-drop = {:.2}; continuous/dynamic = {:.2}",
            tput(3) / tput(1),
            tput(3) / tput(2)
        );
        for ((name, _, _, _), mode_runs) in modes.iter().zip(&runs) {
            let mut differ: Vec<u64> = mode_runs
                .iter()
                .flat_map(|r| {
                    (1..=mix.len() as u64).filter(|id| r.outputs.get(id) != reference.get(id))
                })
                .collect();
            differ.sort_unstable();
            differ.dedup();
            if !differ.is_empty() {
                println!(
                    "  {name}: {} outputs differ from continuous (ids {:?})",
                    differ.len(),
                    &differ[..differ.len().min(10)]
                );
            }
        }
        Ok(
            serde_json::json!({"bench": "continuous", "requests": mix.len(), "max_batch": b,
            "long_share": long_share, "seed": seed, "rounds": repeat.max(1), "mean_steps": mean_len,
            "mean_padded_steps": mean_padded, "ideal_ratio": ideal, "measured_ratio": measured,
            "measured_over_ideal": measured / ideal, "ideal_ratio_in_passes": ideal_passes,
            "measured_over_ideal_in_passes": measured / ideal_passes, "tokens_generated": generated, "modes": rows}),
        )
    }
}

/// `marsc bench quantize`: accuracy and speed of the translator per `quantize` mode.
mod quantize {
    use std::path::PathBuf;
    use std::time::Instant;

    use miette::miette;

    use mars_stdlib::models::linear::Quantize;
    use mars_stdlib::models::quant::teacher_forced_logits;
    use mars_stdlib::models::tokenizer::EOS;
    use mars_stdlib::models::train::{evaluate, held_out_numbers};
    use mars_stdlib::models::transformer_lm::{prompt_tokens, SeqState, TransformerLm};
    use mars_stdlib::models::{load_lm, numbers};

    fn forward_failed(e: impl std::fmt::Display) -> miette::Report {
        miette!("forward failed: {e}")
    }

    fn median(mut t: Vec<f64>) -> f64 {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    }

    /// One model's timed workloads: prefill of `prompts` and a decode step of the sequences
    /// they start.
    struct Workload<'a> {
        model: &'a TransformerLm,
        prompts: Vec<Vec<u32>>,
        seqs: Vec<SeqState>,
        next: Vec<u32>,
    }

    impl<'a> Workload<'a> {
        fn new(
            model: &'a TransformerLm,
            prompts: Vec<Vec<u32>>,
            next: u32,
        ) -> miette::Result<Self> {
            let seqs = model.prefill(&prompts).map_err(forward_failed)?;
            let next = vec![next; prompts.len()];
            let w = Workload {
                model,
                prompts,
                seqs,
                next,
            };
            // Q8_0/Q4K repack their weights on the first forward: warm every layer.
            for _ in 0..3 {
                w.prefill_ms()?;
                w.decode_ms()?;
            }
            Ok(w)
        }

        fn prefill_ms(&self) -> miette::Result<f64> {
            let start = Instant::now();
            self.model.prefill(&self.prompts).map_err(forward_failed)?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        }

        fn decode_ms(&self) -> miette::Result<f64> {
            let mut s = self.seqs.clone();
            let mut refs: Vec<&mut SeqState> = s.iter_mut().collect();
            let start = Instant::now();
            self.model
                .decode_step(&mut refs, &self.next)
                .map_err(forward_failed)?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        }
    }

    /// Mean KL(f32 ‖ q) in nats and the RMS logit difference, over the rows.
    fn divergence(reference: &[Vec<f32>], got: &[Vec<f32>]) -> (f64, f64) {
        let log_softmax = |l: &[f32]| -> Vec<f64> {
            let m = l.iter().copied().fold(f32::MIN, f32::max) as f64;
            let z: f64 = l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
            l.iter().map(|&x| x as f64 - z).collect()
        };
        let (mut kl, mut sq, mut n) = (0.0, 0.0, 0usize);
        for (a, b) in reference.iter().zip(got) {
            let (la, lb) = (log_softmax(a), log_softmax(b));
            kl += la
                .iter()
                .zip(&lb)
                .map(|(x, y)| x.exp() * (x - y))
                .sum::<f64>();
            sq += a
                .iter()
                .zip(b)
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum::<f64>();
            n += a.len();
        }
        let rows = reference.len().max(1) as f64;
        (kl / rows, (sq / n.max(1) as f64).sqrt())
    }

    pub fn bench(
        held_out: usize,
        reps: usize,
        weights: Option<PathBuf>,
    ) -> miette::Result<serde_json::Value> {
        let weights = weights.unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pipelines/weights/mt.safetensors")
        });
        if held_out == 0 || reps == 0 {
            return Err(miette!("--held-out and --reps must be positive"));
        }
        let nums = held_out_numbers(held_out, 4242);
        println!(
            "quantize: {} on {held_out} held-out numbers: greedy exact match; teacher-forced KL(f32 ‖ mode) per target token and RMS logit difference; times are medians of {reps}",
            weights.display()
        );
        println!(
            "  {:<17} {:>9} {:>10} {:>8} {:>9} {:>10} {:>10} {:>11} {:>11}",
            "mode",
            "exact",
            "KL nats",
            "logit Δ",
            "load ms",
            "prefill 1",
            "prefill 16",
            "decode 1",
            "decode 16"
        );
        let (reference_model, tok, _) = load_lm(&weights, Quantize::None)
            .map_err(|e| miette!(code = "mars::bench::weights", "{e}"))?;
        let seqs: Vec<(Vec<u32>, usize)> = nums
            .iter()
            .map(|&n| {
                let mut t = prompt_tokens(&tok, &numbers::english(n));
                let p = t.len();
                t.extend(tok.encode(&numbers::french(n)));
                t.push(EOS);
                t.truncate(reference_model.config.max_len);
                (t, p)
            })
            .collect();
        let reference = teacher_forced_logits(&reference_model, &seqs).map_err(forward_failed)?;
        let mut models = Vec::new();
        for q in Quantize::ALL {
            let start = Instant::now();
            let (model, _, _) =
                load_lm(&weights, q).map_err(|e| miette!(code = "mars::bench::weights", "{e}"))?;
            let load_ms = start.elapsed().as_secs_f64() * 1e3;
            let (exact, _) =
                evaluate(&model, &tok, &nums).map_err(|e| miette!("decoding failed: {e}"))?;
            let (kl, rmse) = divergence(
                &reference,
                &teacher_forced_logits(&model, &seqs).map_err(forward_failed)?,
            );
            models.push((q, model, load_ms, exact, kl, rmse));
        }
        // Long prompts (6-digit numbers: 8 to 10 words), as `benches/transformer_lm.rs`.
        let prompts = |b: usize| -> Vec<Vec<u32>> {
            (0..b)
                .map(|i| prompt_tokens(&tok, &numbers::english(737_373 + i as u32 * 1_111)))
                .collect()
        };
        let next = tok.encode("sept").first().copied().unwrap_or(0);
        let mut work = Vec::new();
        for (_, model, ..) in &models {
            work.push([
                Workload::new(model, prompts(1), next)?,
                Workload::new(model, prompts(16), next)?,
            ]);
        }
        // Modes take turns, one measurement each, so load from other processes on a shared
        // machine falls on all of them alike.
        let mut samples = vec![[[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]]; work.len()];
        for _ in 0..reps {
            for (w, s) in work.iter().zip(samples.iter_mut()) {
                for k in 0..2 {
                    s[k][0].push(w[k].prefill_ms()?);
                    s[k][1].push(w[k].decode_ms()?);
                }
            }
        }
        let mut rows = Vec::new();
        for ((q, _, load_ms, exact, kl, rmse), s) in models.iter().zip(samples) {
            let [[p1, d1], [p16, d16]] = s.map(|k| k.map(median));
            let acc = *exact as f64 / nums.len() as f64;
            println!(
                "  {:<17} {:>8.1}% {:>10.5} {:>8.4} {:>9.1} {:>10.3} {:>10.3} {:>11.3} {:>11.3}",
                q.name(),
                100.0 * acc,
                kl,
                rmse,
                load_ms,
                p1,
                p16,
                d1,
                d16
            );
            rows.push(
                serde_json::json!({"mode": q.name(), "exact": exact, "accuracy": acc,
                "kl_vs_f32": kl, "logit_rmse_vs_f32": rmse,
                "load_ms": load_ms, "prefill_ms": {"1": p1, "16": p16},
                "decode_step_ms": {"1": d1, "16": d16}}),
            );
        }
        Ok(
            serde_json::json!({"bench": "quantize", "weights": weights.display().to_string(),
            "held_out": held_out, "reps": reps, "modes": rows}),
        )
    }
}
