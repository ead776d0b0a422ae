//! `marsc bench priority` (SPEC 10.8): an online pipeline and an offline run on one machine of
//! `--cores` cores. The online load steps from 10% to 90% of the online capacity and back;
//! measured per second: the online p99, the cores each pipeline held, the offline window.
//! Three times: with the priority controller, with the online pipeline alone (the offline
//! window held at 0), and with the offline window fixed at all the cores (what running both
//! without priorities gives).
//!
//! The machine is stood for by a pool of `--cores` core tokens, taken in arrival order (as a
//! fair scheduler shares cores among runnable threads): each item of either pipeline holds one
//! token while it runs (`--item-ms`, asleep). So the contention is the target's, not that of
//! the small shared machine the bench runs on, and every core-second is counted.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use miette::{miette, IntoDiagnostic};

use mars_plan::Plan;
use mars_runtime::node::per_item;
use mars_runtime::pool::priority::Window;
use mars_runtime::run::service::{Service, ServiceOptions, Ticket};
use mars_runtime::run::RunOptions;
use mars_runtime::scenarios::{batch_none, delay_chain, SyntheticInput};
use mars_runtime::{NodeContext, Registry, Value};
use mars_serve::priority::{OfflineRun, PriorityConfig};
use mars_serve::{Limits, Server};

#[derive(clap::Args)]
pub struct Args {
    /// Cores of the machine both pipelines share (each pipeline has a replica per core).
    #[arg(long, default_value_t = 8)]
    pub cores: u32,
    /// What one item costs either pipeline, holding one core (ms).
    #[arg(long, default_value_t = 20.0)]
    pub item_ms: f64,
    /// The online load before and after the step, and during it, as fractions of the online
    /// capacity (cores / item cost).
    #[arg(long, default_value_t = 0.1)]
    pub low: f64,
    #[arg(long, default_value_t = 0.9)]
    pub high: f64,
    /// Seconds at the low load, then at the high load, then at the low load again.
    #[arg(long, default_value_t = 6)]
    pub before_s: u64,
    #[arg(long, default_value_t = 8)]
    pub step_s: u64,
    #[arg(long, default_value_t = 6)]
    pub after_s: u64,
    /// The online p99 objective (ms).
    #[arg(long, default_value_t = 150.0)]
    pub slo_ms: f64,
    /// Skip the runs of the online pipeline alone and without priorities.
    #[arg(long)]
    pub no_baseline: bool,
}

/// Core tokens granted in the order they are asked for; core-seconds held per pipeline.
struct Cores {
    /// (next ticket, tickets below this may run)
    state: Mutex<(u64, u64)>,
    turn: Condvar,
    held_ns: [AtomicU64; 2],
}

impl Cores {
    fn new(n: u32) -> Cores {
        Cores {
            state: Mutex::new((0, u64::from(n))),
            turn: Condvar::new(),
            held_ns: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    fn hold(&self, pool: usize, for_ms: f64) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = g.0;
        g.0 += 1;
        while ticket >= g.1 {
            g = self.turn.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        drop(g);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(for_ms / 1000.0));
        self.held_ns[pool].fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.1 += 1;
        self.turn.notify_all();
    }

    fn held_s(&self) -> [f64; 2] {
        [0, 1].map(|k| self.held_ns[k].load(Ordering::Relaxed) as f64 / 1e9)
    }
}

fn registry(cores: &Arc<Cores>) -> Registry {
    let mut r = mars_stdlib::registry();
    let c = Arc::clone(cores);
    r.builtin(
        "bench.core",
        Arc::new(move |ctx: &NodeContext| {
            let pool = usize::from(
                ctx.node
                    .params
                    .get("pool")
                    .and_then(serde_json::Value::as_i64)
                    == Some(1),
            );
            let ms = ctx
                .node
                .params
                .get("item_ms")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0);
            let c = Arc::clone(&c);
            Ok(per_item(move |item| {
                c.hold(pool, ms);
                Ok(vec![item.into_iter().next().unwrap_or(Value::Int(0))])
            }))
        }),
    );
    r
}

fn plan(name: &str, cores: u32, item_ms: f64, pool: i64) -> Plan {
    let mut p = delay_chain(name, &[item_ms], batch_none(), cores);
    for n in &mut p.nodes {
        n.implementation.builtin = Some("bench.core".into());
        n.params.insert("pool".into(), pool.into());
    }
    p
}

