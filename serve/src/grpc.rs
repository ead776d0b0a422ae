//! The gRPC front end (tonic): the KServe v2 `inference.GRPCInferenceService`, generated from
//! `proto/inference.proto` at build time. Outputs travel as `raw_output_contents`; inputs may
//! come typed (`contents`) or raw. The gRPC deadline (`grpc-timeout`) is the request's
//! deadline; refusals are `UNAVAILABLE`, deadlines `DEADLINE_EXCEEDED`.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::grpc_open::Bounded;
use crate::kserve::{self, InferRequest, EXTENSIONS, SERVER_NAME};
use crate::state::{CallError, Server};
use crate::tensor::{self, Elements, Tensor};

/// The code generated from the protocol's `.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::*;

/// The gRPC status of a call error.
pub fn status_of(e: &CallError) -> Status {
    let m = e.message();
    match e {
        CallError::Unknown(_) => Status::not_found(m),
        CallError::Overloaded(_) | CallError::NotReady(_) => Status::unavailable(m),
        CallError::Deadline => Status::deadline_exceeded(m),
        CallError::BadRequest(_) => Status::invalid_argument(m),
        CallError::Failed(_) => Status::invalid_argument(m),
    }
}

/// Parse a `grpc-timeout` header value: digits and a unit (`H M S m u n`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub struct Grpc {
    server: Arc<Server>,
}

/// The service, behind the open-request bounds ([`Bounded`]).
pub fn service(server: Arc<Server>) -> Bounded<GrpcInferenceServiceServer<Grpc>> {
    let max = server.limits.max_body;
    let svc = GrpcInferenceServiceServer::new(Grpc {
        server: Arc::clone(&server),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(usize::MAX);
    Bounded::new(svc, server)
}

fn typed(datatype: &str, c: InferTensorContents) -> Elements {
    match datatype {
        "BYTES" => Elements::Bytes(c.bytes_contents),
        "BOOL" => Elements::Bool(c.bool_contents),
        "INT8" | "INT16" | "INT32" => {
            Elements::Int(c.int_contents.into_iter().map(i64::from).collect())
        }
        "INT64" => Elements::Int(c.int64_contents),
        "UINT8" | "UINT16" | "UINT32" => {
            Elements::Int(c.uint_contents.into_iter().map(i64::from).collect())
        }
        "UINT64" => Elements::Int(c.uint64_contents.into_iter().map(|u| u as i64).collect()),
        "FP32" => Elements::Float(c.fp32_contents.into_iter().map(f64::from).collect()),
        _ => Elements::Float(c.fp64_contents),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse {
            live: self.server.live(),
        }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.server.ready(),
        }))
    }

    async fn model_ready(
        &self,
        r: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let name = r.into_inner().name;
        if !self.server.all().iter().any(|(n, _)| *n == name) {
            return Err(status_of(&CallError::Unknown(name)));
        }
        Ok(Response::new(ModelReadyResponse {
            ready: self.server.pipeline_ready(&name),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let name = r.into_inner().name;
        let service = self
            .server
            .get(&name)
            .ok_or_else(|| status_of(&CallError::Unknown(name.clone())))?;
        let m = kserve::metadata(&name, &service);
        let t = |ts: Vec<kserve::TensorMeta>| {
            ts.into_iter()
                .map(|t| model_metadata_response::TensorMetadata {
                    name: t.name,
                    datatype: t.datatype,
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: m.name,
            versions: vec!["1".into()],
            platform: "mars".into(),
            inputs: t(m.inputs),
            outputs: t(m.outputs),
        }))
    }

    async fn model_infer(
        &self,
        r: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let start = std::time::Instant::now();
        let timeout = r
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let deadline = self.server.deadline(timeout);
        let req = r.into_inner();
        let model = req.model_name.clone();
        let result = async {
            let raw = req.raw_input_contents;
            if !raw.is_empty() && raw.len() != req.inputs.len() {
                return Err(CallError::BadRequest(format!(
                    "{} raw_input_contents for {} inputs",
                    raw.len(),
                    req.inputs.len()
                )));
            }
            let mut inputs = Vec::with_capacity(req.inputs.len());
            for (k, i) in req.inputs.into_iter().enumerate() {
                let data = match (raw.get(k), i.contents) {
                    (Some(bytes), _) => tensor::from_raw(&i.datatype, bytes)
                        .map_err(|e| CallError::BadRequest(format!("input `{}`: {e}", i.name)))?,
                    (None, Some(c)) => typed(&i.datatype, c),
                    (None, None) => {
                        return Err(CallError::BadRequest(format!(
                            "input `{}` has no contents",
                            i.name
                        )))
                    }
                };
                inputs.push(Tensor {
                    name: i.name,
                    datatype: i.datatype,
                    shape: i.shape,
                    data,
                });
            }
            kserve::infer(
                &self.server,
                InferRequest {
                    model: req.model_name,
                    id: req.id,
                    inputs,
                    outputs: req.outputs.into_iter().map(|o| o.name).collect(),
                    deadline,
                },
            )
            .await
        }
        .await;
        let outcome = result.as_ref().map_or_else(|e| e.kind(), |_| "ok");
        self.server
            .metrics
            .answered(&model, "kserve_grpc", outcome, start.elapsed());
        tracing::info!(
            target: "mars::access",
            id = self.server.log_id(),
            method = "grpc",
            path = "ModelInfer",
            pipeline = %model,
            outcome,
            latency_ms = start.elapsed().as_secs_f64() * 1000.0,
        );
        let resp = result.map_err(|e| status_of(&e))?;
        let mut raw = Vec::with_capacity(resp.outputs.len());
        let outputs = resp
            .outputs
            .into_iter()
            .map(|t| {
                raw.push(tensor::to_raw(&t.datatype, &t.data));
                model_infer_response::InferOutputTensor {
                    name: t.name,
                    datatype: t.datatype,
                    shape: t.shape,
                    parameters: Default::default(),
                    contents: None,
                }
            })
            .collect();
        Ok(Response::new(ModelInferResponse {
            model_name: resp.model,
            model_version: "1".into(),
            id: resp.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents: raw,
        }))
    }
}
