//! The priority controller of `marsc serve --deployment` (SPEC 10.8): every
//! [`priority::TICK`] it measures the cores the served (online) pipelines keep busy and the
//! requests waiting in them, asks [`priority::decide`] for the offline run's admission window,
//! and sets it. The offline run itself is `marsc run` with that window
//! (`mars_runtime::run::RunOptions::window`); this module only reads the online services and
//! moves the window.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use mars_runtime::pool::priority::{self, PriorityObs, PriorityState, Window};

use crate::Server;

/// What the controller steers.
#[derive(Clone)]
pub struct PriorityConfig {
    /// The machine's cores, shared by every pipeline of the deployment.
    pub cores: f64,
    /// The most cores the offline run may hold (its share, and its replicas).
    pub offline_max: usize,
    /// The offline run's window.
    pub window: Arc<Window>,
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
        window: config.window.limit(),
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
        let obs = PriorityObs {
            cores: config.cores,
            offline_max: config.offline_max,
            online_busy_now: busy_now,
            online_busy_smooth: s,
            online_waiting: (waiting - busy_now).max(0.0),
            online_cores,
        };
        let d = priority::decide(&obs, &mut state);
        if let Some(reason) = d.reason {
            config.window.set(d.window, &reason);
        }
    }
}
