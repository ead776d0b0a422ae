//! The image codec of a run's edges, from the registry's `image.decode` / `image.encode`
//! builtins (see [`crate::codec`]). Without them, `Image` inputs and outputs are errors that
//! say so, per request.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mars_plan::{BatchPolicy, BatchSpec, Device, Implementation, NodePrediction, PlanNode};

use crate::codec::ImageCodec;
use crate::node::{Node, NodeContext, Registry};
use crate::value::Value;

struct RegistryImages {
    decode: Mutex<Box<dyn Node>>,
    encode: Option<Mutex<Box<dyn Node>>>,
}

fn edge_node(
    builtin: &str,
    input: &str,
    output: &str,
    params: BTreeMap<String, serde_json::Value>,
) -> PlanNode {
    PlanNode {
        id: format!("edge.{builtin}"),
        kind: builtin.to_string(),
        implementation: Implementation {
            builtin: Some(builtin.to_string()),
            exec: None,
            model: None,
        },
        map_over: None,
        args: Vec::new(),
        params,
        in_types: vec![input.to_string()],
        out_types: vec![output.to_string()],
        device: Device::Cpu,
        worker: "local".to_string(),
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

fn one(node: &Mutex<Box<dyn Node>>, v: Value) -> Result<Value, String> {
    let mut node = node
        .lock()
        .map_err(|_| "the image codec failed earlier".to_string())?;
    let mut results = crate::replicas::run_guarded(node.as_mut(), vec![vec![v]]);
    match results.pop() {
        Some(Ok(mut outs)) if outs.len() == 1 => Ok(outs.remove(0)),
        Some(Ok(_)) => Err("the image codec gave no value".into()),
        Some(Err(e)) => Err(e.message),
        None => Err("the image codec gave no result".into()),
    }
}

impl ImageCodec for RegistryImages {
    fn decode(&self, bytes: Vec<u8>) -> Result<Value, String> {
        one(&self.decode, Value::Bytes(Arc::new(bytes)))
    }

    fn encode(&self, image: &Value) -> Result<Vec<u8>, String> {
        let node = self
            .encode
            .as_ref()
            .ok_or("no `image.encode` builtin to encode an Image output")?;
        match one(node, image.clone())? {
            Value::Bytes(b) => Ok(b.as_ref().clone()),
            other => Err(format!("image.encode gave a {}, not Bytes", other.kind())),
        }
    }
}

/// The codec, when the registry can decode images.
pub fn from_registry(registry: &Registry, base_dir: &Path) -> Option<Arc<dyn ImageCodec>> {
    registry.builtin_factory("image.decode")?;
    let build = |builtin: &str, input: &str, output: &str, params| {
        let ctx = NodeContext {
            node: edge_node(builtin, input, output, params),
            replica: 0,
            base_dir: base_dir.to_path_buf(),
        };
        registry.instantiate(&ctx).ok().map(Mutex::new)
    };
    let decode = build("image.decode", "Bytes", "Image", BTreeMap::new())?;
    let mut png = BTreeMap::new();
    png.insert("format".to_string(), serde_json::json!("png"));
    let encode = if registry.builtin_factory("image.encode").is_some() {
        build("image.encode", "Image", "Bytes", png)
    } else {
        None
    };
    Some(Arc::new(RegistryImages { decode, encode }))
}
