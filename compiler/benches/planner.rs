//! How long the planner takes on large pipelines: layered DAGs of 200 and 2,000 nodes, each
//! kind profiled on cpu (3 batch sizes) and, for every third kind, on gpu (3 batch sizes), on a
//! target of 2 workers with 16 cores and one GPU each, under a p99 SLO.
//!
//! `cargo bench -p mars-compiler --bench planner`

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mars_compiler::ir::{
    Annotations, Edge, Implementation, Input, Node, Output, Pipeline, Slo, SloKind, Source,
};
use mars_compiler::plan::{plan_pipeline, PlanOptions};
use mars_plan::{DataType, DeviceProfile, Gpu, KindProfile, Profile, Target, Worker};
use petgraph::stable_graph::StableDiGraph;

/// `n` nodes in layers of 10; each node reads one or two nodes of the previous layer.
fn layered(n: usize) -> (Pipeline, Profile, Target) {
    let mut graph = StableDiGraph::new();
    let mut idx = Vec::new();
    let mut nodes = BTreeMap::new();
    for i in 0..n {
        let kind = format!("k{i}");
        let layer = i / 10;
        let preds: Vec<usize> = if layer == 0 {
            vec![]
        } else {
            vec![i - 10, (layer - 1) * 10 + (i * 7) % 10]
        };
        let mut preds = preds;
        preds.dedup();
        let args = if preds.is_empty() {
            vec![Source::Input("x".into())]
        } else {
            preds.iter().map(|&p| Source::Node(idx[p], 0)).collect()
        };
        let node = graph.add_node(Node {
            id: format!("n{i}"),
            kind: kind.clone(),
            implementation: Implementation::Builtin("bench.delay".into()),
            map_over: None,
            in_types: vec![DataType::Text; args.len()],
            args,
            params: BTreeMap::new(),
            out_types: vec![DataType::Text],
            out_names: vec!["out".into()],
            annotations: Annotations::default(),
            generates: false,
            span: (0, 1).into(),
        });
        for (port, &p) in preds.iter().enumerate() {
            graph.add_edge(
                idx[p],
                node,
                Edge {
                    from_port: 0,
                    to_port: port,
                    ty: DataType::Text,
                },
            );
        }
        idx.push(node);
        let base = 0.05 + 0.02 * (i % 17) as f64;
        let dev = |scale: f64| DeviceProfile {
            memory_mb: Some(vec![100.0, 120.0, 200.0]),
            ..DeviceProfile::new(
                vec![1, 4, 16],
                vec![base * scale, base * scale * 2.5, base * scale * 8.0],
            )
        };
        nodes.insert(
            kind,
            KindProfile {
                cpu: Some(dev(1.0)),
                gpu: (i % 3 == 0).then(|| dev(0.1)),
                ..KindProfile::default()
            },
        );
    }
    let last = idx[n - 1];
    let pipeline = Pipeline {
        name: "big".into(),
        span: (0, 1).into(),
        inputs: vec![Input {
            name: "x".into(),
            ty: DataType::Text,
            default: None,
            span: (0, 1).into(),
        }],
        outputs: vec![Output {
            name: "y".into(),
            ty: DataType::Text,
            from: Source::Node(last, 0),
            span: (0, 1).into(),
        }],
        graph,
        slos: vec![Slo {
            kind: SloKind::LatencyP99Ms(100.0 * n as f64),
            text: "latency.p99 < big".into(),
            span: (0, 1).into(),
        }],
    };
    let worker = |name: &str, gpu: &str| Worker {
        name: name.into(),
        cpus: 16.0,
        memory_gb: 0.0,
        gpus: vec![Gpu {
            name: gpu.into(),
            memory_gb: 80.0,
            share: 1.0,
            mig: Vec::new(),
            mps: false,
        }],
    };
    let target = Target {
        mars_target: 1,
        workers: vec![worker("w0", "gpu0"), worker("w1", "gpu1")],
    };
    (
        pipeline,
        Profile {
            mars_profile: 1,
            nodes,
            fanout: BTreeMap::new(),
            runtime: None,
        },
        target,
    )
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan_pipeline");
    group.sample_size(10);
    for n in [200, 2000] {
        let (p, prof, t) = layered(n);
        let options = PlanOptions {
            allow_slo_miss: true,
            ..PlanOptions::default()
        };
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| plan_pipeline(&p, Some(&prof), &t, &options).expect("plannable"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
