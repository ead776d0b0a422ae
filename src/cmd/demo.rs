//! `marsc demo`: the whole path on a real pipeline with nothing to set up. The translator
//! pipeline (`pipelines/title_translate.mars`), its measured profile, a target and the trained
//! tiny translator's weights are built into the binary; the demo writes them to a folder,
//! compiles the plan with `--explain`, and runs it over sample product titles — the same code
//! paths as `marsc compile` and `marsc run`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use miette::{IntoDiagnostic, WrapErr};

const SOURCE: &str = include_str!("../../pipelines/title_translate.mars");
const PROFILE: &str = include_str!("../../pipelines/title_translate.profile.yaml");
const WEIGHTS: &[u8] = include_bytes!("../../pipelines/weights/mt.safetensors");
const TITLES: &str = include_str!("../../pipelines/data/titles.jsonl");

/// Run the built-in translator pipeline end to end: check, compile (with the plan explained),
/// run over sample titles, print the records and the run's summary.
///
/// Examples:
///   marsc demo                              # sample titles, results on stdout
///   marsc demo --dir demo/ -i my_titles.jsonl   # keep the files; your own {"title": …} lines
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Where to write the pipeline, profile, target, weights, plan and results [default: a
    /// fresh folder under the system's temp dir].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Requests to run instead of the built-in sample titles (JSONL, `{"title": "…"}` a line).
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// No explanation, progress bar or summary on stderr; only the records on stdout.
    #[arg(short, long)]
    pub quiet: bool,
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> miette::Result<PathBuf> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, bytes)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// A target for this machine: one CPU worker with its cores.
fn local_target() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("mars_target: 1\nworkers:\n  - {{name: local, cpus: {cpus}, memory_gb: 4}}\n")
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("mars-demo-{}", std::process::id())),
    };
    let source = write(&dir, "title_translate.mars", SOURCE.as_bytes())?;
    let profile = write(&dir, "title_translate.profile.yaml", PROFILE.as_bytes())?;
    let target = write(&dir, "targets/local.yaml", local_target().as_bytes())?;
    write(&dir, "weights/mt.safetensors", WEIGHTS)?;
    let input = match &args.input {
        Some(p) => p.clone(),
        None => write(&dir, "data/titles.jsonl", TITLES.as_bytes())?,
    };
    let plan = dir.join("title_translate.plan.yaml");
    if !args.quiet {
        eprintln!("mars demo: files in {}", dir.display());
    }
    let compiled = super::compile::run(super::compile::Args {
        file: source,
        profile: Some(profile),
        target: Some(target),
        output: Some(plan.clone()),
        pipeline: None,
        explain: !args.quiet,
        allow_slo_miss: false,
        rate: None,
    })?;
    if compiled != ExitCode::SUCCESS {
        return Ok(compiled);
    }
    let results = dir.join("results.jsonl");
    // A rerun in the same folder starts over.
    let _ = std::fs::remove_file(&results);
    let mut run = super::run::Args::for_plan(plan.clone());
    run.input = input;
    run.output = results.clone();
    run.ordered = true;
    run.quiet = args.quiet;
    run.stats_json = Some(dir.join("stats.json"));
    let code = super::run::run(run)?;
    let records = std::fs::read_to_string(&results)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", results.display()))?;
    print!("{records}");
    if !args.quiet {
        eprintln!(
            "mars demo: results in {}, plan in {}, stats in {}",
            results.display(),
            plan.display(),
            dir.join("stats.json").display()
        );
    }
    Ok(code)
}
