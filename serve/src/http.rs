//! The HTTP front end (axum): KServe v2 REST (with the binary tensor data extension), the
//! plain JSON form `POST /v1/pipelines/{name}`, the OpenAI-compatible endpoints
//! ([`crate::openai`]), health and `/metrics`. Every handler goes through
//! [`Server`](crate::state::Server) for admission and deadlines; a middleware checks the
//! bearer token and writes one access-log line per request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value as Json};

use crate::kserve::{self, InferRequest, EXTENSIONS, SERVER_NAME};
use crate::state::{CallError, Server};
use crate::tensor::{self, Tensor};

pub type AppState = Arc<Server>;

/// The header that carries a request's timeout (seconds, or with a unit: `250ms`, `2s`).
pub const TIMEOUT_HEADER: &str = "timeout";
/// The binary tensor data extension's header: the length of the JSON part of the body.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// The HTTP status of a call error.
pub fn status_of(e: &CallError) -> StatusCode {
    match e {
        CallError::Unknown(_) => StatusCode::NOT_FOUND,
        CallError::Overloaded(_) | CallError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        CallError::Deadline => StatusCode::GATEWAY_TIMEOUT,
        CallError::BadRequest(_) => StatusCode::BAD_REQUEST,
        CallError::Failed(_) => StatusCode::BAD_REQUEST,
    }
}

/// A call error as a response with `body`; overload and draining add `Retry-After`.
pub fn error_response(e: &CallError, body: Json) -> Response {
    let mut r = (status_of(e), axum::Json(body)).into_response();
    if matches!(e, CallError::Overloaded(_) | CallError::NotReady(_)) {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r.extensions_mut().insert(Outcome(e.kind()));
    r
}

/// The KServe error body.
fn kserve_error(e: &CallError) -> Response {
    error_response(e, json!({ "error": e.message() }))
}

/// What a handler tells the access log about its request.
#[derive(Clone, Copy)]
pub struct Outcome(pub &'static str);

/// Parse a timeout: seconds (`1.5`) or a number with `ms`, `s`, `us` or `m`.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Duration::from_secs_f64(v * scale)),
        _ => Err(format!(
            "bad `timeout` header `{s}`: give seconds (`1.5`) or a number with ms, s or m (`250ms`)"
        )),
    }
}

/// The request's deadline: its `timeout` header, or the server's default.
pub fn deadline_of(server: &Server, headers: &HeaderMap) -> Result<Option<Instant>, CallError> {
    let timeout = match headers.get(TIMEOUT_HEADER) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| CallError::BadRequest("the `timeout` header is not text".into()))
                .and_then(|t| parse_timeout(t).map_err(CallError::BadRequest))?,
        ),
        None => None,
    };
    Ok(server.deadline(timeout))
}

pub fn router(server: AppState) -> Router {
    let max_body = server.limits.max_body;
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{p}", get(model_metadata))
        .route("/v2/models/{p}/ready", get(model_ready))
        .route("/v2/models/{p}/infer", post(infer))
        .route("/v2/models/{p}/versions/{v}", get(model_metadata_v))
        .route("/v2/models/{p}/versions/{v}/ready", get(model_ready_v))
        .route("/v2/models/{p}/versions/{v}/infer", post(infer_v))
        .route("/v1/pipelines/{p}", post(plain))
        .route("/v1/pipelines/{p}/stats", get(pipeline_stats))
        .route("/v1/completions", post(crate::openai::completions))
        .route("/v1/chat/completions", post(crate::openai::chat))
        .route("/v1/models", get(crate::openai::models))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(Arc::clone(&server), guard))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(server)
}

