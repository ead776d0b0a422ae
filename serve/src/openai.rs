//! OpenAI-compatible `/v1/completions` and `/v1/chat/completions` for pipelines whose output
//! text comes straight from a generating model (see `Service::streamed_output`); `model`
//! names the pipeline. The prompt goes to the pipeline's input named `prompt`, or else its
//! first `Text` input (for chat: the last user message's content). `max_tokens`,
//! `temperature`, `top_p` and `seed` go to pipeline inputs of those names when the pipeline
//! declares them (the model node's own settings apply otherwise); `stop` is applied here: the
//! text ends before the first stop string, and a streamed sequence is cancelled once one
//! shows.
//!
//! `stream: true` answers with server-sent events, one chunk per growth of the generated text
//! as the continuous-batching scheduler steps, then `data: [DONE]`. A client that disconnects
//! cancels its sequence, which frees its KV cache.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use mars_plan::DataType;
use mars_runtime::run::service::Service;
use mars_runtime::Value;
use serde_json::{json, Value as Json};

use crate::http::{deadline_of, error_response, AppState, Outcome};
use crate::state::{CallError, InFlight, Server};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

fn openai_error(e: &CallError) -> Response {
    let kind = match e {
        CallError::BadRequest(_) | CallError::Failed(_) => "invalid_request_error",
        CallError::Unknown(_) => "not_found_error",
        _ => "server_error",
    };
    error_response(
        e,
        json!({"error": {"message": e.message(), "type": kind, "code": e.kind()}}),
    )
}

pub async fn completions(s: State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(s, headers, body, Kind::Completion).await
}

pub async fn chat(s: State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(s, headers, body, Kind::Chat).await
}

/// `GET /v1/models`: the pipelines that answer completions.
pub async fn models(State(s): State<AppState>) -> Response {
    let data: Vec<Json> = s
        .all()
        .into_iter()
        .filter(|(_, svc)| svc.as_ref().is_some_and(|x| x.streamed_output().is_some()))
        .map(|(n, _)| json!({"id": n, "object": "model", "created": 0, "owned_by": "mars"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// What a completion request asks for.
struct Ask {
    pipeline: String,
    values: Vec<Value>,
    stream: bool,
    stop: Vec<String>,
    output: usize,
}

fn parse(s: &Server, body: &[u8], kind: Kind) -> Result<(Ask, Arc<Service>), CallError> {
    let bad = CallError::BadRequest;
    let json: Json =
        serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let model = json
        .get("model")
        .and_then(Json::as_str)
        .ok_or_else(|| bad("`model` (the pipeline's name) is required".into()))?;
    let service = s.service(model)?;
    let output = service.streamed_output().ok_or_else(|| {
        bad(format!(
            "pipeline `{model}` has no Text output that comes straight from a generating model; \
             call it with /v2/models/{model}/infer or /v1/pipelines/{model}"
        ))
    })?;
    let prompt = match kind {
        Kind::Completion => match json.get("prompt") {
            Some(Json::String(p)) => p.clone(),
            Some(Json::Array(a)) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().unwrap_or_default().to_string()
            }
            Some(_) => {
                return Err(bad(
                    "`prompt` must be a string (one prompt per request)".into()
                ))
            }
            None => return Err(bad("`prompt` is required".into())),
        },
        Kind::Chat => {
            let messages = json
                .get("messages")
                .and_then(Json::as_array)
                .ok_or_else(|| bad("`messages` (an array) is required".into()))?;
            messages
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Json::as_str) == Some("user"))
                .and_then(|m| m.get("content"))
                .and_then(Json::as_str)
                .ok_or_else(|| bad("`messages` has no user message with text content".into()))?
                .to_string()
        }
    };
    let inputs = service.inputs();
    let prompt_input = inputs
        .iter()
        .position(|i| i.name == "prompt")
        .or_else(|| inputs.iter().position(|i| i.ty == DataType::Text))
        .ok_or_else(|| {
            bad(format!(
                "pipeline `{model}` has no Text input for the prompt"
            ))
        })?;
    let mut obj = serde_json::Map::new();
    obj.insert(inputs[prompt_input].name.clone(), Json::String(prompt));
    for key in ["max_tokens", "temperature", "top_p", "seed"] {
        if let (Some(v), true) = (json.get(key), inputs.iter().any(|i| i.name == key)) {
            obj.insert(key.to_string(), v.clone());
        }
    }
    if let Some(Json::Array(m)) = json.get("messages") {
        if inputs.iter().any(|i| i.name == "messages") {
            obj.insert("messages".into(), Json::Array(m.clone()));
        }
    }
    let values = service.decode(&Json::Object(obj)).map_err(bad)?;
    let stop = match json.get("stop") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::String(s)) => vec![s.clone()],
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Some(_) => return Err(bad("`stop` must be a string or an array of strings".into())),
    };
    let stream = json.get("stream").and_then(Json::as_bool).unwrap_or(false);
    Ok((
        Ask {
            pipeline: model.to_string(),
            values,
            stream,
            stop,
            output,
        },
        service,
    ))
}

