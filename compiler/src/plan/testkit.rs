//! Hand-built pipelines, profiles and targets for the planner's tests (the front end is not
//! needed to test the planner), and a small deterministic random generator.

use std::collections::BTreeMap;

use mars_plan::{DataType, DeviceProfile, Gpu, KindProfile, Profile, Target, Worker};
use petgraph::stable_graph::StableDiGraph;

use crate::ir::{
    Annotations, Edge, Implementation, Input, Node, Output, Pipeline, Slo, SloKind, Source,
};

/// One node to build: its id (also its kind), the positions of the nodes feeding it, whether
/// it is a map node, and its annotations.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    pub id: String,
    pub preds: Vec<usize>,
    pub map: bool,
    pub annotations: Annotations,
}

pub fn spec(id: &str, preds: &[usize]) -> NodeSpec {
    NodeSpec {
        id: id.to_string(),
        preds: preds.to_vec(),
        ..NodeSpec::default()
    }
}

/// A pipeline of `specs` (in order; preds refer to earlier specs) with one input `x` feeding
/// the nodes without preds and one output per sink.
pub fn pipeline(specs: &[NodeSpec], slos: &[SloKind]) -> Pipeline {
    let mut graph = StableDiGraph::new();
    let mut idx = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let args: Vec<Source> = if s.preds.is_empty() {
            vec![Source::Input("x".to_string())]
        } else {
            s.preds.iter().map(|&p| Source::Node(idx[p], 0)).collect()
        };
        let n = graph.add_node(Node {
            id: s.id.clone(),
            kind: s.id.clone(),
            implementation: Implementation::Builtin("bench.delay".to_string()),
            map_over: s.map.then_some(0),
            in_types: vec![DataType::Text; args.len()],
            args,
            params: BTreeMap::new(),
            out_types: vec![DataType::Text],
            out_names: vec!["out".to_string()],
            annotations: s.annotations.clone(),
            generates: false,
            span: (i, 1).into(),
        });
        for (port, &p) in s.preds.iter().enumerate() {
            graph.add_edge(
                idx[p],
                n,
                Edge {
                    from_port: 0,
                    to_port: port,
                    ty: DataType::Text,
                },
            );
        }
        idx.push(n);
    }
    let sinks: Vec<usize> = (0..specs.len())
        .filter(|&i| !specs.iter().any(|s| s.preds.contains(&i)))
        .collect();
    Pipeline {
        name: "p".to_string(),
        span: (0, 1).into(),
        inputs: vec![Input {
            name: "x".to_string(),
            ty: DataType::Text,
            default: None,
            span: (0, 1).into(),
        }],
        outputs: sinks
            .iter()
            .map(|&s| Output {
                name: format!("out_{}", specs[s].id),
                ty: DataType::Text,
                from: Source::Node(idx[s], 0),
                span: (0, 1).into(),
            })
            .collect(),
        graph,
        slos: slos
            .iter()
            .enumerate()
            .map(|(i, &kind)| Slo {
                kind,
                text: slo_text(kind),
                span: (100 + i, 1).into(),
            })
            .collect(),
    }
}

pub fn slo_text(kind: SloKind) -> String {
    match kind {
        SloKind::LatencyP50Ms(ms) => format!("latency.p50 < {ms}ms"),
        SloKind::LatencyP99Ms(ms) => format!("latency.p99 < {ms}ms"),
        SloKind::ThroughputPerS(n) => format!("throughput >= {n}/s"),
    }
}

pub fn device(batch: &[u32], latency: &[f64]) -> DeviceProfile {
    DeviceProfile {
        batch: batch.to_vec(),
        latency_ms: latency.to_vec(),
        p99_ms: None,
        memory_mb: None,
        cpu_cores: None,
    }
}

pub fn profile(entries: &[(&str, Option<DeviceProfile>, Option<DeviceProfile>)]) -> Profile {
    Profile {
        mars_profile: 1,
        nodes: entries
            .iter()
            .map(|(k, cpu, gpu)| {
                (
                    k.to_string(),
                    KindProfile {
                        cpu: cpu.clone(),
                        gpu: gpu.clone(),
                    },
                )
            })
            .collect(),
        fanout: BTreeMap::new(),
    }
}

/// One worker with `cpus` cores and the GPUs given as (memory GB, share).
pub fn target(cpus: f64, gpus: &[(f64, f64)]) -> Target {
    Target {
        mars_target: 1,
        workers: vec![Worker {
            name: "w0".to_string(),
            cpus,
            memory_gb: 0.0,
            gpus: gpus
                .iter()
                .enumerate()
                .map(|(i, &(memory_gb, share))| Gpu {
                    name: format!("gpu{i}"),
                    memory_gb,
                    share,
                })
                .collect(),
        }],
    }
}

/// splitmix64: deterministic and good enough for generating test cases.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in [lo, hi).
    pub fn float(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.float(0.0, 1.0) < p
    }
}