/// Bearer-token check (when configured; health and metrics stay open) and the access log.
async fn guard(State(server): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let id = server.log_id();
    let open = path.starts_with("/v2/health") || path == "/metrics";
    if let (Some(key), false) = (&server.limits.api_key, open) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            tracing::info!(target: "mars::access", id, %method, %path, status = 401, latency_ms = 0.0, "refused: no valid bearer token");
            let mut r = (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": "this server wants `Authorization: Bearer KEY` (see --api-key-file)"})),
            )
                .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let pipeline = pipeline_of(&path).unwrap_or("-").to_string();
    // Held until the answer is out (or the caller goes away): what bounds the memory of
    // bodies read and requests waiting, whatever the clients do.
    let _slot = if open {
        None
    } else {
        let body = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(server.limits.max_body, |n| n.min(server.limits.max_body));
        match server.open.reserve(body, &server.limits) {
            Some(slot) => Some(slot),
            None => {
                server
                    .metrics
                    .refused(server.label(&pipeline), "open_limit");
                tracing::info!(target: "mars::access", id, %method, %path, pipeline = %pipeline, status = 503, outcome = "open_limit", latency_ms = start.elapsed().as_secs_f64() * 1000.0);
                let message = server.open.refusal(&server.limits);
                let mut r = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({ "error": message })),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                // The body was never read: the connection cannot carry another request, so
                // say so, and a client does not put it back in its pool (where its next
                // request would meet a closed socket).
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
        }
    };
    let mut r = next.run(req).await;
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // Refused on its Content-Length, with the body unread: as above.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let outcome = r.extensions().get::<Outcome>().map_or("-", |o| o.0);
    tracing::info!(
        target: "mars::access",
        id,
        %method,
        %path,
        pipeline = %pipeline,
        status = r.status().as_u16(),
        outcome,
        latency_ms = start.elapsed().as_secs_f64() * 1000.0,
    );
    r
}

fn pipeline_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v2/models/")
        .or_else(|| path.strip_prefix("/v1/pipelines/"))
        .map(|rest| rest.split('/').next().unwrap_or(rest))
}

async fn live(State(s): State<AppState>) -> Response {
    health(s.live())
}

async fn ready(State(s): State<AppState>) -> Response {
    health(s.ready())
}

fn health(ok: bool) -> Response {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    status.into_response()
}

async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
    .into_response()
}

async fn model_metadata(State(s): State<AppState>, Path(p): Path<String>) -> Response {
    let Some(service) = s.get(&p) else {
        return kserve_error(&CallError::Unknown(p));
    };
    let m = kserve::metadata(&p, &service);
    let t = |ts: &[kserve::TensorMeta]| {
        ts.iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
            .collect::<Vec<_>>()
    };
    axum::Json(json!({
        "name": m.name,
        "versions": ["1"],
        "platform": "mars",
        "inputs": t(&m.inputs),
        "outputs": t(&m.outputs),
    }))
    .into_response()
}

async fn model_metadata_v(s: State<AppState>, Path((p, _)): Path<(String, String)>) -> Response {
    model_metadata(s, Path(p)).await
}

async fn model_ready(State(s): State<AppState>, Path(p): Path<String>) -> Response {
    if s.get(&p).is_none() && !s.all().iter().any(|(n, _)| *n == p) {
        return kserve_error(&CallError::Unknown(p));
    }
    health(s.pipeline_ready(&p))
}

async fn model_ready_v(s: State<AppState>, Path((p, _)): Path<(String, String)>) -> Response {
    model_ready(s, Path(p)).await
}

