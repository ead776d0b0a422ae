//! The plan file (`*.plan.yaml`): what `marsc compile` writes and `marsc run` executes.
//!
//! The plan is self-contained: it names every node kind, implementation, static parameter,
//! data edge and type the runtime needs, so the runtime never reads `.mars` source.
//! Only this module reads or writes plan files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::LoadError;

/// The schema version this build writes and reads.
pub const PLAN_VERSION: u32 = 1;

/// A compiled, placed, batched pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Schema version; always [`PLAN_VERSION`].
    pub mars_plan: u32,
    /// The Mars version that wrote the plan (workers refuse a plan of another version).
    pub mars_version: String,
    /// The pipeline this plan runs.
    pub pipeline: String,
    /// Where the source was and the hashes of everything the plan was built from.
    pub inputs_of_plan: PlanOrigin,
    /// The pipeline's inputs, in declaration order.
    pub inputs: Vec<PlanInput>,
    /// The pipeline's outputs, in declaration order.
    pub outputs: Vec<PlanOutput>,
    /// The target's worker names, in the target's order: a cluster's hosts file lists one
    /// process per worker in this order. Empty in plans that do not record it; then workers are
    /// numbered in the order they first appear among the nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<String>,
    /// What each worker lends to elastic replicas (SPEC 10.1); empty in plans without ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budget: Vec<crate::pool::WorkerBudget>,
    /// The model nodes placed on a MIG instance or an MPS share of a GPU (SPEC 10.7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_shares: Vec<crate::pool::GpuShare>,
    /// Every node, in a topological order of the DAG.
    pub nodes: Vec<PlanNode>,
    /// The ids of the nodes whose executor is `inline`: they run on their timely worker's
    /// thread, inside the node's operator, with no replica thread (each has one replica).
    /// Every other node's executor is `pool` (replica threads or exec processes). The planner
    /// chooses inline for CPU builtins that cost a few microseconds (SPEC 2.3, 3.5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inline: Vec<String>,
    /// The offered load (requests/s) the plan was planned for: `marsc compile --rate R`, else
    /// the throughput SLO's N; latencies are predicted at it, queueing included (SPEC 2.4.10).
    /// Absent: planned for saturation (plans written before it existed load as such).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// The pipeline-level prediction.
    pub predicted: PipelinePrediction,
    /// One verdict per `slo` statement.
    #[serde(default)]
    pub slos: Vec<SloVerdict>,
    /// Human-readable remarks of the planner (e.g. "planned without a profile").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Provenance: the files a plan was compiled from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanOrigin {
    /// Path of the `.mars` source, relative to the plan file's folder (exec nodes run in its folder).
    pub source: String,
    /// `sha256:<hex>` of the source text.
    pub source_hash: String,
    /// `sha256:<hex>` of the profile, when one was used.
    #[serde(default)]
    pub profile_hash: Option<String>,
    /// `sha256:<hex>` of the target, when one was used.
    #[serde(default)]
    pub target_hash: Option<String>,
}

/// A pipeline input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanInput {
    pub name: String,
    /// The type in `.mars` syntax, e.g. `List<Text>`; parse with [`crate::DataType`].
    #[serde(rename = "type")]
    pub ty: String,
    /// Literal default (JSON encoding of §6), used when a request omits the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
}

/// A pipeline output and where its value comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanOutput {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub from: Arg,
}

/// Where one data argument of a node (or a pipeline output) comes from. Exactly one of
/// `input`, `node` or `value` is set; `port` goes with `node`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arg {
    /// A pipeline input, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Another node's output, by node id ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// ... and output port index (default 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: usize,
    /// A literal (a constant passed positionally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Arg {
    pub fn input(name: impl Into<String>) -> Arg {
        Arg {
            input: Some(name.into()),
            node: None,
            port: 0,
            value: None,
        }
    }
    pub fn node(id: impl Into<String>, port: usize) -> Arg {
        Arg {
            input: None,
            node: Some(id.into()),
            port,
            value: None,
        }
    }
    pub fn value(v: serde_json::Value) -> Arg {
        Arg {
            input: None,
            node: None,
            port: 0,
            value: Some(v),
        }
    }
}

