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
//! Forming: [`handshake`] connects the processes and authenticates each link before timely
//! sees it; [`health`] watches the peers of a formed cluster. Timely's links are plain TCP,
//! authenticated at connection time only and never encrypted: workers belong on a private
//! network.

pub mod handshake;
pub mod health;

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
    /// The run token every process of this run shares (a secret file's contents, or the token
    /// `--local-cluster` generates). Without one, any `marsc` process is accepted as a peer
    /// (and refused later if its plan differs).
    pub token: Option<String>,
}

impl Cluster {
    pub fn new(hosts: Vec<String>, process: usize) -> Cluster {
        Cluster {
            hosts,
            process,
            token: None,
        }
    }

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

/// A cluster this process has joined: timely's allocators over the authenticated data links,
/// and the watch on the other processes.
pub struct Joined {
    pub builders: Vec<timely::communication::AllocatorBuilder>,
    /// Timely's network threads; dropping it joins them.
    pub comms: Box<dyn std::any::Any + Send>,
    pub health: health::Health,
}

/// How this process joins its cluster.
pub struct Joining<'a> {
    pub cluster: &'a Cluster,
    /// Timely worker threads per process.
    pub threads: usize,
    /// What every process must agree on (plan, Mars version, threads).
    pub fingerprint: String,
    /// How long forming may take.
    pub connect_timeout: std::time::Duration,
    /// A peer silent this long fails the run.
    pub peer_timeout: std::time::Duration,
}

impl Joining<'_> {
    /// Form the cluster (see [`handshake`]) and hand the sockets to timely. Errors name the
    /// processes and hosts concerned; nothing here exits the process.
    pub fn join(self) -> Result<Joined, health::Failure> {
        use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
        use timely::communication::allocator::ProcessBuilder;
        use timely::communication::{AllocatorBuilder, Hooks};

        let c = self.cluster;
        let key = match &c.token {
            Some(t) => handshake::RunKey::from_token(t.as_bytes()),
            None => handshake::RunKey::without_token(),
        };
        let links = handshake::Forming {
            hosts: &c.hosts,
            process: c.process,
            key,
            fingerprint: self.fingerprint,
            timeout: self.connect_timeout,
        }
        .form()
        .map_err(|e| health::Failure {
            code: e.code(),
            message: e.0,
        })?;
        let health = health::Health::watch(links.heartbeat, &c.hosts, self.peer_timeout);
        let hooks = Hooks::default();
        let threads = self.threads.max(1);
        let process_allocators =
            ProcessBuilder::new_typed_vector(threads, hooks.refill.clone(), hooks.spill.clone());
        let (builders, comms) = initialize_networking_from_sockets(
            process_allocators,
            links.data,
            c.process,
            threads,
            hooks,
        )
        .map_err(|e| health::Failure {
            code: handshake::CONNECT,
            message: format!("cannot start the cluster's network threads: {e}"),
        })?;
        Ok(Joined {
            builders: builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
            comms: Box::new(comms),
            health,
        })
    }
}

/// Route a panic of timely's network threads (named `timely:send-P` / `timely:recv-P`, which
/// panic when a link drops) to the running cluster's [`health::Health`], without the default
/// panic message; other panics go to the previous hook. Process-wide: for the `marsc` binary.
pub fn report_lost_links(hosts: Vec<String>) {
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
            let why = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the link failed".into());
            health::report_lost_link(p, &host, &why);
            return;
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
