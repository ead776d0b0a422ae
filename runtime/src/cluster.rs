//! Running one plan across several processes with timely's cluster mode: which process runs
//! which node, the start-up check that every process runs the same plan and Mars version, and
//! what happens when a peer is lost.
//!
//! Placement: the plan's workers, in the target's order (`workers` in the plan; a plan without
//! that list numbers its `worker` names in the order they first appear among its nodes), are
//! workers 0, 1, …; worker `w` runs in process `w mod P` of a `P`-process cluster (the hosts
//! file lists processes in that order). Inside a process, node `i` runs on thread
//! `i mod T`. Timely's exchange pacts move each node's records to its process; process 0,
//! thread 0 holds the source and the sink, so process 0 alone reads input and writes output.
//!
//! Timely's links are plain TCP: neither encrypted nor authenticated. Workers belong on a
//! private network.

use std::cell::RefCell;
use std::rc::Rc;

use mars_plan::Plan;
use timely::dataflow::operators::{Exchange, Inspect, Probe, ToStream};
use timely::worker::Worker;

/// The processes of a cluster and which one this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `host:port` of every process, in process order.
    pub hosts: Vec<String>,
    /// This process's index into `hosts`.
    pub process: usize,
}

impl Cluster {
    /// Parse a hosts file: one `host:port` a line; blank lines and `#` comments are skipped.
    pub fn parse_hosts(text: &str) -> Result<Vec<String>, String> {
        let mut hosts = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match line.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
                    hosts.push(line.to_string())
                }
                _ => {
                    return Err(format!(
                        "line {}: expected `host:port`, got `{line}`",
                        i + 1
                    ))
                }
            }
        }
        if hosts.is_empty() {
            return Err("no hosts".into());
        }
        Ok(hosts)
    }
}

/// The plan's worker names in process order: the target's order as the plan records it, or,
/// for a plan that records none, the order of first appearance among the nodes.
pub fn worker_names(plan: &Plan) -> Vec<String> {
    let mut names: Vec<String> = plan.workers.clone();
    for n in &plan.nodes {
        if !names.contains(&n.worker) {
            names.push(n.worker.clone());
        }
    }
    names
}

/// The global timely worker index of every node, for `processes` processes of `threads`
/// threads each.
pub fn placement(plan: &Plan, processes: usize, threads: usize) -> Vec<usize> {
    let names = worker_names(plan);
    let processes = processes.max(1);
    let threads = threads.max(1);
    plan.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let w = names.iter().position(|x| x == &n.worker).unwrap_or(0);
            (w % processes) * threads + i % threads
        })
        .collect()
}

/// What every process must agree on: the plan's bytes and the Mars version.
pub fn fingerprint(plan: &Plan) -> String {
    // FNV-1a over the canonical YAML: an equality check between cooperating processes, not a
    // defence against tampering.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in plan.to_yaml().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("plan {h:016x}, Mars {}", env!("CARGO_PKG_VERSION"))
}

/// Exchange fingerprints between all workers before the run; every worker sees every other's,
/// so all refuse together when any differs.
pub fn agree(
    worker: &mut Worker,
    mine: &str,
    threads: usize,
    hosts: &[String],
) -> Result<(), String> {
    let peers = worker.peers();
    let me = worker.index();
    let seen: Rc<RefCell<Vec<(usize, String)>>> = Rc::new(RefCell::new(Vec::new()));
    let probe = {
        let seen = Rc::clone(&seen);
        let mine = mine.to_string();
        worker.dataflow::<u64, _, _>(move |scope| {
            (0..peers)
                .map(move |p| (p as u64, me as u64, mine.clone()))
                .to_stream(scope)
                .container::<Vec<_>>()
                .exchange(|x: &(u64, u64, String)| x.0)
                .inspect(move |x| seen.borrow_mut().push((x.1 as usize, x.2.clone())))
                .probe()
                .0
        })
    };
    while !probe.done() {
        worker.step_or_park(None);
    }
    let threads = threads.max(1);
    let mut seen = seen.borrow().clone();
    seen.sort();
    for (from, theirs) in seen {
        if theirs != mine {
            let process = from / threads;
            let host = hosts
                .get(process)
                .map_or(String::new(), |h| format!(" ({h})"));
            return Err(format!(
                "process {process}{host} runs {theirs}, but process {}{} runs {mine}; start every process with the same plan and the same marsc",
                me / threads,
                hosts.get(me / threads).map_or(String::new(), |h| format!(" ({h})"))
            ));
        }
    }
    Ok(())
}

