//! What the `marsc serve` end-to-end tests share: a served process on loopback ports, and
//! small request helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value as Json;

pub fn plan(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/serve")
        .join(format!("{name}.plan.yaml"))
}

/// A running `marsc serve`, killed when dropped.
pub struct Served {
    pub child: Child,
    pub http: String,
    pub grpc: String,
    pub client: reqwest::Client,
}

impl Served {
    /// Serve `plans` and wait until ready.
    pub async fn start(plans: &[&str], extra: &[&str]) -> Served {
        let s = Served::spawn(plans, extra, "http", reqwest::Client::new());
        s.wait_ready().await;
        s
    }

    /// Serve `plans` and return once the listeners are bound (before readiness); requests go
    /// to `scheme://` with `client`.
    pub fn spawn(plans: &[&str], extra: &[&str], scheme: &str, client: reqwest::Client) -> Served {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("marsc"));
        cmd.arg("serve");
        for p in plans {
            cmd.arg(plan(p));
        }
        cmd.args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .args(extra)
            .env("MARS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("marsc starts");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("marsc serve announces its addresses");
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k}= in {line:?}"))
                .to_string()
        };
        Served {
            http: format!("{scheme}://{}", field("http")),
            grpc: format!("{scheme}://{}", field("grpc")),
            child,
            client,
        }
    }

    /// Poll readiness: it turns true once every model is loaded and warmed up.
    pub async fn wait_ready(&self) {
        for _ in 0..600 {
            if let Ok(r) = self.client.get(self.url("/v2/health/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server never became ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok);
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

/// The resident set size of process `pid` in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn post(c: &reqwest::Client, url: &str, body: &Json) -> (u16, Json) {
    let r = c
        .post(url)
        .json(body)
        .send()
        .await
        .expect("the server answers");
    let status = r.status().as_u16();
    let text = r.text().await.expect("a body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Json::String(text)),
    )
}

pub async fn post_raw(c: &reqwest::Client, url: &str, body: &'static str) -> (u16, Json) {
    let r = c
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the server answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Json::Null))
}
