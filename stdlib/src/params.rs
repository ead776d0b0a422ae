//! Static parameters of builtin nodes, read from the plan node's `params` with errors that name
//! the node and the parameter; and a test helper that builds a node from the registry.

use mars_runtime::{NodeContext, NodeError};

/// An integer parameter; `default: None` makes it required.
pub fn int_param(ctx: &NodeContext, name: &str, default: Option<i64>) -> Result<i64, NodeError> {
    match ctx.node.params.get(name) {
        None | Some(serde_json::Value::Null) => default.ok_or_else(|| missing(ctx, name)),
        Some(v) => v.as_i64().ok_or_else(|| {
            NodeError::new(format!(
                "node `{}`: parameter `{name}` must be an integer, got `{v}`",
                ctx.node.id
            ))
        }),
    }
}

/// A text parameter; `default: None` makes it required.
pub fn text_param(
    ctx: &NodeContext,
    name: &str,
    default: Option<&str>,
) -> Result<String, NodeError> {
    match ctx.node.params.get(name) {
        None | Some(serde_json::Value::Null) => default
            .map(str::to_string)
            .ok_or_else(|| missing(ctx, name)),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(NodeError::new(format!(
            "node `{}`: parameter `{name}` must be text, got `{v}`",
            ctx.node.id
        ))),
    }
}

fn missing(ctx: &NodeContext, name: &str) -> NodeError {
    NodeError::new(format!(
        "node `{}`: parameter `{name}` is required",
        ctx.node.id
    ))
}

/// A plan node for tests and tools: builtin `id` with `params`.
pub fn plan_node(id: &str, params: &[(&str, serde_json::Value)]) -> mars_plan::PlanNode {
    use mars_plan::{BatchPolicy, BatchSpec, Device, Implementation, NodePrediction, PlanNode};
    PlanNode {
        id: "n".into(),
        kind: format!("std.{id}"),
        implementation: Implementation {
            builtin: Some(id.into()),
            exec: None,
            model: None,
        },
        map_over: None,
        args: vec![],
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        in_types: vec![],
        out_types: vec![],
        device: Device::Cpu,
        worker: "w0".into(),
        gpu: None,
        replicas: 1,
        replica_range: None,
        batch: BatchSpec {
            policy: BatchPolicy::None,
            max: 1,
            wait_ms: 0.0,
        },
        timeout_ms: None,
        predicted: NodePrediction {
            latency_ms: 0.0,
            p99_ms: 0.0,
            throughput: 0.0,
            utilization: 0.0,
        },
    }
}

/// Build builtin `id` with `params` from `registry` (base directory: the current one).
pub fn build(
    registry: &mars_runtime::Registry,
    id: &str,
    params: &[(&str, serde_json::Value)],
) -> Result<Box<dyn mars_runtime::Node>, NodeError> {
    registry.instantiate(&NodeContext {
        node: plan_node(id, params),
        replica: 0,
        base_dir: std::path::PathBuf::from("."),
    })
}
