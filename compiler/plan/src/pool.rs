//! The plan's pooling fields (SPEC 10.1): how far the runtime may move a node's replicas
//! (`replica_range`) and the cores and memory of each worker it may hand out (`budget`).
//! Both are optional, so plans written before them load unchanged and run with fixed
//! replicas.

use serde::{Deserialize, Serialize};

use crate::limits::MAX_REPLICAS;
use crate::{LoadError, Plan};

/// A node's replica range: the runtime's controller keeps its active replicas in
/// `min..=max`; the plan's `replicas` is where it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaRange {
    pub min: u32,
    pub max: u32,
    /// Cores one busy replica takes (the profile's `cpu_cores` of the chosen option).
    pub cores: f64,
    /// Memory one replica holds, MB (0: not counted).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_mb: f64,
}

/// What a worker of the target lends to the replicas placed on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerBudget {
    pub worker: String,
    pub cpus: f64,
    /// MB; absent where the target does not limit memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<f64>,
}

/// A model node placed on part of a GPU (SPEC 10.7): a MIG instance of the GPU `gpu` (the
/// node's own `gpu` names the instance, `GPU.migK`), or a share of a GPU that MPS shares; the
/// runtime starts the node's replicas on that instance or with that
/// `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuShare {
    pub node: String,
    /// The physical GPU, as the target names it.
    pub gpu: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mps_percent: Option<u32>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// Check the pooling fields of `plan`, loaded from `text` (the file `path`).
pub fn validate_pool(plan: &Plan, text: &str, path: &str) -> Result<(), LoadError> {
    let err = |keys: &[&str], key: String, message: String| {
        LoadError::invalid(path, crate::find_key_path(text, keys), &key, message)
    };
    for (i, node) in plan.nodes.iter().enumerate() {
        let Some(r) = &node.replica_range else {
            continue;
        };
        let n = i.to_string();
        let key = format!("nodes[{i}].replica_range (node `{}`)", node.id);
        let at = ["nodes", n.as_str(), "replica_range"];
        if r.min < 1 || r.min > node.replicas || node.replicas > r.max || r.max > MAX_REPLICAS {
            return Err(err(
                &at,
                key,
                format!(
                    "min {} and max {} must satisfy 1 <= min <= replicas ({}) <= max <= {MAX_REPLICAS}",
                    r.min, r.max, node.replicas
                ),
            ));
        }
        if !r.cores.is_finite() || r.cores < 0.0 || !r.memory_mb.is_finite() || r.memory_mb < 0.0 {
            return Err(err(
                &at,
                key,
                "`cores` and `memory_mb` must be finite and non-negative".into(),
            ));
        }
        if plan.is_inline(&node.id) && r.max != 1 {
            return Err(err(
                &at,
                key,
                "an inline node has exactly one replica; its range must be 1..1".into(),
            ));
        }
        if !plan.budget.iter().any(|b| b.worker == node.worker) {
            return Err(err(
                &at,
                key,
                format!(
                    "the plan's `budget` has no entry for worker `{}`",
                    node.worker
                ),
            ));
        }
    }
    for (i, b) in plan.budget.iter().enumerate() {
        let bad_mem = b.memory_mb.is_some_and(|m| !m.is_finite() || m < 0.0);
        if !b.cpus.is_finite() || b.cpus <= 0.0 || bad_mem {
            return Err(err(
                &["budget", &i.to_string()],
                format!("budget[{i}]"),
                "`cpus` must be positive and `memory_mb` non-negative".into(),
            ));
        }
    }
    Ok(())
}
