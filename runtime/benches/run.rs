//! Criterion benchmarks of whole runs: the runtime's per-request overhead through chains of
//! no-op nodes (JSON parsing and output encoding included), and a diamond that joins.
//! `marsc bench` runs the same scenarios with the stdlib's real `std.bench` nodes.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mars_runtime::run::RunOptions;
use mars_runtime::scenarios::{batch_dynamic, delay_chain, measure};
use mars_runtime::{Item, Node, NodeContext, NodeError, Outputs, Registry};

/// A stand-in for `bench.delay` with zero cost: passes items through.
struct Pass;

impl Node for Pass {
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        batch.into_iter().map(Ok).collect()
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.builtin(
        "bench.delay",
        Arc::new(|_: &NodeContext| Ok(Box::new(Pass) as Box<dyn Node>)),
    );
    r
}

fn chains(c: &mut Criterion) {
    let registry = registry();
    let requests = 100_000u64;
    let mut group = c.benchmark_group("noop_chain");
    group.sample_size(10);
    group.throughput(Throughput::Elements(requests));
    for nodes in [1usize, 10] {
        let plan = delay_chain("overhead", &vec![0.0; nodes], batch_dynamic(1024, 0.0), 1);
        group.bench_with_input(BenchmarkId::from_parameter(nodes), &plan, |b, plan| {
            b.iter(|| measure(plan, &registry, requests, RunOptions::default()).expect("runs"))
        });
    }
    group.finish();
}

criterion_group!(benches, chains);
criterion_main!(benches);
