//! `marsc serve` operations end to end: readiness after warm-up, TLS, memory and refusals
//! under overload, deadlines inside the dataflow, serving as process 0 of a cluster.

use std::time::{Duration, Instant};

use mars_serve::grpc::proto;
use mars_serve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use serde_json::{json, Value as Json};

#[path = "serve/common.rs"]
mod common;
use common::{post, rss_kib, Served};

/// Wait until the metrics show no request in flight for `pipeline`, then return them.
async fn settled(s: &Served, pipeline: &str) -> String {
    let want = format!(r#"mars_in_flight{{pipeline="{pipeline}"}} 0"#);
    let mut text = String::new();
    for _ in 0..200 {
        text = s.metrics().await;
        if text.contains(&want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    text
}

#[tokio::test]
async fn readiness_waits_for_the_warm_up_request_through_the_pipeline() {
    // Node `a` takes 1.5 s per request: the warm-up request holds readiness false that long.
    let s = Served::spawn(&["warm"], &[], "http", reqwest::Client::new());
    let c = s.client.clone();
    let mut live = false;
    for _ in 0..100 {
        if let Ok(r) = c.get(s.url("/v2/health/live")).send().await {
            live = r.status() == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(live, "live while loading");
    let status = |path: &'static str| {
        let c = c.clone();
        let url = s.url(path);
        async move { c.get(url).send().await.expect("answers").status().as_u16() }
    };
    assert_eq!(
        status("/v2/health/ready").await,
        503,
        "not ready before the warm-up finished"
    );
    assert_eq!(status("/v2/models/warm/ready").await, 503);
    let (code, r) = post(&c, &s.url("/v1/pipelines/warm"), &json!({"x": 1})).await;
    assert_eq!(code, 503, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("warming up"),
        "{r}"
    );
    let mut g = GrpcInferenceServiceClient::connect(s.grpc.clone())
        .await
        .expect("connects");
    assert!(
        !g.server_ready(proto::ServerReadyRequest {})
            .await
            .expect("answers")
            .into_inner()
            .ready
    );

    s.wait_ready().await;
    // Ready means warmed: the node has run the warm-up request once.
    let text = s.metrics().await;
    assert!(
        text.contains(r#"mars_node_items_total{pipeline="warm",node="a"} 1"#),
        "{text}"
    );
    assert_eq!(status("/v2/models/warm/ready").await, 200);
    assert!(
        g.server_ready(proto::ServerReadyRequest {})
            .await
            .expect("answers")
            .into_inner()
            .ready
    );
    // The warm-up is not a served request: the one refused while warming up is all there is.
    assert!(
        text.contains(
            r#"mars_requests_total{pipeline="warm",endpoint="plain",outcome="unavailable"} 1"#
        ),
        "{text}"
    );
    assert!(
        !text.contains(r#"mars_requests_total{pipeline="warm",endpoint="plain",outcome="ok"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn without_warm_up_readiness_follows_loading() {
    let s = Served::start(&["warm"], &["--warmup-timeout", "0"]).await;
    let text = s.metrics().await;
    assert!(
        text.contains(r#"mars_node_items_total{pipeline="warm",node="a"} 0"#),
        "{text}"
    );
}

#[tokio::test]
async fn tls_serves_https_and_grpcs_with_the_given_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("a self-signed certificate");
    let (cert_pem, key_pem) = (ck.cert.pem(), ck.key_pair.serialize_pem());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &cert_pem).expect("writes");
    std::fs::write(&key, &key_pem).expect("writes");
    let trusting = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(
            reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("a PEM cert"),
        )
        .build()
        .expect("a client");
    let s = Served::spawn(
        &["ab"],
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
        ],
        "https",
        trusting.clone(),
    );
    s.wait_ready().await;
    let (status, r) = post(&trusting, &s.url("/v1/pipelines/ab"), &json!({"x": 5})).await;
    assert_eq!((status, r["ok"]["y"].clone()), (200, json!(5)), "{r}");

    // A client that does not trust the certificate is refused, and plain HTTP gets no answer.
    let strict = reqwest::Client::builder()
        .use_rustls_tls()
        .build()
        .expect("a client");
    let e = strict
        .get(s.url("/v2/health/ready"))
        .send()
        .await
        .expect_err("untrusted");
    assert!(e.is_connect(), "{e:?}");
    let plain = s.url("/v2/health/ready").replacen("https://", "http://", 1);
    let answered = reqwest::Client::new()
        .get(plain)
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(!matches!(answered, Ok(200)), "{answered:?}");

    // gRPC over TLS, with tonic's rustls client.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(s.grpc.clone())
        .expect("a URI")
        .tls_config(tls)
        .expect("TLS config")
        .connect()
        .await
        .expect("connects over TLS");
    let mut g = GrpcInferenceServiceClient::new(channel);
    assert!(
        g.server_ready(proto::ServerReadyRequest {})
            .await
            .expect("answers")
            .into_inner()
            .ready
    );
}

#[tokio::test]
async fn bad_tls_files_are_refused_before_listening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").expect("writes");
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("marsc"))
        .arg("serve")
        .arg(common::plan("ab"))
        .args(["--http", "127.0.0.1:0", "--grpc", "off", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&cert)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-cert holds no certificate"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("marsc serve: http="));
}

/// The `q`-quantile of `xs` (sorted in place), in ms.
fn quantile(xs: &mut [f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() as f64 * q) as usize).min(xs.len() - 1)]
}

#[tokio::test]
async fn twice_the_capacity_is_refused_fast_and_memory_stays_flat() {
    // Capacity 100 req/s (10 ms a request, one at a time); offered 200 req/s for 6 s, each
    // request carrying 64 KiB. A queue without bound would hold ~600 such requests by the end.
    // The open bound (48 requests) holds what is read before admission: without it a client
    // that opens connections faster than the node answers grows the bodies held without end.
    let s = Served::start(
        &["overload"],
        &[
            "--queue",
            "16",
            "--max-inflight",
            "8",
            "--max-open-requests",
            "48",
        ],
    )
    .await;
    let pid = s.child.id();
    let body = std::sync::Arc::new(json!({ "text": "x".repeat(64 << 10) }));
    let url = s.url("/v1/pipelines/overload");
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .expect("a client");
    let t0 = Instant::now();
    let rate = 200.0;
    let seconds = 6.0;
    let mut calls = Vec::new();
    let mut rss = Vec::new();
    let mut k = 0u64;
    while t0.elapsed().as_secs_f64() < seconds {
        let due = t0 + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        if k % 20 == 0 {
            rss.push((t0.elapsed().as_secs_f64(), rss_kib(pid)));
        }
        let (c, url, body) = (c.clone(), url.clone(), std::sync::Arc::clone(&body));
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = c.post(url).json(&*body).send().await.expect("answers");
            let status = r.status().as_u16();
            let _ = r.bytes().await;
            (status, t.elapsed().as_secs_f64() * 1000.0)
        }));
        k += 1;
    }
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for call in calls {
        let (status, ms) = call.await.expect("joins");
        match status {
            200 => ok.push(ms),
            503 => refused.push(ms),
            other => panic!("unexpected status {other}"),
        }
    }
    let offered = ok.len() + refused.len();
    eprintln!(
        "offered {offered}, ok {} (p99 {:.1} ms), refused {} (p50 {:.1} ms, p99 {:.1} ms), rss {:?}",
        ok.len(),
        quantile(&mut ok.clone(), 0.99),
        refused.len(),
        quantile(&mut refused.clone(), 0.5),
        quantile(&mut refused.clone(), 0.99),
        rss
    );
    // About half is refused (the node does ~100 of the ~200 a second).
    assert!(
        refused.len() * 4 > offered,
        "{} of {offered} refused",
        refused.len()
    );
    assert!(
        ok.len() as f64 <= seconds * 100.0 * 1.1 + 24.0,
        "{} answered",
        ok.len()
    );
    // Refusals are fast: answered without waiting for the node, at least twice as quick as
    // admitted requests, which wait for the queue and the in-flight ones ahead of them
    // (24 × 10 ms). Bounds are loose: the client shares the machine with the server.
    let (refused_p50, ok_p50) = (quantile(&mut refused, 0.5), quantile(&mut ok, 0.5));
    assert!(
        refused_p50 * 2.0 < ok_p50,
        "refusals p50 {refused_p50:.1} ms, admitted p50 {ok_p50:.1} ms"
    );
    assert!(
        quantile(&mut refused, 0.99) < 2000.0,
        "refusals p99 {:.1} ms",
        quantile(&mut refused, 0.99)
    );
    assert!(
        quantile(&mut ok, 0.99) < 5000.0,
        "admitted p99 {:.1} ms",
        quantile(&mut ok, 0.99)
    );
    // Memory is flat: once the connections and allocator have grown (2 s), the resident set
    // grows by less than 16 MiB over the next 4 s; a queue without bound would hold another
    // ~400 requests of 64 KiB by then, each held at least as body and as decoded value.
    let base = rss.iter().find(|(t, _)| *t >= 2.0).map_or(0, |r| r.1);
    let peak = rss.iter().map(|r| r.1).max().unwrap_or(0);
    assert!(
        peak < base + (16 << 10),
        "RSS grew from {base} KiB to {peak} KiB"
    );
}

