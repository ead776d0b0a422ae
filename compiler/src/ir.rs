//! The IR: one typed petgraph DAG per pipeline. Built by `check`, consumed by `plan`.
//! IR types do not derive `Serialize`: the plan file is converted from the IR by hand, so the
//! file format stays stable while the IR changes.

use std::collections::BTreeMap;

use miette::SourceSpan;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};

pub use mars_plan::{DType, DataType, Dim};

/// Everything a checked file defines.
#[derive(Debug, Clone)]
pub struct Program {
    pub pipelines: Vec<Pipeline>,
}

impl Program {
    pub fn pipeline(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.name == name)
    }
}

/// One pipeline: a DAG of typed calls.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub span: SourceSpan,
    pub inputs: Vec<Input>,
    pub outputs: Vec<Output>,
    /// Nodes are calls; an edge goes from the producing node to the consuming node.
    pub graph: StableDiGraph<Node, Edge>,
    pub slos: Vec<Slo>,
}

impl Pipeline {
    /// Node indices in a deterministic topological order (ties by node id).
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        let mut indegree: BTreeMap<NodeIndex, usize> = BTreeMap::new();
        for n in self.graph.node_indices() {
            indegree.insert(
                n,
                self.graph
                    .neighbors_directed(n, petgraph::Direction::Incoming)
                    .count(),
            );
        }
        let mut ready: std::collections::BTreeSet<(String, NodeIndex)> = indegree
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&n, _)| (self.graph[n].id.clone(), n))
            .collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(first) = ready.iter().next().cloned() {
            ready.remove(&first);
            let n = first.1;
            order.push(n);
            for m in self
                .graph
                .neighbors_directed(n, petgraph::Direction::Outgoing)
            {
                let d = indegree.get_mut(&m).expect("every node has an indegree");
                *d -= 1;
                if *d == 0 {
                    ready.insert((self.graph[m].id.clone(), m));
                }
            }
        }
        order
    }

    /// The node with this id.
    pub fn node_by_id(&self, id: &str) -> Option<NodeIndex> {
        self.graph.node_indices().find(|&n| self.graph[n].id == id)
    }
}

/// A pipeline input.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub ty: DataType,
    pub default: Option<Literal>,
    pub span: SourceSpan,
}

/// A pipeline output and what feeds it.
#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    pub ty: DataType,
    pub from: Source,
    pub span: SourceSpan,
}

/// Where a data argument comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Input(String),
    Node(NodeIndex, usize),
    Const(Literal),
}

/// A call: one node of the DAG.
#[derive(Debug, Clone)]
pub struct Node {
    /// Stable id (SPEC.md, "Node ids").
    pub id: String,
    /// The callee as written: a model name or a fn path (`decode`, `std.bench.delay`).
    pub kind: String,
    pub implementation: Implementation,
    /// `Some(i)` for `map(F, …)`: argument `i` is the list mapped over.
    pub map_over: Option<usize>,
    /// Data arguments in port order.
    pub args: Vec<Source>,
    /// Static parameters (named arguments), defaults filled in.
    pub params: BTreeMap<String, Literal>,
    /// The callee's input port types, type variables substituted (element-wise for a map).
    pub in_types: Vec<DataType>,
    /// The callee's output port types, type variables substituted (element-wise for a map).
    pub out_types: Vec<DataType>,
    pub out_names: Vec<String>,
    pub annotations: Annotations,
    /// A model with `generate = true`.
    pub generates: bool,
    /// The kind has a GPU implementation (`@gpu` on its fn or its model's arch): only then
    /// may the planner place it on a GPU.
    pub gpu: bool,
    /// What the fn's declaration says of its cost (its attributes, with this node's
    /// parameters), for planning without a profile.
    pub declared: Declared,
    pub span: SourceSpan,
}

