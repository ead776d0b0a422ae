//! The open-request bounds (`--max-open-requests`, `--max-open-mib`) on the gRPC front end.
//!
//! HTTP reserves a request's `Content-Length` before its body is read; gRPC over HTTP/2 names
//! no length up front, so [`Bounded`] wraps the generated service and, for `ModelInfer`:
//! 1. reserves the request itself (the count bound) before anything of its body is read,
//! 2. reads only the 5-byte gRPC message prefix (at most one HTTP/2 DATA frame, which flow
//!    control bounds) and reserves the message length it states, capped at `--max-body-bytes`
//!    (tonic refuses longer messages from that prefix, unread),
//! 3. passes the request on with the frames it read put back, and holds the reservation until
//!    the answer's body is done (or dropped: the caller went away).
//!
//! A request past either bound is answered `UNAVAILABLE` at once, counted as an `open_limit`
//! refusal. Health, readiness and metadata calls stay outside the bounds, as on HTTP.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;
use tower_service::Service;

use crate::state::{OpenSlot, Server};

/// The length of a gRPC message prefix: a compression flag and a big-endian u32 length.
const PREFIX: usize = 5;

/// A gRPC service behind the server's open-request bounds.
#[derive(Clone)]
pub struct Bounded<S> {
    inner: S,
    server: Arc<Server>,
}

impl<S> Bounded<S> {
    pub fn new(inner: S, server: Arc<Server>) -> Bounded<S> {
        Bounded { inner, server }
    }
}

impl<S: NamedService> NamedService for Bounded<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for Bounded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone is not the service that was polled ready: swap so `inner` is (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let server = Arc::clone(&self.server);
        Box::pin(async move {
            if !req.uri().path().ends_with("/ModelInfer") {
                return inner.call(req).await;
            }
            let start = std::time::Instant::now();
            let Some(mut slot) = server.open.reserve(0, &server.limits) else {
                return Ok(refuse(&server, start));
            };
            let (parts, mut body) = req.into_parts();
            let mut read = VecDeque::new();
            let mut prefix = Vec::with_capacity(PREFIX);
            while prefix.len() < PREFIX {
                match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let want = PREFIX - prefix.len();
                            prefix.extend_from_slice(&data[..want.min(data.len())]);
                        }
                        let last = !frame.is_data();
                        read.push_back(frame);
                        if last {
                            break;
                        }
                    }
                    Some(Err(status)) => return Ok(status.into_http()),
                    None => break,
                }
            }
            if prefix.len() == PREFIX {
                let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
                let bytes = (len as usize).min(server.limits.max_body);
                if !slot.grow(bytes, &server.limits) {
                    drop(slot);
                    return Ok(refuse(&server, start));
                }
            }
            let body = Body::new(Replayed { read, rest: body });
            let answer = inner.call(http::Request::from_parts(parts, body)).await?;
            let (parts, body) = answer.into_parts();
            Ok(http::Response::from_parts(
                parts,
                Body::new(Held { body, _slot: slot }),
            ))
        })
    }
}

/// The `UNAVAILABLE` answer to a request past the open bounds.
fn refuse(server: &Server, start: std::time::Instant) -> http::Response<Body> {
    server.metrics.refused("-", "open_limit");
    tracing::info!(target: "mars::access", id = server.log_id(), method = "grpc", path = "ModelInfer", pipeline = "-", outcome = "open_limit", latency_ms = start.elapsed().as_secs_f64() * 1000.0);
    Status::unavailable(server.open.refusal(&server.limits)).into_http()
}

/// A request body with the frames already read put back in front.
struct Replayed {
    read: VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl HttpBody for Replayed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(frame) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self
            .read
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + read);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}

/// An answer's body that holds its request's open reservation until it is done or dropped.
struct Held {
    body: Body,
    _slot: OpenSlot,
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
