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
            gpu: true, // bench.delay stands for a device-bound stage on any device
            declared: Default::default(),
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
    DeviceProfile::new(batch.to_vec(), latency.to_vec())
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
                        ..KindProfile::default()
                    },
                )
            })
            .collect(),
        fanout: BTreeMap::new(),
        runtime: None,
    }
}

/// Make node `id` of `p` a generating model (`generate = true`), with `kv_tokens` in its
/// config where given.
pub fn make_generating(p: &mut Pipeline, id: &str, kv_tokens: Option<i64>) {
    let idx = p
        .graph
        .node_indices()
        .find(|&n| p.graph[n].id == id)
        .expect("the node exists");
    let node = &mut p.graph[idx];
    node.generates = true;
    let mut config = BTreeMap::new();
    config.insert("generate".to_string(), crate::ir::Literal::Bool(true));
    if let Some(k) = kv_tokens {
        config.insert("kv_tokens".to_string(), crate::ir::Literal::Int(k));
    }
    node.implementation = Implementation::Model {
        arch: "transformer_lm".to_string(),
        config,
    };
}

/// A generating kind's cpu measurements: per-step and prefill costs by batch size, and the
/// output length distribution (tokens, share). `latency_ms` is made up (the per-step model
/// does not read it).
pub fn generating_kind(
    batch: &[u32],
    step_ms: &[f64],
    prefill_ms: &[f64],
    lengths: (&[u32], &[f64]),
    prompt_tokens: Option<f64>,
) -> KindProfile {
    let mut cpu = device(batch, &vec![1000.0; batch.len()]);
    cpu.step_ms = Some(step_ms.to_vec());
    cpu.prefill_ms = Some(prefill_ms.to_vec());
    KindProfile {
        cpu: Some(cpu),
        gpu: None,
        output_tokens: Some(mars_plan::TokenHistogram {
            tokens: lengths.0.to_vec(),
            share: lengths.1.to_vec(),
        }),
        prompt_tokens,
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
                    mig: Vec::new(),
                    mps: false,
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
