//! `marsc run PLAN --input F.jsonl --output F.jsonl`: run a compiled plan over a file of requests.
//! The running itself is `mars_runtime::run_plan`; this file opens the files, draws the
//! progress bar and prints the summary.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use miette::{miette, IntoDiagnostic, WrapErr};

use mars_plan::Plan;
use mars_runtime::run::{Progress, RunOptions, DEFAULT_MAX_INFLIGHT};
use mars_runtime::RunError;

#[derive(clap::Args)]
pub struct Args {
    /// The compiled plan (`*.plan.yaml`).
    pub plan: PathBuf,
    /// Requests, one JSON object per line keyed by the pipeline's inputs (`-` for stdin).
    #[arg(short, long, default_value = "-")]
    pub input: PathBuf,
    /// Where to write one record per request (`-` for stdout).
    #[arg(short, long, default_value = "-")]
    pub output: PathBuf,
    /// Timely worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// At most this many requests inside the dataflow at once (bounds memory).
    #[arg(long, default_value_t = DEFAULT_MAX_INFLIGHT)]
    pub max_inflight: usize,
    /// Write records in input order (default: completion order).
    #[arg(long)]
    pub ordered: bool,
    /// Stop at the first error record and exit 1.
    #[arg(long)]
    pub fail_fast: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
    /// Write a Chrome/Perfetto trace (one track per node replica, one slice per batch).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// No progress bar and no summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Load a plan file; also the folder its relative paths resolve against (the source's folder).
pub fn load_plan(path: &Path) -> miette::Result<(Plan, PathBuf)> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read plan {name}"))?;
    let plan =
        Plan::from_yaml(&text, &name).map_err(|e| miette!(code = "mars::run::plan", "{e}"))?;
    let source = folder_of(path).join(&plan.inputs_of_plan.source);
    Ok((plan, folder_of(&source)))
}

fn progress_bar(quiet: bool) -> Option<indicatif::ProgressBar> {
    if quiet {
        return None;
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template("{spinner} {msg}").ok()?;
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

fn run_error(e: RunError) -> miette::Report {
    let code = match &e {
        RunError::Plan(_) => "mars::run::plan",
        RunError::Build { .. } => "mars::run::build",
        RunError::Input(_) => "mars::run::input",
        RunError::Output(_) => "mars::run::output",
        RunError::Runtime(_) => "mars::run::runtime",
    };
    miette!(code = code, "{e}")
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    let (plan, base_dir) = load_plan(&args.plan)?;
    let bar = progress_bar(args.quiet);
    let progress: Option<Arc<mars_runtime::run::ProgressFn>> = bar.clone().map(|bar| {
        Arc::new(move |p: &Progress| {
            let secs = p.elapsed.as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{} requests, {:.0} req/s, {} errors",
                p.done,
                p.done as f64 / secs,
                p.errors
            ));
        }) as Arc<mars_runtime::run::ProgressFn>
    });
    let stdin_input = args.input.as_os_str() == "-";
    let opts = RunOptions {
        workers: args.workers,
        max_inflight: args.max_inflight,
        ordered: args.ordered,
        fail_fast: args.fail_fast,
        trace: args.trace.is_some(),
        input_dir: if stdin_input {
            None
        } else {
            Some(folder_of(&args.input))
        },
        progress,
    };
    let registry = mars_stdlib::registry();
    let mut output: Box<dyn Write> = if args.output.as_os_str() == "-" {
        Box::new(BufWriter::with_capacity(1 << 16, std::io::stdout()))
    } else {
        let f = File::create(&args.output)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot create {}", args.output.display()))?;
        Box::new(BufWriter::with_capacity(1 << 16, f))
    };
    let report = if stdin_input {
        let input = BufReader::with_capacity(1 << 16, std::io::stdin());
        mars_runtime::run_plan(&plan, &base_dir, &registry, opts, input, &mut output)
    } else {
        let f = File::open(&args.input)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot open {}", args.input.display()))?;
        mars_runtime::run_plan(
            &plan,
            &base_dir,
            &registry,
            opts,
            BufReader::with_capacity(1 << 16, f),
            &mut output,
        )
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = report.map_err(run_error)?;
    output
        .flush()
        .into_diagnostic()
        .wrap_err("writing output")?;

    if let Some(path) = &args.stats_json {
        let text = serde_json::to_string_pretty(&report.stats).into_diagnostic()?;
        std::fs::write(path, text + "\n")
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot write {}", path.display()))?;
    }
    if let (Some(path), Some(trace)) = (&args.trace, &report.trace) {
        let f = File::create(path)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot create {}", path.display()))?;
        let mut w = BufWriter::new(f);
        serde_json::to_writer(&mut w, trace)
            .into_diagnostic()
            .and_then(|()| w.flush().into_diagnostic())
            .wrap_err_with(|| format!("cannot write {}", path.display()))?;
    }
    if !args.quiet {
        eprint!("{}", report.stats.summary());
    }
    Ok(if report.stats.stopped_at.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