/// Record ids as the offline run writes them.
#[derive(Default)]
struct Ids {
    ids: Vec<u64>,
    partial: Vec<u8>,
}

impl Write for Ids {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(b);
        while let Some(i) = self.partial.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            let id = serde_json::from_slice::<serde_json::Value>(&line)
                .ok()
                .and_then(|j| j.get("id").and_then(serde_json::Value::as_u64))
                .ok_or_else(|| std::io::Error::other("a record without an id"))?;
            self.ids.push(id);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One second of the run.
#[derive(Debug, Clone, serde::Serialize)]
struct Second {
    t: u64,
    load: f64,
    answered: usize,
    p99_ms: f64,
    online_cores: f64,
    offline_cores: f64,
    window: f64,
}

struct Outcome {
    seconds: Vec<Second>,
    step_at_s: f64,
    first_shrink_ms: Option<f64>,
    moves: (u64, u64),
    offline_records: usize,
    offline_unique: usize,
    offline_requests: u64,
    online_failed: usize,
}

fn p99(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
}

/// How the offline run is treated in one run of the script.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// The priority controller moves its window.
    Controlled,
    /// Its window stays at all the cores (no priorities).
    Fixed,
    /// Its window stays 0: the online pipeline alone.
    Alone,
}

fn run_once(args: &Args, mode: Mode) -> miette::Result<Outcome> {
    let controlled = mode == Mode::Controlled;
    let cores = Arc::new(Cores::new(args.cores));
    let registry = registry(&cores);
    let online = plan("online", args.cores, args.item_ms, 0);
    let offline = plan("offline", args.cores, args.item_ms, 1);
    let service = Arc::new(
        Service::start(
            &online,
            std::path::Path::new("."),
            &registry,
            ServiceOptions::default(),
        )
        .map_err(|e| miette!("{e}"))?,
    );
    let metrics = Arc::new(mars_serve::metrics::Metrics::new());
    let server = Arc::new(Server::new(
        vec!["online".into()],
        Limits::open_defaults(),
        metrics,
    ));
    server.add("online".into(), Arc::clone(&service));
    let offline_max = args.cores as usize;
    let window = Arc::new(Window::new(if mode == Mode::Fixed {
        offline_max
    } else {
        0
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let controller = if controlled {
        Some(
            mars_serve::priority::start(
                Arc::clone(&server),
                PriorityConfig {
                    cores: f64::from(args.cores),
                    offline: vec![OfflineRun {
                        name: "offline".into(),
                        max: offline_max,
                        share: 1.0,
                        window: Arc::clone(&window),
                    }],
                },
                Arc::clone(&stop),
            )
            .into_diagnostic()?,
        )
    } else {
        None
    };
    // Far more offline requests than the run can finish: it is stopped at the end.
    let offline_n = 1_000_000u64;
    let offline_run = {
        let window = Arc::clone(&window);
        let registry = registry.clone();
        std::thread::spawn(move || {
            let mut ids = Ids::default();
            let opts = RunOptions {
                window: Some(window),
                ..RunOptions::default()
            };
            let r = mars_runtime::run_plan(
                &offline,
                std::path::Path::new("."),
                &registry,
                opts,
                SyntheticInput::new(offline_n),
                &mut ids,
            );
            (r, ids.ids)
        })
    };
    // Let the controller lend the idle cores before the script starts.
    std::thread::sleep(Duration::from_millis(1000));
    let capacity = f64::from(args.cores) * 1000.0 / args.item_ms;
    let phases = [
        (args.low, args.before_s),
        (args.high, args.step_s),
        (args.low, args.after_s),
    ];
    let total_s: u64 = phases.iter().map(|p| p.1).sum();
    let done: Arc<Mutex<Vec<(f64, f64, bool)>>> = Arc::default();
    let start = Instant::now();
    // Per second: core-seconds held and the window, sampled.
    let sampler = {
        let cores = Arc::clone(&cores);
        let window = Arc::clone(&window);
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut last = cores.held_s();
            let mut w_sum = 0.0;
            let mut w_n = 0.0;
            let mut next = 1u64;
            while next <= total_s {
                std::thread::sleep(Duration::from_millis(50));
                w_sum += window.limit() as f64;
                w_n += 1.0;
                if start.elapsed().as_secs_f64() >= next as f64 {
                    let now = cores.held_s();
                    out.push((now[0] - last[0], now[1] - last[1], w_sum / w_n));
                    last = now;
                    (w_sum, w_n) = (0.0, 0.0);
                    next += 1;
                }
            }
            out
        })
    };
    // Poisson arrivals (a fixed seed), latency from each request's scheduled arrival.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut t = 0.0f64;
    let mut ends = Vec::new();
    let mut phase_start = 0.0;
    for (load, secs) in phases {
        let rate = load * capacity;
        let end = phase_start + secs as f64;
        ends.push(end);
        loop {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let u = ((seed >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            t += -u.ln() / rate.max(1e-9);
            if t >= end {
                t = end;
                break;
            }
            let at = start + Duration::from_secs_f64(t);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let answered = Arc::clone(&done);
            let scheduled = t;
            let reply = Box::new(move |o: mars_runtime::dataflow::sink::Outcome| {
                let took = start.elapsed().as_secs_f64() - scheduled;
                if let Ok(mut d) = answered.lock() {
                    d.push((scheduled, took * 1000.0, o.result.is_ok()));
                }
            });
            let values = vec![Value::Int(1)];
            if service.submit(values, Ticket::default(), reply).is_err() {
                if let Ok(mut d) = done.lock() {
                    d.push((scheduled, f64::INFINITY, false));
                }
            }
        }
        phase_start = end;
    }
    let _ = service.drain(Duration::from_secs(30));
    let samples = sampler
        .join()
        .map_err(|_| miette!("the sampler panicked"))?;
    stop.store(true, Ordering::Release);
    if let Some(c) = controller {
        let _ = c.join();
    }
    window.set(0, "the bench is over");
    window.stop();
    let (report, ids) = offline_run
        .join()
        .map_err(|_| miette!("the offline run panicked"))?;
    let report = report.map_err(|e| miette!("the offline run failed: {e}"))?;
    let done = done.lock().map_err(|_| miette!("poisoned"))?.clone();
    let load_at = |s: f64| {
        let k = ends.iter().position(|&e| s < e).unwrap_or(2);
        phases[k].0
    };
    let seconds: Vec<Second> = (0..total_s)
        .map(|s| {
            let mut lat: Vec<f64> = done
                .iter()
                .filter(|d| d.0 >= s as f64 && d.0 < (s + 1) as f64)
                .map(|d| d.1)
                .collect();
            let (on, off, w) = samples.get(s as usize).copied().unwrap_or((0.0, 0.0, 0.0));
            Second {
                t: s,
                load: load_at(s as f64),
                answered: lat.len(),
                p99_ms: (p99(&mut lat) * 10.0).round() / 10.0,
                online_cores: (on * 100.0).round() / 100.0,
                offline_cores: (off * 100.0).round() / 100.0,
                window: (w * 10.0).round() / 10.0,
            }
        })
        .collect();
    let step_at_s = ends[0];
    let stats = report.stats.priority.clone();
    let first_shrink_ms = stats.as_ref().and_then(|p| {
        // The window's clock started 1 s before the script.
        p.log
            .iter()
            .find(|m| {
                m.to < m.from
                    && m.at_s >= step_at_s + 1.0 - 0.05
                    && m.at_s < step_at_s + 1.0 + args.step_s as f64
            })
            .map(|m| (m.at_s - 1.0 - step_at_s) * 1000.0)
    });
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    Ok(Outcome {
        seconds,
        step_at_s,
        first_shrink_ms,
        moves: window.moves(),
        offline_records: ids.len(),
        offline_unique: unique.len(),
        offline_requests: report.stats.requests,
        online_failed: done.iter().filter(|d| !d.2).count(),
    })
}

fn summarize(args: &Args, name: &str, o: &Outcome) -> serde_json::Value {
    let c = f64::from(args.cores);
    let step = o.step_at_s as u64;
    let high_end = step + args.step_s;
    // Reaction: after it, every second of the high phase meets the objective.
    let late = o
        .seconds
        .iter()
        .filter(|s| s.t >= step && s.t < high_end && s.p99_ms > args.slo_ms)
        .map(|s| s.t + 1 - step)
        .max()
        .unwrap_or(0);
    let held_after = o
        .seconds
        .iter()
        .filter(|s| s.t >= step + late && s.t < high_end)
        .all(|s| s.p99_ms <= args.slo_ms);
    let worst = |from: u64, to: u64| {
        o.seconds
            .iter()
            .filter(|s| s.t >= from && s.t < to)
            .map(|s| s.p99_ms)
            .fold(0.0, f64::max)
    };
    let idle: f64 = o
        .seconds
        .iter()
        .map(|s| (c - s.online_cores).max(0.0))
        .sum();
    let used: f64 = o.seconds.iter().map(|s| s.offline_cores).sum();
    let share = used / idle.max(1e-9);
    println!("{name}:");
    println!("  t(s) load  online answered  p99 ms  online cores  offline cores  window");
    for s in &o.seconds {
        println!(
            "  {:>4} {:>4.0}%  {:>15}  {:>6.1}  {:>12.2}  {:>13.2}  {:>6.1}",
            s.t,
            s.load * 100.0,
            s.answered,
            s.p99_ms,
            s.online_cores,
            s.offline_cores,
            s.window
        );
    }
    println!(
        "  online p99 (worst second): before the step {:.1} ms, during it {:.1} ms, after it {:.1} ms; objective {} ms: {} {late} s after the step{}",
        worst(0, step),
        worst(step, high_end),
        worst(high_end, u64::MAX),
        args.slo_ms,
        if held_after && late < args.step_s { "met from" } else { "NOT met" },
        o.first_shrink_ms
            .map(|m| format!(" (first offline shrink {m:.0} ms after the step)"))
            .unwrap_or_default()
    );
    println!(
        "  offline: {:.2} of the {:.2} core-seconds the online pipeline left idle ({:.1}%); window moves: {} shrinks, {} grows",
        used,
        idle,
        share * 100.0,
        o.moves.0,
        o.moves.1
    );
    println!(
        "  offline exactly once: {} records, {} distinct ids, {} requests counted by the run; online failures: {}",
        o.offline_records, o.offline_unique, o.offline_requests, o.online_failed
    );
    serde_json::json!({
        "seconds": o.seconds,
        "reaction_s": late,
        "slo_met_after_reaction": held_after && late < args.step_s,
        "first_shrink_ms": o.first_shrink_ms,
        "p99_before_ms": worst(0, step),
        "p99_step_ms": worst(step, high_end),
        "p99_after_ms": worst(high_end, u64::MAX),
        "offline_core_s": used,
        "idle_core_s": idle,
        "offline_share_of_idle": share,
        "shrinks": o.moves.0,
        "grows": o.moves.1,
        "offline_records": o.offline_records,
        "offline_distinct": o.offline_unique,
        "offline_requests": o.offline_requests,
        "online_failures": o.online_failed,
    })
}

pub fn bench(args: Args) -> miette::Result<serde_json::Value> {
    if args.cores == 0
        || args.item_ms <= 0.0
        || !(0.0..=1.0).contains(&args.low)
        || !(0.0..=1.0).contains(&args.high)
    {
        return Err(miette!(
            code = "mars::bench::priority",
            "--cores and --item-ms must be positive, --low and --high in [0, 1]"
        ));
    }
    println!(
        "priority: {} cores; online and offline pipelines of one stage ({} ms an item, a replica per core); online capacity {:.0} req/s; load {:.0}% for {} s, {:.0}% for {} s, {:.0}% for {} s; p99 objective {} ms",
        args.cores,
        args.item_ms,
        f64::from(args.cores) * 1000.0 / args.item_ms,
        args.low * 100.0,
        args.before_s,
        args.high * 100.0,
        args.step_s,
        args.low * 100.0,
        args.after_s,
        args.slo_ms
    );
    let with = run_once(&args, Mode::Controlled)?;
    let mut out =
        serde_json::json!({"controlled": summarize(&args, "with the priority controller", &with)});
    if !args.no_baseline {
        let alone = run_once(&args, Mode::Alone)?;
        out["alone"] = summarize(
            &args,
            "the online pipeline alone (offline window 0)",
            &alone,
        );
        let without = run_once(&args, Mode::Fixed)?;
        out["fixed"] = summarize(
            &args,
            "without priorities (offline window fixed at all the cores)",
            &without,
        );
    }
    Ok(out)
}
