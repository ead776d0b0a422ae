//! `marsc bench elastic` (SPEC 10.4): a two-stage pipeline whose second stage really costs
//! three times what its profile says. Three runs over the same requests: the plan from the
//! wrong profile with fixed replicas (`--elastic off`), the same plan with the elastic
//! controller (`--elastic on`), and the plan compiled from the true profile (fixed). The bound:
//! elastic ≥ 90% of the true plan's throughput.
//!
//! The stages are `std.bench.shift` nodes (they sleep, and are declared and profiled as one
//! core per replica), so that the 8-core target they are planned for can be stood for on a
//! small shared machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use miette::{miette, IntoDiagnostic};

use mars_runtime::run::RunOptions;
use mars_runtime::scenarios::measure;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 20_000)]
    pub requests: u64,
    /// Cores of the target.
    #[arg(long, default_value_t = 8.0)]
    pub cpus: f64,
    /// The first stage's cost per item (ms); the second's is three times it, its profile says
    /// it equals the first's.
    #[arg(long, default_value_t = 2.0)]
    pub item_ms: f64,
    #[arg(long, default_value_t = 256)]
    pub max_inflight: usize,
    /// Rounds: the three runs take turns this many times; each is reported by its median.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

const SOURCE: &str = "use std.bench.shift\n\npipeline wrong(x: Int) -> (y: Int) {\n  let a = shift(x, item_ms = A_MS) @batch(none)\n  y = shift(a, item_ms = Y_MS) @batch(none)\n}\n";

fn profile(a_ms: f64, y_ms: f64) -> String {
    format!(
        "mars_profile: 1\nnodes:\n  shift@a:\n    cpu: {{batch: [1], latency_ms: [{a_ms}], cpu_cores: 1.0}}\n  shift@y:\n    cpu: {{batch: [1], latency_ms: [{y_ms}], cpu_cores: 1.0}}\n"
    )
}

fn compile(dir: &Path, name: &str, profile_text: &str) -> miette::Result<mars_plan::Plan> {
    let profile = dir.join(format!("{name}.profile.yaml"));
    let plan = dir.join(format!("{name}.plan.yaml"));
    std::fs::write(&profile, profile_text).into_diagnostic()?;
    let code = super::compile::run(super::compile::Args {
        file: dir.join("wrong.mars"),
        profile: Some(profile),
        target: Some(dir.join("target.yaml")),
        output: Some(plan.clone()),
        pipeline: None,
        explain: false,
        allow_slo_miss: false,
        rate: None,
    })?;
    if code != ExitCode::SUCCESS {
        return Err(miette!("the elastic benchmark's pipeline did not compile"));
    }
    Ok(super::run::load_plan(&plan)?.0)
}

pub fn bench(args: Args) -> miette::Result<serde_json::Value> {
    let dir: PathBuf = std::env::temp_dir().join(format!("mars-elastic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).into_diagnostic()?;
    let (a_ms, y_ms) = (args.item_ms, 3.0 * args.item_ms);
    let src = SOURCE
        .replace("A_MS", &format!("{a_ms:?}"))
        .replace("Y_MS", &format!("{y_ms:?}"));
    std::fs::write(dir.join("wrong.mars"), src).into_diagnostic()?;
    std::fs::write(
        dir.join("target.yaml"),
        format!(
            "mars_target: 1\nworkers:\n  - {{name: w0, cpus: {}}}\n",
            args.cpus
        ),
    )
    .into_diagnostic()?;
    let wrong = compile(&dir, "wrong", &profile(a_ms, a_ms))?;
    let truth = compile(&dir, "true", &profile(a_ms, y_ms))?;
    let _ = std::fs::remove_dir_all(&dir);
    let registry = mars_stdlib::registry();
    let opts = |elastic| RunOptions {
        max_inflight: args.max_inflight,
        elastic,
        ..RunOptions::default()
    };
    let fail = |e: mars_runtime::RunError| miette!(code = "mars::bench::run", "{e}");
    let mut runs: [Vec<mars_runtime::RunReport>; 3] = Default::default();
    for _ in 0..args.repeat.max(1) {
        for (k, (plan, elastic)) in [(&wrong, false), (&wrong, true), (&truth, false)]
            .into_iter()
            .enumerate()
        {
            let (r, _) = measure(plan, &registry, args.requests, opts(elastic)).map_err(fail)?;
            runs[k].push(r);
        }
    }
    let all: Vec<Vec<f64>> = runs
        .iter()
        .map(|rs| rs.iter().map(|r| r.stats.throughput).collect())
        .collect();
    let [fixed, elastic, best] = runs.map(|mut rs| {
        rs.sort_by(|a, b| a.stats.throughput.total_cmp(&b.stats.throughput));
        rs.swap_remove(rs.len() / 2)
    });
    let reps = |p: &mars_plan::Plan| {
        p.nodes
            .iter()
            .map(|n| format!("{} {}", n.id, n.replicas))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ratio = |x: f64| x / best.stats.throughput.max(1e-9);
    println!(
        "elastic: stages a ({a_ms} ms/item) and y ({y_ms} ms/item, profiled as {a_ms}), {} cores, {} requests, median of {} rounds",
        args.cpus, args.requests, args.repeat.max(1)
    );
    println!(
        "  fixed, wrong profile   ({})  {:>8.1} req/s  ({:.3} of the true plan; predicted {:.1})",
        reps(&wrong),
        fixed.stats.throughput,
        ratio(fixed.stats.throughput),
        wrong.predicted.throughput
    );
    let e = elastic.stats.elastic.as_ref();
    println!(
        "  elastic, wrong profile (starts {})  {:>8.1} req/s  ({:.3} of the true plan; bound >= 0.9), {} moves, ends at {}",
        reps(&wrong),
        elastic.stats.throughput,
        ratio(elastic.stats.throughput),
        e.map_or(0, |e| e.moves),
        e.and_then(|e| e.log.last())
            .map(|m| format!("{:?} after {} s", m.replicas, m.at_s))
            .unwrap_or_else(|| "the plan's replicas".into())
    );
    println!(
        "  fixed, true profile    ({})  {:>8.1} req/s  (predicted {:.1})",
        reps(&truth),
        best.stats.throughput,
        truth.predicted.throughput
    );
    println!(
        "  every run (req/s): fixed {:?}, elastic {:?}, true {:?}",
        all[0], all[1], all[2]
    );
    Ok(serde_json::json!({
        "bench": "elastic", "requests": args.requests, "cpus": args.cpus,
        "fixed_wrong": fixed.stats.throughput, "elastic_wrong": elastic.stats.throughput,
        "fixed_true": best.stats.throughput,
        "elastic_over_true": ratio(elastic.stats.throughput),
        "fixed_over_true": ratio(fixed.stats.throughput),
        "runs": {"fixed_wrong": all[0], "elastic_wrong": all[1], "fixed_true": all[2]},
        "elastic_stats": elastic.stats,
    }))
}
