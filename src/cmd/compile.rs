//! `marsc compile`: check a `.mars` file, plan one pipeline from a profile and a target, and
//! write the plan. Exit status: 0 written; 1 on any error (source, profile, target, an SLO no
//! plan meets).

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use mars_compiler::diagnostics::Problems;
use mars_compiler::plan::{explain::explain, plan_pipeline_explained, PlanOptions};
use mars_compiler::SourceFile;
use mars_plan::{PlanOrigin, Profile, Target, Worker};

use super::file_io;
use sha2::{Digest, Sha256};

/// Plan a pipeline: every node's device, worker, batching and replicas, from measured costs.
///
/// Examples:
///   marsc compile app.mars --profile app.profile.yaml --target targets/one_gpu.yaml -o app.plan.yaml
///   marsc compile app.mars --target t.yaml --explain          # no profile: annotations and defaults
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The `.mars` source file.
    pub file: PathBuf,
    /// The profile (`marsc profile` writes one). Without it every node is assumed to take 1 ms
    /// per item, and the plan says so.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// The target: workers, cores, GPUs. Without it: one CPU worker with this machine's cores.
    #[arg(long)]
    pub target: Option<PathBuf>,
    /// Where to write the plan [default: the source's name with `.plan.yaml`, beside it].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The pipeline to plan (needed when the file has several).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Print, for humans, why the plan is what it is: per-node table, bottleneck, headroom,
    /// SLO verdicts and what one more GPU or more cores would buy.
    #[arg(long)]
    pub explain: bool,
    /// Write the best plan even when an SLO cannot be met (still reported on stderr).
    #[arg(long)]
    pub allow_slo_miss: bool,
    /// Plan for an offered load of this many requests/s rather than for saturation: the plan
    /// must carry it, and among the plans that do, the lowest p99 at it wins (batch waits and
    /// replicas chosen for that load; latencies include queueing, SPEC 2.4.10).
    #[arg(long, value_name = "REQ_PER_S", value_parser = positive_rate)]
    pub rate: Option<f64>,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    let s = s.strip_suffix("/s").unwrap_or(s);
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "`{s}` is not a positive rate in requests/s (e.g. 200 or 200/s)"
        )),
    }
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    let source_path = args.file.display().to_string();
    let bytes = file_io::read_input(&args.file, "source", file_io::MAX_SOURCE_BYTES)?;
    let file = match SourceFile::from_bytes(&source_path, &bytes) {
        Ok(f) => f,
        Err(problems) => return Ok(report(&problems)),
    };
    let stdlib: Vec<SourceFile> = mars_stdlib::declarations::DECLARATIONS
        .iter()
        .map(|(path, text)| SourceFile {
            path: (*path).to_string(),
            text: (*text).to_string(),
        })
        .collect();
    let checked = mars_compiler::check_program(&file, &stdlib);
    if !checked.problems.is_empty() {
        eprint!("{}", checked.problems.render());
    }
    let Some(program) = checked.program else {
        return Ok(ExitCode::FAILURE);
    };
    let names = || {
        program
            .pipelines
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match &args.pipeline {
        Some(name) => program.pipeline(name).ok_or_else(|| {
            format!(
                "{source_path} has no pipeline `{name}`; it has: {}",
                names()
            )
        }),
        None => match program.pipelines.as_slice() {
            [only] => Ok(only),
            [] => Err(format!("{source_path} declares no pipeline")),
            _ => Err(format!(
                "{source_path} declares several pipelines ({}); choose one with --pipeline",
                names()
            )),
        },
    };
    let pipeline = match chosen {
        Ok(p) => p,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::FAILURE);
        }
    };

    let mut notes = Vec::new();
    let (profile, profile_text) = match &args.profile {
        Some(path) => {
            let text = read_text(path)?;
            match Profile::from_yaml(&text, &path.display().to_string()) {
                Ok(profile) => (Some(profile), Some(text)),
                Err(e) => return Ok(load_error(&e)),
            }
        }
        None => {
            eprintln!("note: no --profile: planning from annotations and defaults (every node assumed to take 1 ms per item)");
            (None, None)
        }
    };
    let (target, target_text) = match &args.target {
        Some(path) => {
            let text = read_text(path)?;
            match Target::from_yaml(&text, &path.display().to_string()) {
                Ok(target) => (target, Some(text)),
                Err(e) => return Ok(load_error(&e)),
            }
        }
        None => {
            let cpus = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1) as f64;
            let note = format!("no target given: planned for one CPU worker `local` with this machine's {cpus} cores");
            eprintln!("note: {note}");
            notes.push(note);
            let worker = Worker {
                name: "local".to_string(),
                cpus,
                memory_gb: 0.0,
                gpus: Vec::new(),
            };
            (
                Target {
                    mars_target: 1,
                    workers: vec![worker],
                },
                None,
            )
        }
    };

    let output = args
        .output
        .clone()
        .unwrap_or_else(|| args.file.with_extension("plan.yaml"));
    let inputs: Vec<&Path> = std::iter::once(args.file.as_path())
        .chain(args.profile.as_deref())
        .chain(args.target.as_deref())
        .collect();
    file_io::check_output(&output, &inputs)?;
    let options = PlanOptions {
        origin: PlanOrigin {
            source: relative_to_folder_of(&output, &args.file),
            source_hash: sha256(file.text.as_bytes()),
            profile_hash: profile_text.as_deref().map(|t| sha256(t.as_bytes())),
            target_hash: target_text.as_deref().map(|t| sha256(t.as_bytes())),
        },
        profile_path: args
            .profile
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        profile_text,
        notes,
        allow_slo_miss: args.allow_slo_miss,
        rate: args.rate,
        search: Default::default(),
    };
    let mut planned = match plan_pipeline_explained(pipeline, profile.as_ref(), &target, &options) {
        Ok(p) => p,
        Err(errors) => {
            let mut problems = Problems::for_file(&file);
            for e in &errors {
                problems.push(e.to_problem());
            }
            return Ok(report(&problems));
        }
    };
    // `weights = "model:NAME"` resolves through the model store; every weights file's sha256
    // goes into the plan (SPEC §4.8).
    let source_dir = args.file.parent().unwrap_or(Path::new(""));
    match mars_stdlib::store::record_plan_hashes(&mut planned.plan, source_dir) {
        Ok(store_notes) => store_notes.iter().for_each(|n| eprintln!("note: {n}")),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    }
    let plan = &planned.plan;
    for v in plan.slos.iter().filter(|v| !v.met) {
        eprintln!(
            "warning: slo {} is not met (predicted {}); the plan is written anyway",
            v.slo, v.predicted
        );
    }
    file_io::write_whole(&output, plan.to_yaml().as_bytes())?;
    let at = plan
        .rate
        .map(|r| format!(" at {r}/s offered"))
        .unwrap_or_default();
    eprintln!(
        "wrote {}: pipeline `{}`, {} nodes, {}/s, latency p99 {} ms{at}, bottleneck {}",
        output.display(),
        plan.pipeline,
        plan.nodes.len(),
        plan.predicted.throughput,
        plan.predicted.latency_p99_ms,
        plan.predicted.bottleneck
    );
    if args.explain {
        print!(
            "{}",
            explain(&planned, pipeline, profile.as_ref(), &target, &options)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn report(problems: &Problems) -> ExitCode {
    eprint!("{}", problems.render());
    ExitCode::FAILURE
}

/// A profile or target that does not load: `error: FILE:LINE: `KEY`: MESSAGE`, on one line.
fn load_error(e: &mars_plan::LoadError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

fn read_text(path: &Path) -> miette::Result<String> {
    file_io::read_input_text(path, "file", mars_plan::limits::MAX_YAML_BYTES)
}

/// `sha256:<hex>` of `bytes`, as plans record their inputs.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `target` as a path relative to the folder that will hold `file` (both made absolute
/// against the current directory first), with `/` separators.
fn relative_to_folder_of(file: &Path, target: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    let absolute = |p: &Path| -> Vec<String> {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        };
        let p = p.canonicalize().unwrap_or(p);
        let mut parts: Vec<String> = Vec::new();
        for c in p.components() {
            match c {
                Component::ParentDir => {
                    parts.pop();
                }
                Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
                _ => {}
            }
        }
        parts
    };
    let folder = {
        let f = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        absolute(f)
    };
    let to = absolute(target);
    let common = folder.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); folder.len() - common];
    parts.extend(to[common..].iter().cloned());
    parts.join("/")
}
