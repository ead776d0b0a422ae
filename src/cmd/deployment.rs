//! `marsc serve --deployment FILE` (SPEC 10.8): the deployment's online plans are served as by
//! `marsc serve PLAN…`; its offline plan runs as `marsc run` would, from its input to its
//! output, on a thread of this process, admitting through the window the priority controller
//! (`mars_serve::priority`) moves.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use miette::miette;

use mars_plan::deployment::{Deployment, Priority};
use mars_runtime::pool::priority::Window;
use mars_serve::priority::PriorityConfig;

/// A deployment, read and checked.
pub struct Loaded {
    /// The online plans, to serve.
    pub online: Vec<PathBuf>,
    pub offline: Option<Offline>,
}

/// The offline run and what steers it.
pub struct Offline {
    pub args: super::run::Args,
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
    let mut offline = None;
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
                offline = Some((p.clone(), plan_path, replicas.max(1), cpus));
            }
        }
    }
    if online.is_empty() {
        return Err(miette!(
            code = "mars::serve::deployment",
            "{name}: a deployment serves at least one online pipeline (`priority: online`)"
        ));
    }
    let Some((p, plan, replicas, offline_cpus)) = offline else {
        return Ok(Loaded {
            online,
            offline: None,
        });
    };
    let cores = d.cores.or(budget).or(offline_cpus).ok_or_else(|| {
        miette!(
            code = "mars::serve::deployment",
            help = "add `cores: N` to the deployment",
            "{name}: no plan has a core budget to share; say how many cores the pipelines share"
        )
    })?;
    let offline_max = ((cores * p.share).floor() as usize).min(replicas as usize);
    let mut args = super::run::Args::for_plan(plan);
    args.input = dir.join(p.input.as_deref().unwrap_or_default());
    args.output = dir.join(p.output.as_deref().unwrap_or_default());
    args.resume = p.resume;
    args.quiet = true;
    args.stats_json = p.stats_json.as_ref().map(|s| dir.join(s));
    Ok(Loaded {
        online,
        offline: Some(Offline {
            args,
            priority: PriorityConfig {
                cores,
                offline_max,
                // Nothing is lent before the controller has measured the online load.
                window: Arc::new(Window::new(0)),
            },
        }),
    })
}

/// The offline run, on its own thread.
pub struct Running {
    thread: JoinHandle<miette::Result<ExitCode>>,
    window: Arc<Window>,
    output: PathBuf,
}

pub fn start(offline: Offline) -> miette::Result<Running> {
    let window = Arc::clone(&offline.priority.window);
    let output = offline.args.output.clone();
    let w = Arc::clone(&window);
    let args = offline.args;
    let thread = std::thread::Builder::new()
        .name("mars:offline".into())
        .spawn(move || {
            let plan = args.plan.display().to_string();
            let r = super::run::execute_with(args, None, Some(w));
            match &r {
                Ok(_) => tracing::info!(target: "mars::priority", plan = %plan, "offline run ended"),
                Err(e) => tracing::error!(target: "mars::priority", plan = %plan, "offline run failed: {e}"),
            }
            r
        })
        .map_err(|e| miette!("cannot start the offline run: {e}"))?;
    Ok(Running {
        thread,
        window,
        output,
    })
}

impl Running {
    /// Stop admitting offline requests, let those inside finish (for up to `bound`), and
    /// report how the run ended. Requests never admitted stay in the input for `resume`.
    pub fn finish(self, bound: Duration) -> miette::Result<()> {
        self.window.set(0, "the server is shutting down");
        self.window.stop();
        let until = Instant::now() + bound;
        while !self.thread.is_finished() {
            if Instant::now() >= until {
                eprintln!(
                    "warning[mars::serve::drain]: the offline run still had {} requests inside at the drain bound; {} holds whole records only (rerun with `resume: true`)",
                    self.window.in_flight(),
                    self.output.display()
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match self.thread.join() {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(miette!("the offline run panicked")),
        }
    }
}