/// How a node is implemented. Exactly one field is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Implementation {
    /// A Rust node of the runtime's registry, by id (e.g. `image.decode`, `bench.delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// An external program speaking the exec protocol, run in the source's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    /// A model node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelImpl>,
}

/// A model node: its architecture and config (all keys of the model block except `arch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelImpl {
    pub arch: String,
    /// Config keys and values; paths (e.g. `weights`) are relative to the source's folder.
    #[serde(default)]
    pub config: BTreeMap<String, serde_json::Value>,
}

/// Where a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    Cpu,
    Gpu,
}

/// How a node forms batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchPolicy {
    /// One item at a time.
    None,
    /// Up to `max` items; dispatch when full or when the oldest item has waited `wait_ms`.
    Dynamic,
    /// Iteration-level batching of a generating model, at most `max` sequences at once.
    Continuous,
}

/// A node's batching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    pub policy: BatchPolicy,
    pub max: u32,
    pub wait_ms: f64,
}

/// One node of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanNode {
    /// Stable id from the source (see SPEC.md, "Node ids"); errors and traces name it.
    pub id: String,
    /// The node kind as written: a model name, or a fn path (`decode`, `std.bench.delay`).
    pub kind: String,
    pub implementation: Implementation,
    /// For `map(F, list, extra…)`: the index of the argument that is mapped over (0).
    /// Each element becomes one item; outputs are lists in element order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_over: Option<usize>,
    /// Data arguments in port order.
    pub args: Vec<Arg>,
    /// Static parameters (named arguments), defaults filled in.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Types of the node kind's input ports (element-wise for a map node).
    pub in_types: Vec<String>,
    /// Types of the node kind's output ports (element-wise for a map node).
    pub out_types: Vec<String>,
    pub device: Device,
    pub worker: String,
    /// The GPU's name, where `device` is `gpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    pub replicas: u32,
    /// How far the runtime may move its replicas (SPEC 10.1); absent: fixed at `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_range: Option<crate::pool::ReplicaRange>,
    pub batch: BatchSpec,
    /// Per-batch timeout for exec nodes (a hung program is killed after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    pub predicted: NodePrediction,
}

/// What the cost model predicts for one node at the plan's throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePrediction {
    /// Latency of one batch (ms), median.
    pub latency_ms: f64,
    /// Latency of one batch (ms), p99.
    pub p99_ms: f64,
    /// Items per second the node's replicas can sustain.
    pub throughput: f64,
    /// Busy share of its replicas at the pipeline's predicted throughput, in [0, 1].
    pub utilization: f64,
}

/// What the cost model predicts for the whole pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelinePrediction {
    /// Requests per second.
    pub throughput: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// The node id (or resource) that bounds throughput.
    pub bottleneck: String,
}

/// The verdict on one `slo` statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloVerdict {
    /// The statement as written, e.g. `latency.p99 < 300ms`.
    pub slo: String,
    /// The predicted value in the SLO's unit (ms or requests/s).
    pub predicted: f64,
    pub met: bool,
}

impl Plan {
    /// Parse a plan from YAML text; `path` only names the file in errors.
    pub fn from_yaml(text: &str, path: &str) -> Result<Plan, LoadError> {
        let plan: Plan = crate::load_yaml(text, path)?;
        if plan.mars_plan != PLAN_VERSION {
            return Err(LoadError::invalid(
                path,
                crate::find_key_line(text, "mars_plan"),
                "mars_plan",
                format!(
                    "unsupported plan version {} (this Mars reads {PLAN_VERSION})",
                    plan.mars_plan
                ),
            ));
        }
        crate::validate::validate_plan(&plan, text, path)?;
        crate::pool::validate_pool(&plan, text, path)?;
        Ok(plan)
    }

    /// Serialize to YAML; the same plan always gives the same bytes.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a plan always serializes")
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&PlanNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Whether node `id` runs inline on its worker's thread (see [`Plan::inline`]).
    pub fn is_inline(&self, id: &str) -> bool {
        self.inline.iter().any(|i| i == id)
    }
}
