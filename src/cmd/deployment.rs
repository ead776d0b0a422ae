//! `marsc serve --deployment FILE` (SPEC 10.8): the deployment's online plans are served as by
//! `marsc serve PLAN…`; each of its offline plans runs as `marsc run` would, from its input to
//! its output, on a thread of this process, admitting through the window the priority
//! controller (`mars_serve::priority`) moves and splits among them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use miette::miette;

use mars_plan::deployment::{Deployment, Priority};
use mars_runtime::pool::priority::Window;
use mars_serve::priority::{OfflineRun, PriorityConfig};

/// A deployment, read and checked.
pub struct Loaded {
    /// The online plans, to serve.
    pub online: Vec<PathBuf>,
    pub offline: Option<Offline>,
}

/// The offline runs and what steers them.
pub struct Offline {
    /// One per offline pipeline, in the order of `priority.offline`.
    pub runs: Vec<super::run::Args>,
    pub priority: PriorityConfig,
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Read the deployment file and the plans it names.
pub fn load(path: &Path) -> miette::Result<Loaded> {
    let name = path.display().to_string();
    let text =
        super::file_io::read_input_text(path, "deployment", mars_plan::limits::MAX_YAML_BYTES)?;
    let d = Deployment::from_yaml(&text, &name)
        .map_err(|e| miette!(code = "mars::serve::deployment", "{e}"))?;
    let dir = folder_of(path);
    let mut online = Vec::new();
    let mut budget = None;
    let mut offline = Vec::new();
    for p in &d.pipelines {
        let plan_path = dir.join(&p.plan);
        let (plan, _) = super::run::load_plan(&plan_path)?;
        let cpus = plan.budget.first().map(|b| b.cpus);
        match p.priority {
            Priority::Online => {
                budget = budget.or(cpus);
                online.push(plan_path);
            }
            Priority::Offline => {
                let replicas: u32 = plan.nodes.iter().map(|n| n.replicas).sum();
                offline.push((p.clone(), plan_path, plan.pipeline, replicas.max(1), cpus));
            }
        }
    }
    if online.is_empty() {
        return Err(miette!(
            code = "mars::serve::deployment",
            "{name}: a deployment serves at least one online pipeline (`priority: online`)"
        ));
    }
    if offline.is_empty() {
        return Ok(Loaded {
            online,
            offline: None,
        });
    }
    let offline_cpus = offline.iter().find_map(|o| o.4);
    let cores = d.cores.or(budget).or(offline_cpus).ok_or_else(|| {
        miette!(
            code = "mars::serve::deployment",
            help = "add `cores: N` to the deployment",
            "{name}: no plan has a core budget to share; say how many cores the pipelines share"
        )
    })?;
    let mut runs = Vec::new();
    let mut steered = Vec::new();
    for (p, plan, pipeline, replicas, _) in offline {
        let mut args = super::run::Args::for_plan(plan);
        args.input = dir.join(p.input.as_deref().unwrap_or_default());
        args.output = dir.join(p.output.as_deref().unwrap_or_default());
        args.resume = p.resume;
        args.quiet = true;
        args.stats_json = p.stats_json.as_ref().map(|s| dir.join(s));
        runs.push(args);
        // Two runs of one plan get distinct names in the metrics.
        let taken = steered
            .iter()
            .filter(|r: &&OfflineRun| {
                r.name == pipeline || r.name.starts_with(&format!("{pipeline}#"))
            })
            .count();
        steered.push(OfflineRun {
            name: if taken == 0 {
                pipeline
            } else {
                format!("{pipeline}#{}", taken + 1)
            },
            max: ((cores * p.share).floor() as usize).min(replicas as usize),
            share: p.share,
            // Nothing is lent before the controller has measured the online load.
            window: Arc::new(Window::new(0)),
        });
    }
    Ok(Loaded {
        online,
        offline: Some(Offline {
            runs,
            priority: PriorityConfig {
                cores,
                offline: steered,
            },
        }),
    })
}

/// The offline runs, each on its own thread.
pub struct Running {
    runs: Vec<OneRun>,
}

struct OneRun {
    thread: JoinHandle<miette::Result<ExitCode>>,
    window: Arc<Window>,
    output: PathBuf,
}

pub fn start(offline: Offline) -> miette::Result<Running> {
    let mut runs = Vec::new();
    for (args, steered) in offline.runs.into_iter().zip(&offline.priority.offline) {
        let window = Arc::clone(&steered.window);
        let output = args.output.clone();
        let w = Arc::clone(&window);
        let thread = std::thread::Builder::new()
            .name("mars:offline".into())
            .spawn(move || {
                let plan = args.plan.display().to_string();
                let r = super::run::execute_with(args, None, Some(Arc::clone(&w)));
                // Its cores go to the other offline runs (the controller sees the stop).
                w.stop();
                match &r {
                    Ok(_) => tracing::info!(target: "mars::priority", plan = %plan, "offline run ended"),
                    Err(e) => tracing::error!(target: "mars::priority", plan = %plan, "offline run failed: {e}"),
                }
                r
            })
            .map_err(|e| miette!("cannot start the offline run: {e}"))?;
        runs.push(OneRun {
            thread,
            window,
            output,
        });
    }
    Ok(Running { runs })
}

impl Running {
    /// Stop admitting offline requests, let those inside finish (for up to `bound`), and
    /// report how the runs ended (the first failure). Requests never admitted stay in the
    /// inputs for `resume`.
    pub fn finish(self, bound: Duration) -> miette::Result<()> {
        for r in &self.runs {
            r.window.set(0, "the server is shutting down");
            r.window.stop();
        }
        let until = Instant::now() + bound;
        let mut first_error = None;
        for r in self.runs {
            while !r.thread.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !r.thread.is_finished() {
                eprintln!(
                    "warning[mars::serve::drain]: the offline run still had {} requests inside at the drain bound; {} holds whole records only (rerun with `resume: true`)",
                    r.window.in_flight(),
                    r.output.display()
                );
                continue;
            }
            let outcome = match r.thread.join() {
                Ok(x) => x.map(|_| ()),
                Err(_) => Err(miette!("the offline run panicked")),
            };
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
