//! Priorities (SPEC 10.8): online pipelines served next to an offline batch run on one
//! machine's cores. The offline run admits requests through an [`Window`]: at most `limit`
//! of its requests are inside its dataflow at once, so (each of its replicas holding one
//! core while it runs one batch) it holds at most `limit` cores. A controller, every [`TICK`],
//! measures the cores the online pipelines keep busy and their backlog, and asks the pure
//! [`decide`] for the offline window: it shrinks at once when the online load rises (to 0: a
//! pause, the offline requests inside finishing) and grows back, after [`GROW_AFTER`] calm
//! ticks, when the online load falls.
//!
//! A deployment with several offline runs splits the window among them by share ([`split`]).
//!
//! Nothing here blocks a pipeline: the window is atomics, read by the offline source each time
//! it admits. The offline requests a smaller window keeps out simply wait in the input; none is
//! dropped, so every offline request still ends exactly once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::round3;

/// How often the priority controller looks.
pub const TICK: Duration = Duration::from_millis(100);
/// The online pipelines' measured busy cores, raised by this much, are kept free for them.
pub const HEADROOM: f64 = 0.05;
/// The window grows only when every one of the last this many ticks would have it larger,
/// and then to the smallest of their targets (a burst of calm is not trusted).
pub const GROW_AFTER: usize = 3;
/// A tick whose busy cores exceed the smoothed ones by more than this many is believed at once
/// (a rise), before the smoothed load shows it; a smaller flicker is not.
pub const RISE_CORES: f64 = 1.0;
/// Online requests waiting per online core (queued, or inside and not running) that count as
/// pressure: the window halves at once, whatever the busy cores say.
pub const PRESSURE_PER_CORE: f64 = 2.0;

/// What the controller measured over the last tick.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityObs {
    /// The deployment's cores (its target's).
    pub cores: f64,
    /// The most cores the offline run may hold: ⌊cores × share⌋, and no more than its
    /// replicas.
    pub offline_max: usize,
    /// Cores the online pipelines kept busy over the last tick, and smoothed over the last
    /// ticks; the larger of the two counts (a rise is believed at once).
    pub online_busy_now: f64,
    pub online_busy_smooth: f64,
    /// Online requests accepted and not running: in the admission queues, or inside the
    /// dataflows beyond the busy replicas.
    pub online_waiting: f64,
    /// Cores the online pipelines hold replicas for (the most they can keep busy).
    pub online_cores: f64,
}

/// The controller's memory between ticks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriorityState {
    /// The offline window now.
    pub window: usize,
    /// The raw targets of the last ticks, newest last (at most [`GROW_AFTER`]).
    pub recent: Vec<usize>,
}

/// The window the offline run gets from now on, and why, when it changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub window: usize,
    pub reason: Option<String>,
}

/// The offline window the cores leave when the online pipelines keep `busy` cores busy: all
/// the cores but those plus [`HEADROOM`], within `0..=offline_max`.
pub fn free_window(obs: &PriorityObs, busy: f64) -> usize {
    let free = obs.cores - busy.max(0.0) * (1.0 + HEADROOM);
    if free <= 0.0 {
        return 0;
    }
    (free.floor() as usize).min(obs.offline_max)
}

/// The window the smoothed online load leaves (what the window settles at).
pub fn target(obs: &PriorityObs) -> usize {
    free_window(obs, obs.online_busy_smooth)
}

