//! The priority controller of `marsc serve --deployment` (SPEC 10.8): every
//! [`priority::TICK`] it measures the cores the served (online) pipelines keep busy and the
//! requests waiting in them, asks [`priority::decide`] for the offline runs' admission window,
//! splits it among the runs by share ([`priority::split`]) and sets each run's part. Each
//! offline run itself is `marsc run` with its window (`mars_runtime::run::RunOptions::window`);
//! this module only reads the online services and moves the windows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use mars_runtime::pool::priority::{self, Claim, PriorityObs, PriorityState, Window};

use crate::Server;

/// What the controller steers.
#[derive(Clone)]
pub struct PriorityConfig {
    /// The machine's cores, shared by every pipeline of the deployment.
    pub cores: f64,
    /// The offline runs, in the deployment's order (ties of the split go to the earlier).
    pub offline: Vec<OfflineRun>,
}

/// One offline run the controller lends cores to.
#[derive(Clone)]
pub struct OfflineRun {
    /// Its name in the metrics (`pipeline` label) and the log.
    pub name: String,
    /// The most cores it may hold (its share of the cores, and its replicas).
    pub max: usize,
    /// Its weight in the split of the window.
    pub share: f64,
    /// Its window.
    pub window: Arc<Window>,
}

impl PriorityConfig {
    /// The runs' claims now: a run whose window was stopped (its input ended, or the server
    /// is shutting down) claims nothing.
    fn claims(&self) -> Vec<Claim> {
        self.offline
            .iter()
            .map(|r| Claim {
                max: r.max,
                share: r.share,
                open: !r.window.stopped(),
            })
            .collect()
    }
}

/// The weight of the newest tick in the smoothed busy cores.
const SMOOTHING: f64 = 0.5;

/// Start the controller thread; it ends once `stop` is set.
pub fn start(
    server: Arc<Server>,
    config: PriorityConfig,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("mars:priority".into())
        .spawn(move || control_loop(&server, &config, &stop))
}

/// Per online node: cores one replica stands for (its range's `cores`, else 1).
fn cores_per_replica(plan: &mars_plan::Plan) -> Vec<f64> {
    plan.nodes
        .iter()
        .map(|n| n.replica_range.as_ref().map_or(1.0, |r| r.cores.max(0.0)))
        .collect()
}

fn control_loop(server: &Server, config: &PriorityConfig, stop: &AtomicBool) {
    let mut state = PriorityState {
        window: config.offline.iter().map(|r| r.window.limit()).sum(),
        recent: Vec::new(),
    };
    // Core-seconds busy so far, per online pipeline, and when they were read.
    let mut last_busy: Vec<(String, f64)> = Vec::new();
    let mut last = Instant::now();
    let mut smooth: Option<f64> = None;
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(priority::TICK);
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64().max(1e-6);
        last = now;
        let (mut busy_s, mut waiting, mut online_cores) = (Vec::new(), 0.0, 0.0);
        for (name, service) in server.all() {
            let Some(s) = service else { continue };
            let per = cores_per_replica(s.plan());
            let mut b = 0.0;
            for (k, (_, st)) in s.node_stats().into_iter().enumerate() {
                let c = per.get(k).copied().unwrap_or(1.0);
                b += st.busy_s * c;
                online_cores += f64::from(st.replicas) * c;
            }
            waiting += s.in_flight() as f64;
            busy_s.push((name, b));
        }
        let busy_now: f64 = busy_s
            .iter()
            .map(|(name, b)| {
                let before = last_busy
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(*b, |(_, x)| *x);
                (b - before).max(0.0) / dt
            })
            .sum();
        last_busy = busy_s;
        let s = smooth.map_or(busy_now, |o| SMOOTHING * busy_now + (1.0 - SMOOTHING) * o);
        smooth = Some(s);
        server.metrics.set_online_busy(busy_now);
        let claims = config.claims();
        let obs = PriorityObs {
            cores: config.cores,
            offline_max: priority::claims_max(&claims),
            online_busy_now: busy_now,
            online_busy_smooth: s,
            online_waiting: (waiting - busy_now).max(0.0),
            online_cores,
        };
        let d = priority::decide(&obs, &mut state);
        let parts = priority::split(d.window, &claims);
        for ((run, part), claim) in config.offline.iter().zip(parts).zip(&claims) {
            if part == run.window.limit() {
                continue;
            }
            let why = match &d.reason {
                Some(r) if config.offline.len() == 1 => r.clone(),
                Some(r) => format!("{r}; its part of {} by share", d.window),
                None if !claim.open => continue,
                None => format!(
                    "another offline run ended or is full: its part of {} by share",
                    d.window
                ),
            };
            run.window.set(part, &why);
        }
    }
}