/// A fn declaration's attributes as they apply to one node (SPEC 2.4.8).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Declared {
    /// `@batchable`: batches of several items cost less per item than one at a time.
    pub batchable: bool,
    /// `@cost(…)`, its terms evaluated with the node's static parameters.
    pub cost: Option<DeclaredCost>,
}

/// `@cost(batch_ms = …, item_ms = …, cores = …)`: a batch of b items takes
/// `batch_ms + item_ms × b` and keeps `cores` cores busy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeclaredCost {
    pub batch_ms: f64,
    pub item_ms: f64,
    pub cores: f64,
}

/// A term of `@cost`: a number, or the name of a numeric static parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum CostTerm {
    Fixed(f64),
    Param(String),
}

/// A fn declaration's attributes, before a call gives its parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeclAttributes {
    pub batchable: bool,
    /// `batch_ms`, `item_ms`, `cores` terms (defaults 0, 0, 1).
    pub cost: Option<[CostTerm; 3]>,
}

impl DeclAttributes {
    /// The attributes as they apply to a call with static parameters `params`.
    pub fn resolve(&self, params: &BTreeMap<String, Literal>) -> Declared {
        let value = |t: &CostTerm| match t {
            CostTerm::Fixed(x) => *x,
            CostTerm::Param(name) => match params.get(name) {
                Some(Literal::Float(x) | Literal::Duration(x)) => *x,
                Some(Literal::Int(i)) => *i as f64,
                _ => 0.0,
            },
        };
        Declared {
            batchable: self.batchable,
            cost: self.cost.as_ref().map(|[b, i, c]| DeclaredCost {
                batch_ms: value(b).max(0.0),
                item_ms: value(i).max(0.0),
                cores: value(c).max(0.0),
            }),
        }
    }
}

/// How a node kind is implemented.
#[derive(Debug, Clone, PartialEq)]
pub enum Implementation {
    Builtin(String),
    Exec(String),
    Model {
        arch: String,
        config: BTreeMap<String, Literal>,
    },
}

/// A data edge: output `from_port` of the source node feeds input `to_port` of the target.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub from_port: usize,
    pub to_port: usize,
    pub ty: DataType,
}

/// The planner hints attached to a call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Annotations {
    pub device: Option<DeviceHint>,
    pub replicas: Option<u32>,
    pub batch: Option<BatchHint>,
    /// Spans of each annotation, for diagnostics at plan time (e.g. `@device(gpu)` on a
    /// target with no GPU).
    pub device_span: Option<SourceSpan>,
    pub replicas_span: Option<SourceSpan>,
    pub batch_span: Option<SourceSpan>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceHint {
    Cpu,
    Gpu,
    Any,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BatchHint {
    /// `@batch(none)`.
    None,
    /// `@batch(max = N, wait = D)`.
    Dynamic {
        max: Option<u32>,
        wait_ms: Option<f64>,
    },
    /// `@batch(continuous, max = N)`.
    Continuous { max: Option<u32> },
}

/// A literal value (constants are folded into literals).
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    /// A duration, in milliseconds.
    Duration(f64),
    /// A bare identifier used as a value (e.g. `quantize = int8`).
    Symbol(String),
}

impl Literal {
    /// The JSON encoding used in plans.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Literal::Int(i) => serde_json::Value::from(*i),
            Literal::Float(f) => serde_json::Value::from(*f),
            Literal::Text(s) | Literal::Symbol(s) => serde_json::Value::from(s.clone()),
            Literal::Bool(b) => serde_json::Value::from(*b),
            Literal::Duration(ms) => serde_json::Value::from(*ms),
        }
    }
}

/// A service-level objective.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    pub kind: SloKind,
    /// The statement as written, normalized (`latency.p99 < 300ms`).
    pub text: String,
    pub span: SourceSpan,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SloKind {
    /// `latency.p50 < D`, in ms.
    LatencyP50Ms(f64),
    /// `latency.p99 < D`, in ms.
    LatencyP99Ms(f64),
    /// `throughput >= N/s`.
    ThroughputPerS(f64),
}
