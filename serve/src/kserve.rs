//! The KServe v2 (Open Inference Protocol) model of a pipeline, shared by the HTTP and gRPC
//! front ends: metadata from the pipeline signature, and an infer request of N rows run as N
//! pipeline requests (admitted together, so the runtime batches them).

use std::time::Instant;

use mars_plan::DataType;
use mars_runtime::run::service::Service;
use mars_runtime::{codec, Value};

use crate::state::{CallError, Server};
use crate::tensor::{self, Tensor};

/// The server's name and version in `/v2` and `ServerMetadata`.
pub const SERVER_NAME: &str = "mars";
/// Protocol extensions this server implements.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data"];

/// One input or output in a model's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// A pipeline's metadata.
pub struct ModelMeta {
    pub name: String,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
}

pub fn metadata(name: &str, service: &Service) -> ModelMeta {
    let meta = |n: &str, ty: &DataType| {
        let (datatype, shape) = tensor::signature(ty);
        TensorMeta {
            name: n.to_string(),
            datatype,
            shape,
        }
    };
    ModelMeta {
        name: name.to_string(),
        inputs: service
            .inputs()
            .iter()
            .map(|i| meta(&i.name, &i.ty))
            .collect(),
        outputs: service
            .outputs()
            .iter()
            .map(|(n, ty)| meta(n, ty))
            .collect(),
    }
}

/// An infer request, whatever its wire form.
pub struct InferRequest {
    pub model: String,
    pub id: String,
    pub inputs: Vec<Tensor>,
    /// Output names asked for (empty: all).
    pub outputs: Vec<String>,
    pub deadline: Option<Instant>,
}

/// The answer: one tensor per output asked for.
pub struct InferResponse {
    pub model: String,
    pub id: String,
    pub outputs: Vec<Tensor>,
}

/// Split the request's tensors into per-row pipeline requests.
fn rows(service: &Service, req: &InferRequest) -> Result<Vec<Vec<Value>>, CallError> {
    let bad = CallError::BadRequest;
    for t in &req.inputs {
        if !service.inputs().iter().any(|i| i.name == t.name) {
            let names: Vec<&str> = service.inputs().iter().map(|i| i.name.as_str()).collect();
            return Err(bad(format!(
                "pipeline `{}` has no input `{}` (inputs: {})",
                req.model,
                t.name,
                names.join(", ")
            )));
        }
    }
    let n = match req.inputs.first() {
        Some(t) => tensor::rows_of(t).map_err(bad)?,
        None => return Err(bad("an infer request needs at least one input".into())),
    };
    let decode_bytes = |b: &[u8], ty: &DataType| -> Result<Value, String> {
        let j = serde_json::json!({ "$base64": codec::base64_encode(b) });
        service.decode_value(&j, ty)
    };
    let mut columns: Vec<Vec<Value>> = Vec::new();
    for input in service.inputs() {
        let column = match req.inputs.iter().find(|t| t.name == input.name) {
            Some(t) => {
                let col = tensor::to_rows(t, &input.ty, &decode_bytes).map_err(bad)?;
                if col.len() != n {
                    return Err(bad(format!(
                        "input `{}` has {} rows, but `{}` has {n}",
                        t.name,
                        col.len(),
                        req.inputs[0].name
                    )));
                }
                col
            }
            None => match &input.default {
                Some(d) => vec![d.clone(); n],
                None => {
                    return Err(bad(format!(
                        "missing input `{}` ({})",
                        input.name, input.ty
                    )))
                }
            },
        };
        columns.push(column);
    }
    Ok((0..n)
        .map(|r| columns.iter().map(|c| c[r].clone()).collect())
        .collect())
}

/// Run an infer request. A row that fails fails the request, with a message naming each
/// failed row (the protocol has no per-row status).
pub async fn infer(server: &Server, req: InferRequest) -> Result<InferResponse, CallError> {
    let service = server.service(&req.model)?;
    let outputs = service.outputs();
    for o in &req.outputs {
        if !outputs.iter().any(|(n, _)| n == o) {
            return Err(CallError::BadRequest(format!(
                "pipeline `{}` has no output `{o}`",
                req.model
            )));
        }
    }
    let rows = rows(&service, &req)?;
    let results = server.call_rows(&req.model, rows, req.deadline).await?;
    let mut ok = Vec::with_capacity(results.len());
    let mut failed = Vec::new();
    for (r, res) in results.into_iter().enumerate() {
        match res {
            Ok(values) => ok.push(values),
            Err(CallError::Failed(f)) => {
                failed.push(format!("row {r}: node `{}`: {}", f.node, f.message))
            }
            Err(e) => return Err(e),
        }
    }
    if !failed.is_empty() {
        return Err(CallError::Failed(mars_runtime::dataflow::Failure::new(
            "pipeline",
            failed.join("; "),
        )));
    }
    let encode_bytes = |v: &Value| -> Result<Vec<u8>, String> {
        match v {
            Value::Bytes(b) => Ok(b.to_vec()),
            other => {
                let j = service.encode_value(other)?;
                let b64 = j
                    .get("$base64")
                    .and_then(|b| b.as_str())
                    .unwrap_or_default();
                codec::base64_decode(b64).ok_or_else(|| "bad base64 from the codec".to_string())
            }
        }
    };
    let mut tensors = Vec::new();
    for (k, (name, ty)) in outputs.iter().enumerate() {
        if !req.outputs.is_empty() && !req.outputs.contains(name) {
            continue;
        }
        let column: Vec<Value> = ok.iter().map(|row| row[k].clone()).collect();
        let t = tensor::from_rows(name, ty, &column, &encode_bytes)
            .map_err(|e| CallError::Failed(mars_runtime::dataflow::Failure::new("output", e)))?;
        tensors.push(t);
    }
    Ok(InferResponse {
        model: req.model,
        id: req.id,
        outputs: tensors,
    })
}
