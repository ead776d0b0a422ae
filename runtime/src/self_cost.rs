//! The runtime's own CPU, measured (`marsc profile` writes it to the profile's `runtime`
//! section; the planner charges it to the workers' CPU pools, SPEC 2.4.9).
//!
//! Three runs of synthetic requests through chains of pass-through nodes, each timed in
//! process CPU time (user + system, all threads), not wall time, so that a busy machine
//! changes the numbers little:
//! - one inline node: the cost of a request (read, parse, admit, encode, write) and one hop;
//! - `1 + K` inline nodes: the extra per inline hop;
//! - one inline node then `K` nodes on replica threads with batches of one: the extra per
//!   batch handed to a replica thread.

use std::sync::Arc;

use mars_plan::{BatchPolicy, BatchSpec, Plan, RuntimeProfile, RUNTIME_SECTION_VERSION};

use crate::node::{Item, Node, NodeContext, Outputs, Registry};
use crate::run::{RunError, RunOptions};
use crate::scenarios::{delay_chain, measure};
use crate::value::NodeError;

/// Nodes added in the second and third runs.
const K: usize = 8;

struct Pass;

impl Node for Pass {
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        batch.into_iter().map(Ok).collect()
    }
}

/// This process's CPU time so far (user + system), in seconds.
pub fn process_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    if rc != 0 {
        return 0.0;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn chain(inline: usize, pooled: usize) -> Plan {
    let one = BatchSpec {
        policy: BatchPolicy::Dynamic,
        max: 1,
        wait_ms: 0.0,
    };
    let mut plan = delay_chain("runtime_cost", &vec![0.0; inline + pooled], one, 1);
    for n in &mut plan.nodes {
        n.implementation.builtin = Some("mars.pass".into());
    }
    plan.inline = plan.nodes[..inline].iter().map(|n| n.id.clone()).collect();
    plan
}

/// CPU seconds per request of a run of `plan` over `n` requests.
fn cpu_per_request(plan: &Plan, registry: &Registry, n: u64) -> Result<f64, RunError> {
    let before = process_cpu_s();
    measure(plan, registry, n, RunOptions::default())?;
    Ok((process_cpu_s() - before) / n as f64)
}

/// Measure the runtime's cost on this machine with `requests` requests per inline run (the
/// run on replica threads takes a tenth as many).
pub fn measure_runtime_cost(requests: u64) -> Result<RuntimeProfile, RunError> {
    let mut registry = Registry::new();
    registry.builtin(
        "mars.pass",
        Arc::new(|_: &NodeContext| Ok(Box::new(Pass) as Box<dyn Node>)),
    );
    let n = requests.max(1000);
    let a = cpu_per_request(&chain(1, 0), &registry, n)?;
    let b = cpu_per_request(&chain(1 + K, 0), &registry, n)?;
    let c = cpu_per_request(&chain(1, K), &registry, (n / 10).max(1000))?;
    let hop = ((b - a) / K as f64).max(0.0);
    let batch = ((c - a) / K as f64 - hop).max(0.0);
    let round = |s: f64| (s * 1e6 * 1000.0).round() / 1000.0;
    Ok(RuntimeProfile {
        version: RUNTIME_SECTION_VERSION,
        request_us: round((a - hop).max(0.0)),
        hop_us: round(hop),
        batch_us: round(batch),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_cost_is_measured_and_finite() {
        let r = measure_runtime_cost(2000).expect("runs");
        assert!(r.request_us > 0.0, "{r:?}");
        assert!(r.request_us.is_finite() && r.hop_us.is_finite() && r.batch_us.is_finite());
        assert!(process_cpu_s() > 0.0);
    }
}