/// `GET /v1/pipelines/{p}/stats`: each node measured against the plan (SPEC 8.3.1).
async fn pipeline_stats(State(s): State<AppState>, Path(p): Path<String>) -> Response {
    let Some(service) = s.get(&p) else {
        return kserve_error(&CallError::Unknown(p));
    };
    axum::Json(crate::stats::of_service(&p, &service, &s.metrics)).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let (requests, bytes) = s.open.held();
    s.metrics.set_open(requests, bytes);
    let text = s.metrics.render(&s.all());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn infer_v(
    s: State<AppState>,
    Path((p, _)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer(s, Path(p), headers, body).await
}

/// How the response should carry its outputs.
struct Wants {
    /// Output names, each with whether it wants binary data.
    outputs: Vec<(String, bool)>,
    /// Binary for outputs not listed (`binary_data_output`).
    all_binary: bool,
}

/// Parse a KServe v2 JSON (or binary-extension) infer body.
fn parse_infer(headers: &HeaderMap, body: &[u8]) -> Result<(Json, Vec<Tensor>, Wants), String> {
    let split = match headers.get(HEADER_LENGTH) {
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .ok_or("bad Inference-Header-Content-Length header")?;
            if n > body.len() {
                return Err(format!(
                    "Inference-Header-Content-Length {n} is longer than the body ({} bytes)",
                    body.len()
                ));
            }
            n
        }
        None => body.len(),
    };
    let (head, mut binary) = body.split_at(split);
    let json: Json = serde_json::from_slice(head).map_err(|e| format!("malformed JSON: {e}"))?;
    let inputs = json
        .get("inputs")
        .and_then(Json::as_array)
        .ok_or("an infer request is a JSON object with an `inputs` array")?;
    let mut tensors = Vec::new();
    for (k, i) in inputs.iter().enumerate() {
        let field = |f: &str| i.get(f).ok_or(format!("input {k} has no `{f}`"));
        let name = field("name")?
            .as_str()
            .ok_or(format!("input {k}: `name` is not a string"))?;
        let datatype = field("datatype")?
            .as_str()
            .ok_or(format!("input `{name}`: `datatype` is not a string"))?;
        let shape: Vec<i64> = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(Json::as_i64).collect())
            .ok_or(format!(
                "input `{name}`: `shape` is not an array of integers"
            ))?;
        let size = i
            .get("parameters")
            .and_then(|p| p.get("binary_data_size"))
            .and_then(Json::as_u64);
        let data = match (size, i.get("data")) {
            (Some(n), _) => {
                let n = n as usize;
                if n > binary.len() {
                    return Err(format!(
                        "input `{name}`: binary_data_size {n} runs past the body"
                    ));
                }
                let (mine, rest) = binary.split_at(n);
                binary = rest;
                tensor::from_raw(datatype, mine).map_err(|e| format!("input `{name}`: {e}"))?
            }
            (None, Some(d)) => {
                tensor::from_json(datatype, d).map_err(|e| format!("input `{name}`: {e}"))?
            }
            (None, None) => {
                return Err(format!(
                    "input `{name}` has neither `data` nor binary_data_size"
                ))
            }
        };
        tensors.push(Tensor {
            name: name.to_string(),
            datatype: datatype.to_string(),
            shape,
            data,
        });
    }
    let all_binary = json
        .get("parameters")
        .and_then(|p| p.get("binary_data_output"))
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let outputs = json
        .get("outputs")
        .and_then(Json::as_array)
        .map(|os| {
            os.iter()
                .filter_map(|o| {
                    let name = o.get("name")?.as_str()?.to_string();
                    let bin = o
                        .get("parameters")
                        .and_then(|p| p.get("binary_data"))
                        .and_then(Json::as_bool)
                        .unwrap_or(all_binary);
                    Some((name, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((
        json,
        tensors,
        Wants {
            outputs,
            all_binary,
        },
    ))
}

async fn infer(
    State(s): State<AppState>,
    Path(p): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let start = Instant::now();
    let deadline = match deadline_of(&s, &headers) {
        Ok(d) => d,
        Err(e) => return kserve_error(&e),
    };
    let (json, inputs, wants) = match parse_infer(&headers, &body) {
        Ok(parsed) => parsed,
        Err(m) => {
            let e = CallError::BadRequest(m);
            s.metrics
                .answered(&p, "kserve_http", e.kind(), start.elapsed());
            return kserve_error(&e);
        }
    };
    let req = InferRequest {
        model: p.clone(),
        id: json
            .get("id")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string(),
        inputs,
        outputs: wants.outputs.iter().map(|(n, _)| n.clone()).collect(),
        deadline,
    };
    let result = kserve::infer(&s, req).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    };
    s.metrics
        .answered(&p, "kserve_http", outcome, start.elapsed());
    let resp = match result {
        Ok(r) => r,
        Err(e) => return kserve_error(&e),
    };
    let mut outputs = Vec::new();
    let mut binary: Vec<u8> = Vec::new();
    for t in &resp.outputs {
        let bin = wants
            .outputs
            .iter()
            .find(|(n, _)| *n == t.name)
            .map_or(wants.all_binary, |(_, b)| *b);
        if bin {
            let raw = tensor::to_raw(&t.datatype, &t.data);
            outputs.push(json!({
                "name": t.name, "datatype": t.datatype, "shape": t.shape,
                "parameters": {"binary_data_size": raw.len()},
            }));
            binary.extend(raw);
        } else {
            outputs.push(json!({
                "name": t.name, "datatype": t.datatype, "shape": t.shape,
                "data": tensor::to_json(&t.data),
            }));
        }
    }
    let mut head = json!({"model_name": resp.model, "model_version": "1", "outputs": outputs});
    if !resp.id.is_empty() {
        head["id"] = json!(resp.id);
    }
    let head = head.to_string();
    let mut r = if binary.is_empty() {
        ([(header::CONTENT_TYPE, "application/json")], head).into_response()
    } else {
        let n = head.len();
        let mut bytes = head.into_bytes();
        bytes.extend(binary);
        let mut r = (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Body::from(bytes),
        )
            .into_response();
        r.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(n));
        r
    };
    r.extensions_mut().insert(Outcome("ok"));
    r
}

/// `POST /v1/pipelines/{name}`: a body like a line of `marsc run`'s input (one JSON object)
/// or a JSON array of them; the answer is the record (or an array of records) `marsc run`
/// would write, with ids counting from 1 within the call.
async fn plain(
    State(s): State<AppState>,
    Path(p): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let start = Instant::now();
    let answer = plain_call(&s, &p, &headers, &body).await;
    let (status, outcome, body) = match answer {
        Ok(b) => (StatusCode::OK, "ok", b),
        Err((e, b)) => {
            let mut r = error_response(&e, b);
            s.metrics.answered(&p, "plain", e.kind(), start.elapsed());
            r.extensions_mut().insert(Outcome(e.kind()));
            return r;
        }
    };
    s.metrics.answered(&p, "plain", outcome, start.elapsed());
    let mut r = (status, axum::Json(body)).into_response();
    r.extensions_mut().insert(Outcome(outcome));
    r
}

fn record_error(id: u64, node: &str, message: &str) -> Json {
    json!({"id": id, "error": {"node": node, "message": message}})
}

async fn plain_call(
    s: &Server,
    p: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Json, (CallError, Json)> {
    let fail = |e: CallError| {
        let b = record_error(1, "input", &e.message());
        (e, b)
    };
    let deadline = deadline_of(s, headers).map_err(fail)?;
    let service = s.service(p).map_err(|e| {
        let m = e.message();
        (e, record_error(1, "server", &m))
    })?;
    let json: Json = serde_json::from_slice(body)
        .map_err(|e| fail(CallError::BadRequest(format!("malformed JSON: {e}"))))?;
    let (many, items) = match json {
        Json::Array(items) => (true, items),
        other => (false, vec![other]),
    };
    if items.is_empty() {
        return Ok(json!([]));
    }
    // Admit every valid row first (so the runtime batches them), then wait.
    let t0 = Instant::now();
    let mut flights = Vec::with_capacity(items.len());
    for item in &items {
        match service.decode(item) {
            Ok(values) => match s.admit(p, &service, values, deadline, None) {
                Ok(f) => flights.push(Ok(f)),
                Err(e) => {
                    let m = e.message();
                    return Err((e, record_error(1, "server", &m)));
                }
            },
            Err(m) => flights.push(Err(m)),
        }
    }
    let mut records = Vec::with_capacity(flights.len());
    for (k, f) in flights.into_iter().enumerate() {
        let id = k as u64 + 1;
        let rec = match f {
            Err(m) => {
                if !many {
                    return Err((
                        CallError::BadRequest(m.clone()),
                        record_error(id, "input", &m),
                    ));
                }
                record_error(id, "input", &m)
            }
            Ok(f) => match f.finish().await {
                Ok(values) => match service.encode(&values) {
                    Ok(obj) => {
                        json!({"id": id, "ok": obj, "latency_ms": t0.elapsed().as_secs_f64() * 1000.0})
                    }
                    Err(m) => record_error(id, "output", &m),
                },
                Err(CallError::Failed(f)) => record_error(id, &f.node, &f.message),
                Err(e) => {
                    let m = e.message();
                    return Err((e, record_error(id, "server", &m)));
                }
            },
        };
        records.push(rec);
    }
    Ok(if many {
        Json::Array(records)
    } else {
        records.pop().unwrap_or(Json::Null)
    })
}