/// The text before the first stop string, and whether one was found.
fn cut_at_stop(text: &str, stop: &[String]) -> (String, bool) {
    let first = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    match first {
        Some(k) => (text[..k].to_string(), true),
        None => (text.to_string(), false),
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn body(kind: Kind, id: &str, model: &str, text: &str, finish: &str) -> Json {
    match kind {
        Kind::Completion => json!({
            "id": id, "object": "text_completion", "created": now_s(), "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
        }),
        Kind::Chat => json!({
            "id": id, "object": "chat.completion", "created": now_s(), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        }),
    }
}

fn chunk(
    kind: Kind,
    id: &str,
    model: &str,
    delta: &str,
    finish: Option<&str>,
    first: bool,
) -> Json {
    match kind {
        Kind::Completion => json!({
            "id": id, "object": "text_completion", "created": now_s(), "model": model,
            "choices": [{"text": delta, "index": 0, "logprobs": null, "finish_reason": finish}],
        }),
        Kind::Chat => {
            let d = if first {
                json!({"role": "assistant", "content": delta})
            } else {
                json!({"content": delta})
            };
            json!({
                "id": id, "object": "chat.completion.chunk", "created": now_s(), "model": model,
                "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
            })
        }
    }
}

async fn handle(State(s): State<AppState>, headers: HeaderMap, raw: Bytes, kind: Kind) -> Response {
    let start = Instant::now();
    let endpoint = match kind {
        Kind::Completion => "openai_completions",
        Kind::Chat => "openai_chat",
    };
    let deadline = match deadline_of(&s, &headers) {
        Ok(d) => d,
        Err(e) => return openai_error(&e),
    };
    let (ask, service) = match parse(&s, &raw, kind) {
        Ok(x) => x,
        Err(e) => {
            let name = serde_json::from_slice::<Json>(&raw)
                .ok()
                .and_then(|j| j.get("model").and_then(Json::as_str).map(str::to_string))
                .unwrap_or_else(|| "-".into());
            s.metrics
                .answered(&name, endpoint, e.kind(), start.elapsed());
            return openai_error(&e);
        }
    };
    let prefix = match kind {
        Kind::Completion => "cmpl",
        Kind::Chat => "chatcmpl",
    };
    let id = format!("{prefix}-{}", s.log_id());
    if !ask.stream {
        let flight = match s.admit(&ask.pipeline, &service, ask.values, deadline, None) {
            Ok(f) => f,
            Err(e) => {
                s.metrics
                    .answered(&ask.pipeline, endpoint, e.kind(), start.elapsed());
                return openai_error(&e);
            }
        };
        let result = flight.finish().await;
        let outcome = result.as_ref().map_or_else(|e| e.kind(), |_| "ok");
        s.metrics
            .answered(&ask.pipeline, endpoint, outcome, start.elapsed());
        return match result {
            Ok(values) => {
                let text = match values.get(ask.output) {
                    Some(Value::Text(t)) => t.clone(),
                    _ => String::new(),
                };
                let (text, _) = cut_at_stop(&text, &ask.stop);
                let mut r =
                    axum::Json(body(kind, &id, &ask.pipeline, &text, "stop")).into_response();
                r.extensions_mut().insert(Outcome("ok"));
                r
            }
            Err(e) => openai_error(&e),
        };
    }
    let (tx, rx) = tokio::sync::watch::channel(String::new());
    let partial = Box::new(move |text: &str| {
        tx.send_replace(text.to_string());
    });
    let flight = match s.admit(&ask.pipeline, &service, ask.values, deadline, Some(partial)) {
        Ok(f) => f,
        Err(e) => {
            s.metrics
                .answered(&ask.pipeline, endpoint, e.kind(), start.elapsed());
            return openai_error(&e);
        }
    };
    let events = sse_events(
        Streamed {
            server: Arc::clone(&s),
            kind,
            id,
            pipeline: ask.pipeline,
            output: ask.output,
            stop: ask.stop,
            start,
            endpoint,
        },
        flight,
        rx,
    );
    let mut r = Sse::new(events).into_response();
    r.extensions_mut().insert(Outcome("stream"));
    r
}

struct Streamed {
    server: Arc<Server>,
    kind: Kind,
    id: String,
    pipeline: String,
    output: usize,
    stop: Vec<String>,
    start: Instant,
    endpoint: &'static str,
}

enum Phase {
    Running(Box<InFlightWait>),
    Done,
}

/// The outcome's future (pinned on the heap) beside the text channel.
struct InFlightWait {
    outcome:
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Value>, CallError>> + Send>>,
    text: tokio::sync::watch::Receiver<String>,
    sent: String,
    first: bool,
}

/// The SSE events of a streamed completion. Dropping the stream (the client went away)
/// drops the in-flight request, which cancels it.
fn sse_events(
    st: Streamed,
    flight: InFlight,
    text: tokio::sync::watch::Receiver<String>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let wait = InFlightWait {
        outcome: Box::pin(flight.finish()),
        text,
        sent: String::new(),
        first: true,
    };
    let st = Arc::new(st);
    stream::unfold(Phase::Running(Box::new(wait)), move |phase| {
        let st = Arc::clone(&st);
        async move {
            let Phase::Running(mut w) = phase else {
                return None;
            };
            loop {
                tokio::select! {
                    result = &mut w.outcome => {
                        let (events, outcome) = finish_events(&st, &mut w, result);
                        st.server.metrics.answered(&st.pipeline, st.endpoint, outcome, st.start.elapsed());
                        return Some((events, Phase::Done));
                    }
                    changed = w.text.changed() => {
                        if changed.is_err() {
                            // The sender is gone: the outcome follows.
                            continue;
                        }
                        let now = w.text.borrow_and_update().clone();
                        let (now, stopped) = cut_at_stop(&now, &st.stop);
                        let Some(delta) = now.strip_prefix(w.sent.as_str()).map(str::to_string) else {
                            continue;
                        };
                        if delta.is_empty() && !stopped {
                            continue;
                        }
                        w.sent = now;
                        let mut events = Vec::new();
                        if !delta.is_empty() {
                            events.push(data(chunk(st.kind, &st.id, &st.pipeline, &delta, None, w.first)));
                            w.first = false;
                        }
                        if stopped {
                            // Nothing after the stop string is wanted: dropping `w` cancels
                            // the request, which frees its sequence.
                            events.push(data(chunk(st.kind, &st.id, &st.pipeline, "", Some("stop"), false)));
                            events.push(Event::default().data("[DONE]"));
                            st.server.metrics.answered(&st.pipeline, st.endpoint, "ok", st.start.elapsed());
                            drop(w);
                            return Some((events, Phase::Done));
                        }
                        return Some((events, Phase::Running(w)));
                    }
                }
            }
        }
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)))
}

fn data(j: Json) -> Event {
    Event::default().data(j.to_string())
}

/// The last events: the rest of the text and the finishing chunk, or an error event.
fn finish_events(
    st: &Streamed,
    w: &mut InFlightWait,
    result: Result<Vec<Value>, CallError>,
) -> (Vec<Event>, &'static str) {
    let mut events = Vec::new();
    let outcome = match result {
        Ok(values) => {
            let text = match values.get(st.output) {
                Some(Value::Text(t)) => t.clone(),
                _ => String::new(),
            };
            let (text, _) = cut_at_stop(&text, &st.stop);
            let delta = text
                .strip_prefix(w.sent.as_str())
                .unwrap_or(&text)
                .to_string();
            if !delta.is_empty() {
                events.push(data(chunk(
                    st.kind,
                    &st.id,
                    &st.pipeline,
                    &delta,
                    None,
                    w.first,
                )));
            }
            events.push(data(chunk(
                st.kind,
                &st.id,
                &st.pipeline,
                "",
                Some("stop"),
                false,
            )));
            "ok"
        }
        Err(e) => {
            events.push(data(json!({"error": {"message": e.message(), "type": "server_error", "code": e.kind()}})));
            e.kind()
        }
    };
    events.push(Event::default().data("[DONE]"));
    (events, outcome)
}