/// One tick: the new window. Shrinks at once: to the smoothed target, or to the last tick's
/// when its busy cores exceed the smoothed ones by more than [`RISE_CORES`] (a rise is
/// believed at once, a flicker is not); halves under online pressure; grows only after
/// [`GROW_AFTER`] ticks since the last shrink whose targets all want more, to the smallest of
/// them.
pub fn decide(obs: &PriorityObs, state: &mut PriorityState) -> Decision {
    let raw = target(obs);
    state.recent.push(raw);
    if state.recent.len() > GROW_AFTER {
        state.recent.remove(0);
    }
    let now = state.window;
    let pressed = obs.online_waiting > PRESSURE_PER_CORE * obs.online_cores.max(1.0);
    let rising = obs.online_busy_now > obs.online_busy_smooth + RISE_CORES;
    let shrink_to = if rising {
        free_window(obs, obs.online_busy_now).min(raw)
    } else {
        raw
    };
    let (next, why) = if pressed && now > 0 {
        (
            shrink_to.min(now / 2),
            format!(
                "online pressure: {:.0} requests waiting for {:.1} online cores",
                obs.online_waiting, obs.online_cores
            ),
        )
    } else if shrink_to < now {
        (
            shrink_to,
            format!(
                "online busy {:.2} cores now, {:.2} smoothed, of {:.0}: shrink",
                obs.online_busy_now, obs.online_busy_smooth, obs.cores
            ),
        )
    } else if !pressed
        && !rising
        && state.recent.len() == GROW_AFTER
        && state.recent.iter().all(|&r| r > now)
    {
        let to = state.recent.iter().copied().min().unwrap_or(now);
        (
            to,
            format!(
                "online busy {:.2} cores of {:.0} for {GROW_AFTER} ticks: grow",
                obs.online_busy_smooth, obs.cores
            ),
        )
    } else {
        (now, String::new())
    };
    if next < now {
        // Targets from before a shrink do not count towards growing again.
        state.recent.clear();
    }
    state.window = next;
    Decision {
        window: next,
        reason: (next != now).then_some(why),
    }
}

/// One offline run's claim on the offline window (a deployment may run several).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Claim {
    /// The most cores it may hold: ⌊cores × share⌋, and no more than its replicas.
    pub max: usize,
    /// Its `share` of the deployment, the weight it gets of the window.
    pub share: f64,
    /// Still admitting: a run whose input has ended (or that was stopped) gets nothing.
    pub open: bool,
}

/// The most the open runs can hold together: the `offline_max` the controller steers under.
pub fn claims_max(claims: &[Claim]) -> usize {
    claims.iter().filter(|c| c.open).map(|c| c.max).sum()
}

/// Split the offline window `total` among the offline runs: in proportion to their shares,
/// none past its `max` and nothing to a run that has ended; what a run cannot take goes to
/// the others, again by share. Whole cores: each round gives every run the floor of its part,
/// then one more each by the largest remainder (ties to the earlier run in the deployment).
/// The parts sum to `total`, or to what the open runs can hold when that is less.
pub fn split(total: usize, claims: &[Claim]) -> Vec<usize> {
    let mut out = vec![0usize; claims.len()];
    let mut left = total.min(claims_max(claims));
    let mut active: Vec<usize> = (0..claims.len())
        .filter(|&i| claims[i].open && claims[i].max > 0)
        .collect();
    while left > 0 && !active.is_empty() {
        let weight: f64 = active.iter().map(|&i| claims[i].share.max(1e-9)).sum();
        let mut rest = Vec::new();
        let mut given = 0;
        for &i in &active {
            let ideal = left as f64 * claims[i].share.max(1e-9) / weight;
            let room = claims[i].max - out[i];
            let take = (ideal.floor() as usize).min(room);
            out[i] += take;
            given += take;
            if room > take {
                rest.push((ideal - ideal.floor(), i));
            }
        }
        left -= given;
        rest.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, i) in rest {
            if left == 0 {
                break;
            }
            out[i] += 1;
            left -= 1;
        }
        active.retain(|&i| out[i] < claims[i].max);
    }
    out
}

/// One change of the offline window, as the stats and the log report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowMove {
    /// Seconds since the window was made.
    pub at_s: f64,
    pub from: usize,
    pub to: usize,
    pub reason: String,
}

/// What the priority controller did to an offline run (`--stats-json` field `priority`, and
/// the deployment's offline stats).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriorityStats {
    pub tick_ms: u64,
    pub moves: u64,
    pub shrinks: u64,
    pub grows: u64,
    /// The window at the end, and the fewest and most it had.
    pub window: usize,
    pub fewest: usize,
    pub most: usize,
    /// The window integrated over time (core-seconds the offline run was lent).
    pub window_s: f64,
    /// The run was stopped (the server shut down) before its input ended.
    pub stopped: bool,
    pub log: Vec<WindowMove>,
}