/// After a run, send the counts of the nodes this worker's process ran to worker 0, which adds
/// them to its own meters: so process 0's summary and `--stats-json` cover every node. Workers
/// of process 0 send nothing (they share its meters); every worker must call this.
pub fn gather_stats(
    worker: &mut Worker,
    meters: &[std::sync::Arc<crate::stats::NodeMeter>],
    owners: &[usize],
    threads: usize,
) {
    let me = worker.index();
    // (node index, its `NodeMeter::totals`)
    type Counts = (u64, Vec<u64>);
    let mine: Vec<Counts> = if me / threads.max(1) == 0 {
        Vec::new()
    } else {
        owners
            .iter()
            .enumerate()
            .filter(|(_, &owner)| owner == me)
            .map(|(i, _)| (i as u64, meters[i].totals().to_vec()))
            .collect()
    };
    let got: Rc<RefCell<Vec<Counts>>> = Rc::new(RefCell::new(Vec::new()));
    let probe = {
        let got = Rc::clone(&got);
        worker.dataflow::<u64, _, _>(move |scope| {
            mine.to_stream(scope)
                .container::<Vec<_>>()
                .exchange(|_: &Counts| 0)
                .inspect(move |x| got.borrow_mut().push(x.clone()))
                .probe()
                .0
        })
    };
    while !probe.done() {
        worker.step_or_park(None);
    }
    for (i, t) in got.borrow().iter() {
        if let (Some(m), Ok(t)) = (meters.get(*i as usize), <[u64; 9]>::try_from(t.as_slice())) {
            m.absorb(t);
        }
    }
}

/// Tracks whether this process's timely workers started, which timely does only once every
/// process of the cluster has connected.
pub struct Connected {
    arrived: std::sync::atomic::AtomicUsize,
    threads: usize,
}

impl Connected {
    /// Called by each worker thread as it starts.
    pub fn arrived(&self) {
        self.arrived
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn all(&self) -> bool {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst) >= self.threads
    }
}

/// Timely waits forever for peers that never start. This watchdog ends the process with status
/// 2 and a message naming the hosts when the cluster has not formed within `timeout`.
/// Process-wide, like [`exit_on_lost_peer`].
pub fn connect_watchdog(
    hosts: Vec<String>,
    process: usize,
    threads: usize,
    timeout: std::time::Duration,
) -> std::sync::Arc<Connected> {
    let connected = std::sync::Arc::new(Connected {
        arrived: std::sync::atomic::AtomicUsize::new(0),
        threads: threads.max(1),
    });
    let watched = std::sync::Arc::clone(&connected);
    std::thread::Builder::new()
        .name("mars:connect-watchdog".into())
        .spawn(move || {
            let start = std::time::Instant::now();
            while !watched.all() {
                if start.elapsed() >= timeout {
                    let others: Vec<String> = hosts
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != process)
                        .map(|(i, h)| format!("process {i} ({h})"))
                        .collect();
                    eprintln!(
                        "error[mars::cluster::connect]: process {process} waited {:.0} s and the cluster did not form: not every one of {} connected",
                        timeout.as_secs_f64(),
                        others.join(", ")
                    );
                    eprintln!("  start every process listed in the hosts file (same plan, same marsc), check the addresses and firewalls, or raise --connect-timeout");
                    std::process::exit(2);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
        .expect("the OS can start a thread");
    connected
}

/// Make a lost peer end this process at once: timely's network threads (named
/// `timely:send-P` / `timely:recv-P`) panic when a connection drops; this hook prints which
/// process was lost and exits with status 2 instead of leaving the other threads waiting.
/// Process-wide: for the `marsc` binary, not for libraries embedding the runtime.
pub fn exit_on_lost_peer(hosts: Vec<String>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let name = std::thread::current()
            .name()
            .map(str::to_string)
            .unwrap_or_default();
        let peer = name
            .strip_prefix("timely:recv-")
            .or_else(|| name.strip_prefix("timely:send-"));
        if let Some(p) = peer.and_then(|p| p.parse::<usize>().ok()) {
            let host = hosts.get(p).cloned().unwrap_or_else(|| "?".into());
            eprintln!(
                "error[mars::cluster::lost]: lost the connection to process {p} ({host}): {info}"
            );
            eprintln!("  the run stops; records written so far are whole lines: rerun with --resume to finish it");
            std::process::exit(2);
        }
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_follow_the_targets_worker_order_when_the_plan_records_it() {
        let mut plan =
            crate::scenarios::delay_chain("p", &[1.0, 1.0, 1.0], crate::scenarios::batch_none(), 1);
        for (node, w) in plan.nodes.iter_mut().zip(["cpu-b", "cpu-a", "cpu-b"]) {
            node.worker = w.into();
        }
        // Without the target's order: first appearance.
        assert_eq!(worker_names(&plan), ["cpu-b", "cpu-a"]);
        assert_eq!(placement(&plan, 2, 1), [0, 1, 0]);
        // With it (a worker that runs no node still has its process).
        plan.workers = vec!["gpu".into(), "cpu-a".into(), "cpu-b".into()];
        assert_eq!(worker_names(&plan), ["gpu", "cpu-a", "cpu-b"]);
        assert_eq!(placement(&plan, 3, 1), [2, 1, 2]);
    }

    #[test]
    fn hosts_files_list_host_port_lines() {
        let h = Cluster::parse_hosts("# cluster\n127.0.0.1:5000\n\nnode-1.mars:5001  # second\n")
            .expect("ok");
        assert_eq!(h, ["127.0.0.1:5000", "node-1.mars:5001"]);
        assert!(Cluster::parse_hosts("localhost\n")
            .expect_err("fails")
            .contains("line 1"));
        assert!(Cluster::parse_hosts("").is_err());
    }
}
