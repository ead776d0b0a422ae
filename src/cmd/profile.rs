//! `marsc profile FILE --target T -o F.profile.yaml`: measure every node kind of a pipeline on
//! every device the target offers and the node supports, and write the profile the planner reads.
//!
//! FILE is a `.mars` source (checked and planned here without a profile, to learn its nodes) or
//! a `*.plan.yaml` (profiled as it is). The measuring itself is `mars_runtime::profiler`; this file only reads
//! the files, draws the progress bar and writes the result.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use miette::{miette, IntoDiagnostic, WrapErr};

use mars_plan::{Plan, Target};
use mars_runtime::profiler::{self, ProfileOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The `.mars` source (or a compiled `*.plan.yaml`) whose pipeline is profiled.
    pub file: PathBuf,
    /// Which pipeline of the file (needed when it has several).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// The target: which devices exist to profile on.
    #[arg(long)]
    pub target: PathBuf,
    /// Where to write the profile (`*.profile.yaml`).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Sample requests (JSONL, as for `marsc run`), run through the upstream nodes to give each
    /// node realistic inputs and to measure the fan-out at map nodes. Without it, inputs are
    /// synthesized from the declared types and no fan-out is written.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Use at most this many lines of `--input`.
    #[arg(long, default_value_t = 256)]
    pub samples: usize,
    /// Measure batch sizes 1, 2, 4, … up to this (and up to each `@batch(max = N)`, exactly).
    #[arg(long, default_value_t = 32)]
    pub max_batch: u32,
    /// Timed runs per batch size: at least this many ...
    #[arg(long, default_value_t = 10)]
    pub min_runs: u32,
    /// ... and for at least this long (milliseconds) ...
    #[arg(long, default_value_t = 500)]
    pub min_time_ms: u64,
    /// ... but no more runs than this.
    #[arg(long, default_value_t = 1000)]
    pub max_runs: u32,
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    let target_text = read(&args.target)?;
    let target = Target::from_yaml(&target_text, &args.target.display().to_string())
        .map_err(|e| miette!(code = "mars::profile::target", "{e}"))?;
    let (plan, base_dir) = match load_plan(&args.file, args.pipeline.as_deref(), &target)? {
        Loaded::Plan(plan, base_dir) => (*plan, base_dir),
        Loaded::Failed(code) => return Ok(code),
    };

    let (samples, sample_lines) = match &args.input {
        Some(path) => {
            let (samples, lines) = read_samples(path, args.samples)?;
            (Some(samples), lines)
        }
        None => (None, Vec::new()),
    };
    let gpu = target
        .workers
        .iter()
        .flat_map(|w| w.gpus.iter())
        .next()
        .cloned();
    let mut notes = Vec::new();
    if let Some(g) = &gpu {
        if !cfg!(feature = "cuda") {
            notes.push(format!(
                "the target offers `{}`, but this marsc was built without the `cuda` feature: profiled on cpu only",
                g.name
            ));
        }
    }
    let options = ProfileOptions {
        max_batch: args.max_batch.max(1),
        min_runs: args.min_runs.max(1),
        min_time: Duration::from_millis(args.min_time_ms),
        max_runs: args.max_runs.max(1),
        gpu: gpu.filter(|_| cfg!(feature = "cuda")),
        base_dir,
        samples,
        samples_dir: args.input.as_deref().map(folder_of),
    };

    let registry = mars_stdlib::registry();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} profiling [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let report = profiler::profile_plan(&plan, &registry, &options, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(
            format!("{} on {:?} at batch {}", p.kind, p.device, p.batch).to_lowercase(),
        );
    });
    bar.finish_and_clear();
    let report = report.map_err(|e| match (e, &args.input) {
        (profiler::ProfileError::Sample { line, message }, Some(path)) => miette!(
            code = "mars::profile::sample",
            "{}:{}: {message}",
            path.display(),
            sample_lines
                .get(line.wrapping_sub(1))
                .copied()
                .unwrap_or(line)
        ),
        (e, _) => miette!(code = "mars::profile::measure", "{e}"),
    })?;
    let mut report = report;
    // The runtime's own CPU per request, hop and hand-off on this machine (SPEC 2.4.9).
    let runtime = mars_runtime::self_cost::measure_runtime_cost(100_000).map_err(|e| {
        miette!(
            code = "mars::profile::measure",
            "measuring the runtime's own cost: {e}"
        )
    })?;
    report.profile.runtime = Some(runtime);

    std::fs::write(&args.output, report.profile.to_yaml())
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot write {}", args.output.display()))?;
    for note in notes.iter().chain(&report.notes) {
        eprintln!("note: {note}");
    }
    print!("{}", summary(&report.profile));
    eprintln!(
        "wrote {} ({} node kind{})",
        args.output.display(),
        report.profile.nodes.len(),
        if report.profile.nodes.len() == 1 {
            ""
        } else {
            "s"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// One line per kind and device, for humans: latency at the smallest and largest batch, the
/// per-item cost there, peak memory and cores.
fn summary(profile: &mars_plan::Profile) -> String {
    let mut rows = vec![[
        "kind".to_string(),
        "device".into(),
        "batch 1 ms".into(),
        "largest batch".into(),
        "ms/item there".into(),
        "p99 ms there".into(),
        "peak MB".into(),
        "cores".into(),
    ]];
    for (kind, kp) in &profile.nodes {
        for (device, dp) in [("cpu", &kp.cpu), ("gpu", &kp.gpu)] {
            let Some(dp) = dp else { continue };
            let last = dp.batch.len() - 1;
            let b = dp.batch[last];
            let p99 = dp.p99_ms.as_ref().map_or(dp.latency_ms[last], |p| p[last]);
            let mem = dp
                .memory_mb
                .as_ref()
                .map_or(0.0, |m| m.iter().copied().fold(0.0, f64::max));
            rows.push([
                kind.clone(),
                device.to_string(),
                format!("{:.3}", dp.latency_ms[0]),
                b.to_string(),
                format!("{:.3}", dp.latency_ms[last] / f64::from(b)),
                format!("{p99:.3}"),
                format!("{mem:.1}"),
                dp.cpu_cores.map_or("-".to_string(), |c| format!("{c:.2}")),
            ]);
        }
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c < 2 {
                    format!("{cell:<w$}", w = widths[c])
                } else {
                    format!("{cell:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if !profile.fanout.is_empty() {
        let f: Vec<String> = profile
            .fanout
            .iter()
            .map(|(id, m)| format!("{id} {m}"))
            .collect();
        out.push_str(&format!("fan-out at map nodes: {}\n", f.join(", ")));
    }
    out
}

fn read(path: &Path) -> miette::Result<String> {
    std::fs::read_to_string(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", path.display()))
}

/// What to profile: a plan, and the folder its exec commands and relative paths resolve
/// against; or diagnostics that stop the command (already rendered).
enum Loaded {
    Plan(Box<Plan>, PathBuf),
    Failed(ExitCode),
}

/// The folder holding `path` (`.` for a bare file name).
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn load_plan(file: &Path, pipeline: Option<&str>, target: &Target) -> miette::Result<Loaded> {
    let name = file.display().to_string();
    if name.ends_with(".yaml") || name.ends_with(".yml") {
        let plan = Plan::from_yaml(&read(file)?, &name)
            .map_err(|e| miette!(code = "mars::profile::plan", "{e}"))?;
        if let Some(p) = pipeline {
            if p != plan.pipeline {
                return Err(miette!(
                    code = "mars::profile::pipeline",
                    "{name} is a plan of pipeline `{}`, not `{p}`",
                    plan.pipeline
                ));
            }
        }
        // The plan names its source relative to the plan's folder; exec nodes run beside it.
        let source = folder_of(file).join(&plan.inputs_of_plan.source);
        return Ok(Loaded::Plan(Box::new(plan), folder_of(&source)));
    }
    compile_source(file, pipeline, target)
}

/// Check a `.mars` file and plan the chosen pipeline without a profile (SLOs are not enforced:
/// the plan only says which nodes exist and how they are wired).
fn compile_source(file: &Path, pipeline: Option<&str>, target: &Target) -> miette::Result<Loaded> {
    use mars_compiler::plan::{plan_pipeline, PlanOptions};
    use mars_compiler::SourceFile;

    let name = file.display().to_string();
    let bytes = std::fs::read(file)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {name}"))?;
    let source = match SourceFile::from_bytes(&name, &bytes) {
        Ok(f) => f,
        Err(problems) => {
            eprint!("{}", problems.render());
            return Ok(Loaded::Failed(ExitCode::FAILURE));
        }
    };
    let stdlib: Vec<SourceFile> = mars_stdlib::declarations::DECLARATIONS
        .iter()
        .map(|(path, text)| SourceFile {
            path: (*path).to_string(),
            text: (*text).to_string(),
        })
        .collect();
    let checked = mars_compiler::check_program(&source, &stdlib);
    if !checked.problems.is_empty() {
        eprint!("{}", checked.problems.render());
    }
    let Some(program) = checked.program else {
        return Ok(Loaded::Failed(ExitCode::FAILURE));
    };
    let names = || {
        program
            .pipelines
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match pipeline {
        Some(p) => program.pipeline(p).ok_or_else(|| {
            miette!(
                code = "mars::profile::pipeline",
                "{name} has no pipeline `{p}`; it has: {}",
                names()
            )
        })?,
        None => match program.pipelines.as_slice() {
            [only] => only,
            [] => {
                return Err(miette!(
                    code = "mars::profile::pipeline",
                    "{name} declares no pipeline"
                ))
            }
            _ => {
                return Err(miette!(
                    code = "mars::profile::pipeline",
                    "{name} declares several pipelines ({}); choose one with --pipeline",
                    names()
                ))
            }
        },
    };
    let mut options = PlanOptions {
        allow_slo_miss: true,
        ..PlanOptions::default()
    };
    options.origin.source = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    match plan_pipeline(chosen, None, target, &options) {
        Ok(plan) => Ok(Loaded::Plan(Box::new(plan), folder_of(file))),
        Err(errors) => {
            for e in errors {
                let report = miette::Report::new(e)
                    .with_source_code(miette::NamedSource::new(&name, source.text.clone()));
                eprintln!("{report:?}");
            }
            Ok(Loaded::Failed(ExitCode::FAILURE))
        }
    }
}

/// Read up to `max` sample requests and the file line of each; errors name the file and line.
fn read_samples(path: &Path, max: usize) -> miette::Result<(Vec<serde_json::Value>, Vec<usize>)> {
    let file = std::fs::File::open(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", path.display()))?;
    let mut samples = Vec::new();
    let mut lines = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        if samples.len() >= max {
            break;
        }
        let line = line
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let json = serde_json::from_str(&line).map_err(|e| {
            miette!(
                code = "mars::profile::sample",
                "{}:{}: not a JSON object: {e}",
                path.display(),
                i + 1
            )
        })?;
        samples.push(json);
        lines.push(i + 1);
    }
    if samples.is_empty() {
        return Err(miette!(
            code = "mars::profile::sample",
            "{} holds no sample requests",
            path.display()
        ));
    }
    Ok((samples, lines))
}