#[derive(Debug, Default)]
struct WindowLog {
    moves: Vec<WindowMove>,
    fewest: usize,
    most: usize,
    window_s: f64,
    last: Option<Instant>,
}

/// An offline run's admission window: the source admits while fewer than `limit` of its
/// requests are inside the dataflow (and under its own `max_inflight`).
#[derive(Debug)]
pub struct Window {
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    done: AtomicU64,
    stop: AtomicBool,
    started: Instant,
    log: Mutex<WindowLog>,
}

impl Window {
    pub fn new(limit: usize) -> Window {
        Window {
            limit: AtomicUsize::new(limit),
            in_flight: AtomicUsize::new(0),
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            started: Instant::now(),
            log: Mutex::new(WindowLog {
                fewest: limit,
                most: limit,
                last: Some(Instant::now()),
                ..WindowLog::default()
            }),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, WindowLog> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Requests the source may have inside the dataflow now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Set the window (the source sees it at its next activation, at most 10 ms later),
    /// logging the move with `reason`.
    pub fn set(&self, to: usize, reason: &str) {
        let mut log = self.log();
        let now = Instant::now();
        let from = self.limit();
        if let Some(t) = log.last.replace(now) {
            log.window_s += from as f64 * now.duration_since(t).as_secs_f64();
        }
        if to == from {
            return;
        }
        self.limit.store(to, Ordering::Release);
        log.fewest = log.fewest.min(to);
        log.most = log.most.max(to);
        tracing::info!(target: "mars::priority", "offline window {from} → {to}: {reason}");
        log.moves.push(WindowMove {
            at_s: round3(now.duration_since(self.started).as_secs_f64()),
            from,
            to,
            reason: reason.to_string(),
        });
    }

    /// Stop admitting for good: the requests inside finish, the rest stay in the input (a
    /// later `--resume` runs them).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The offline requests inside the dataflow now (kept by its source and sink).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Offline requests that left the dataflow so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    pub(crate) fn admitted(&self, n: usize) {
        self.in_flight.fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn finished(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
        self.done.fetch_add(1, Ordering::AcqRel);
    }

    /// Moves counted so far.
    pub fn moves(&self) -> (u64, u64) {
        let log = self.log();
        let shrinks = log.moves.iter().filter(|m| m.to < m.from).count() as u64;
        (shrinks, log.moves.len() as u64 - shrinks)
    }

    /// The report for the run's stats.
    pub fn report(&self) -> PriorityStats {
        self.set(self.limit(), "");
        let log = self.log();
        let (shrinks, grows) = {
            let s = log.moves.iter().filter(|m| m.to < m.from).count() as u64;
            (s, log.moves.len() as u64 - s)
        };
        PriorityStats {
            tick_ms: TICK.as_millis() as u64,
            moves: log.moves.len() as u64,
            shrinks,
            grows,
            window: self.limit(),
            fewest: log.fewest,
            most: log.most,
            window_s: round3(log.window_s),
            stopped: self.stopped(),
            log: log.moves.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8 cores, offline up to 8, online replicas for 8 cores.
    fn obs(now: f64, smooth: f64, waiting: f64) -> PriorityObs {
        PriorityObs {
            cores: 8.0,
            offline_max: 8,
            online_busy_now: now,
            online_busy_smooth: smooth,
            online_waiting: waiting,
            online_cores: 8.0,
        }
    }

    fn state(window: usize) -> PriorityState {
        PriorityState {
            window,
            recent: Vec::new(),
        }
    }

    #[test]
    fn the_window_leaves_the_online_busy_cores_and_headroom() {
        // (online busy cores, offline max) → window
        let cases = [
            (0.0, 8, 8),
            (0.8, 8, 7),  // 8 − 0.84 = 7.16
            (2.0, 8, 5),  // 8 − 2.1
            (3.0, 8, 4),  // 8 − 3.15
            (7.2, 8, 0),  // 8 − 7.56 = 0.44
            (8.0, 8, 0),  // nothing left
            (0.0, 3, 3),  // the offline share caps it
            (-1.0, 8, 8), // a negative reading counts as idle
        ];
        for (busy, max, want) in cases {
            let mut o = obs(0.0, 0.0, 0.0);
            o.offline_max = max;
            assert_eq!(free_window(&o, busy), want, "busy {busy}, max {max}");
        }
        // The target follows the smoothed load.
        assert_eq!(target(&obs(5.0, 0.8, 0.0)), 7);
    }

    #[test]
    fn a_flicker_of_the_online_load_does_not_shrink_the_window_a_rise_does() {
        // Smoothed 0.8: the window is 7. A tick at 1.6 (a flicker under a core) keeps it.
        let mut s = state(7);
        assert_eq!(
            decide(&obs(1.6, 0.8, 0.0), &mut s),
            Decision {
                window: 7,
                reason: None
            }
        );
        // A tick at 2.5 (1.5 over the smoothed load) is believed: 8 − 2.625.
        assert_eq!(decide(&obs(2.5, 1.0, 0.0), &mut s).window, 5);
    }

    #[test]
    fn it_shrinks_at_once_when_the_online_load_rises() {
        let mut s = state(7);
        let d = decide(&obs(6.0, 1.5, 0.0), &mut s);
        assert_eq!(d.window, 1, "8 − 6.3 = 1.7");
        assert!(d.reason.expect("a move").contains("shrink"));
        let d = decide(&obs(7.5, 6.0, 0.0), &mut s);
        assert_eq!(d.window, 0, "paused");
        let d = decide(&obs(7.5, 7.5, 0.0), &mut s);
        assert_eq!((d.window, d.reason), (0, None), "no move while it stays");
    }

    #[test]
    fn it_grows_back_only_after_calm_ticks_and_to_their_smallest_target() {
        let mut s = state(0);
        // Three calm ticks with targets 7, 5, 6: the third grows to 5.
        for (busy, want) in [(0.8, 0), (2.5, 0), (1.5, 5)] {
            let d = decide(&obs(busy, busy, 0.0), &mut s);
            assert_eq!(d.window, want, "busy {busy}");
        }
        // One busy tick in between restarts the count.
        let mut s = state(0);
        for (busy, want) in [(0.8, 0), (7.9, 0), (0.8, 0), (0.8, 0), (0.8, 7)] {
            assert_eq!(decide(&obs(busy, busy, 0.0), &mut s).window, want);
        }
    }

    #[test]
    fn online_pressure_halves_the_window_whatever_the_busy_cores_say() {
        // 20 requests waiting for 8 online cores (> 2 per core): halve, even though the busy
        // cores would leave 7.
        let mut s = state(6);
        let d = decide(&obs(0.8, 0.8, 20.0), &mut s);
        assert_eq!(d.window, 3);
        assert!(d.reason.expect("a move").contains("pressure"));
        assert_eq!(decide(&obs(0.8, 0.8, 20.0), &mut s).window, 1);
        assert_eq!(decide(&obs(0.8, 0.8, 20.0), &mut s).window, 0);
        // Pressure never grows it.
        for _ in 0..5 {
            assert_eq!(decide(&obs(0.8, 0.8, 20.0), &mut s).window, 0);
        }
        // 16 waiting is not more than 2 per core.
        let mut s = state(6);
        assert_eq!(decide(&obs(0.8, 0.8, 16.0), &mut s).window, 6);
    }

    #[test]
    fn a_step_from_ten_to_ninety_percent_and_back_pauses_and_restores_the_offline_run() {
        // A closed loop over scripted online loads: busy = load × 8 cores, smoothed ½/½.
        let mut s = state(8);
        let mut smooth = 0.0;
        let mut windows = Vec::new();
        let script: Vec<f64> = [0.1; 10]
            .into_iter()
            .chain([0.9; 10])
            .chain([0.1; 10])
            .collect();
        for load in &script {
            let now = load * 8.0;
            smooth = 0.5 * now + 0.5 * smooth;
            windows.push(decide(&obs(now, smooth, 0.0), &mut s).window);
        }
        assert_eq!(
            windows[9], 7,
            "at 10% the offline run holds 7 of 8: {windows:?}"
        );
        assert_eq!(windows[10], 0, "paused on the first tick of the step");
        assert!(windows[10..20].iter().all(|&w| w == 0), "{windows:?}");
        assert_eq!(windows[20], 0, "no growth on the first calm tick");
        assert!(windows[20..23].iter().all(|&w| w < 7));
        assert_eq!(windows[29], 7, "grown back");
        // Every window leaves the online busy cores plus headroom free.
        for (load, w) in script.iter().zip(&windows) {
            assert!(*w as f64 + load * 8.0 * (1.0 + HEADROOM) <= 8.0 + 1e-9);
        }
    }

    fn claim(max: usize, share: f64, open: bool) -> Claim {
        Claim { max, share, open }
    }

    #[test]
    fn the_window_is_split_by_share_within_each_runs_max() {
        let two = [claim(8, 0.5, true), claim(8, 0.5, true)];
        let cases: &[(usize, &[Claim], &[usize])] = &[
            // Even shares: even parts, the odd core to the earlier run.
            (6, &two, &[3, 3]),
            (7, &two, &[4, 3]),
            (0, &two, &[0, 0]),
            // 3 : 1.
            (8, &[claim(8, 0.75, true), claim(8, 0.25, true)], &[6, 2]),
            // A run at its max leaves the rest to the other.
            (8, &[claim(2, 0.5, true), claim(8, 0.5, true)], &[2, 6]),
            // An ended run gets nothing; its part goes to the open one.
            (6, &[claim(8, 0.5, false), claim(8, 0.5, true)], &[0, 6]),
            // More than the runs can hold: each at its max.
            (20, &[claim(3, 0.5, true), claim(4, 0.5, true)], &[3, 4]),
            // Remainders: 5 over thirds is 1.67 each, so 2, 2, 1.
            (
                5,
                &[
                    claim(8, 0.3, true),
                    claim(8, 0.3, true),
                    claim(8, 0.3, true),
                ],
                &[2, 2, 1],
            ),
            // No room anywhere.
            (4, &[claim(0, 1.0, true)], &[0]),
        ];
        for (total, claims, want) in cases {
            assert_eq!(split(*total, claims), *want, "{total} over {claims:?}");
        }
        assert_eq!(claims_max(&[claim(3, 0.5, true), claim(4, 0.5, false)]), 3);
        // Whatever the numbers, the parts add up and respect every max.
        for total in 0..30 {
            for a in 0..6 {
                for b in 0..6 {
                    let c = [
                        claim(a, 0.2, true),
                        claim(b, 0.7, true),
                        claim(5, 0.1, b % 2 == 0),
                    ];
                    let got = split(total, &c);
                    assert_eq!(got.iter().sum::<usize>(), total.min(claims_max(&c)));
                    assert!(got
                        .iter()
                        .zip(&c)
                        .all(|(g, c)| *g <= c.max && (c.open || *g == 0)));
                }
            }
        }
    }

    #[test]
    fn the_window_logs_its_moves_and_integrates_over_time() {
        let w = Window::new(4);
        w.set(4, "same");
        w.set(1, "shrink");
        w.set(3, "grow");
        w.admitted(2);
        w.finished();
        assert_eq!((w.in_flight(), w.done()), (1, 1));
        let r = w.report();
        assert_eq!((r.moves, r.shrinks, r.grows), (2, 1, 1));
        assert_eq!((r.window, r.fewest, r.most), (3, 1, 4));
        assert_eq!(r.log[0].from, 4);
        assert_eq!(r.log[1].to, 3);
        assert!(!r.stopped);
        w.stop();
        assert!(w.report().stopped);
    }
}