#[tokio::test]
async fn a_deadline_that_passes_in_a_node_queue_drops_the_request_before_the_node_runs() {
    // Admission lets both requests into the dataflow at once (no in-flight bound to speak of):
    // the second waits in node `a`'s queue behind the first's 300 ms, and its 50 ms deadline
    // passes there.
    let s = Served::start(&["slow"], &[]).await;
    let c = s.client.clone();
    let url = s.url("/v1/pipelines/slow");
    let first = {
        let (c, url) = (c.clone(), url.clone());
        tokio::spawn(async move {
            c.post(url)
                .json(&json!({"x": 1}))
                .send()
                .await
                .expect("answers")
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t = Instant::now();
    let r = c
        .post(&url)
        .header("timeout", "50ms")
        .json(&json!({"x": 2}))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), 504);
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "answered at the deadline, not after the node"
    );
    assert_eq!(first.await.expect("joins"), 200);
    let text = settled(&s, "slow").await;
    // The warm-up request and the first ran; the second left the node's queue unrun.
    assert!(
        text.contains(r#"mars_node_items_total{pipeline="slow",node="a"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"mars_requests_total{pipeline="slow",endpoint="plain",outcome="deadline"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn serve_runs_as_process_0_of_a_local_cluster() {
    let mut s = Served::start(&["ab2"], &["--local-cluster", "2"]).await;
    let c = s.client.clone();
    let (status, r) = post(
        &c,
        &s.url("/v1/pipelines/ab2"),
        &json!([{"x": 1}, {"x": 2}, {"x": 3}]),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let ys: Vec<Json> = r
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["ok"]["y"].clone())
        .collect();
    assert_eq!(ys, vec![json!(1), json!(2), json!(3)]);
    let text = s.metrics().await;
    // Node a runs here (the warm-up and three rows); node b runs in process 1, whose
    // counters this process does not see while serving.
    assert!(
        text.contains(r#"mars_node_items_total{pipeline="ab2",node="a"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(r#"mars_node_items_total{pipeline="ab2",node="b"} 0"#),
        "{text}"
    );
    s.sigterm();
    let status = s.child.wait().expect("exits");
    assert!(status.success(), "{status}");
}

/// The value of an unlabelled gauge in a metrics text.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Poll the metrics until `name` reaches `want` (a few seconds at most).
async fn until_gauge(s: &Served, name: &str, want: f64) {
    let mut seen = None;
    for _ in 0..400 {
        seen = gauge(&s.metrics().await, name);
        if seen == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} never reached {want}: {seen:?}");
}

#[tokio::test]
async fn requests_past_the_open_bounds_are_refused_before_their_body_is_read() {
    // One slow node (300 ms a request). Two open requests at most, and 1 MiB of bodies.
    let s = Served::start(
        &["slow"],
        &[
            "--max-open-requests",
            "2",
            "--max-open-mib",
            "1",
            "--max-body-bytes",
            "1048576",
        ],
    )
    .await;
    let url = s.url("/v1/pipelines/slow");
    let send = |body: String| {
        let (c, url) = (s.client.clone(), url.clone());
        tokio::spawn(async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("answers");
            r.status().as_u16()
        })
    };
    // A body of 600 KiB (valid JSON: the value, then spaces) reserves 600 KiB.
    let big = |x: i64| format!("{{\"x\": {x}}}{}", " ".repeat(600 << 10));
    let first = send(big(1));
    until_gauge(&s, "mars_open_requests", 1.0).await;
    // A second 600 KiB body would pass the 1 MiB bound: refused at once, 503 + Retry-After.
    let r = s
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(big(2))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    // Its body was never read, so its connection is not kept for another request.
    assert_eq!(
        r.headers().get("connection").and_then(|v| v.to_str().ok()),
        Some("close")
    );
    let text = r.text().await.expect("a body");
    assert!(text.contains("--max-open-mib 1"), "{text}");
    // A small one fits the bytes and is the second open request.
    let second = send(r#"{"x": 3}"#.to_string());
    until_gauge(&s, "mars_open_requests", 2.0).await;
    let (status, body) = post(&s.client, &url, &json!({"x": 4})).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("--max-open-requests 2")),
        "{body}"
    );
    // Health and metrics stay open past the bound.
    let health = s
        .client
        .get(s.url("/v2/health/ready"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(first.await.expect("joins"), 200);
    assert_eq!(second.await.expect("joins"), 200);
    // The reservations come back with the answers.
    until_gauge(&s, "mars_open_requests", 0.0).await;
    assert_eq!(gauge(&s.metrics().await, "mars_open_body_bytes"), Some(0.0));
    let (status, body) = post(&s.client, &url, &json!({"x": 5})).await;
    assert_eq!(status, 200, "{body}");
    let text = s.metrics().await;
    assert!(
        text.contains(r#"mars_refusals_total{pipeline="slow",reason="open_limit"} 2"#),
        "{text}"
    );
}

/// A gRPC `ModelInfer` of `x` to the slow pipeline, with an `id` of `pad` bytes.
fn slow_infer(x: i64, pad: usize) -> proto::ModelInferRequest {
    proto::ModelInferRequest {
        model_name: "slow".into(),
        id: "p".repeat(pad),
        inputs: vec![proto::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "INT64".into(),
            shape: vec![1],
            ..Default::default()
        }],
        raw_input_contents: vec![x.to_le_bytes().to_vec()],
        ..Default::default()
    }
}

#[tokio::test]
async fn grpc_requests_count_against_the_same_open_bounds() {
    let s = Served::start(
        &["slow"],
        &[
            "--max-open-requests",
            "2",
            "--max-open-mib",
            "1",
            "--max-body-bytes",
            "1048576",
        ],
    )
    .await;
    let g = GrpcInferenceServiceClient::connect(s.grpc.clone())
        .await
        .expect("connects");
    let infer = |req: proto::ModelInferRequest| {
        let mut g = g.clone();
        tokio::spawn(async move { g.model_infer(req).await.map(|r| r.into_inner().id.len()) })
    };
    // A 600 KiB message reserves 600 KiB (its length, read from the gRPC message prefix).
    let first = infer(slow_infer(1, 600 << 10));
    until_gauge(&s, "mars_open_requests", 1.0).await;
    let held = gauge(&s.metrics().await, "mars_open_body_bytes").expect("the gauge");
    assert!(held >= (600 << 10) as f64, "{held}");
    // A second one would pass the 1 MiB bound: UNAVAILABLE at once, naming the flag.
    let e = infer(slow_infer(2, 600 << 10))
        .await
        .expect("joins")
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("--max-open-mib 1"), "{}", e.message());
    // A small one is the second open request; a third is refused on the count.
    let second = infer(slow_infer(3, 0));
    until_gauge(&s, "mars_open_requests", 2.0).await;
    let e = infer(slow_infer(4, 0))
        .await
        .expect("joins")
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(
        e.message().contains("--max-open-requests 2"),
        "{}",
        e.message()
    );
    // The bounds are the server's, not per protocol: HTTP is refused too.
    let (status, body) = post(&s.client, &s.url("/v1/pipelines/slow"), &json!({"x": 5})).await;
    assert_eq!(status, 503, "{body}");
    // Readiness and metadata stay outside the bounds.
    let mut h = g.clone();
    assert!(
        h.server_ready(proto::ServerReadyRequest {})
            .await
            .expect("answers")
            .into_inner()
            .ready
    );
    assert_eq!(first.await.expect("joins").expect("answered"), 600 << 10);
    assert_eq!(second.await.expect("joins").expect("answered"), 0);
    // The reservations come back with the answers.
    until_gauge(&s, "mars_open_requests", 0.0).await;
    assert_eq!(gauge(&s.metrics().await, "mars_open_body_bytes"), Some(0.0));
    let text = s.metrics().await;
    assert!(
        text.contains(r#"mars_refusals_total{pipeline="-",reason="open_limit"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"mars_refusals_total{pipeline="slow",reason="open_limit"} 1"#),
        "{text}"
    );
    assert_eq!(
        infer(slow_infer(6, 0))
            .await
            .expect("joins")
            .expect("answered"),
        0
    );
}
