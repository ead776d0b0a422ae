//! Exec nodes: long-lived child processes speaking the exec protocol (language.md §5).
//!
//! One [`ExecNode`] is one replica: one program started with `sh -c COMMAND` in the source's
//! folder (`NodeContext::base_dir`), in its own process group, kept running across batches.
//! Each batch is one request line on the program's stdin,
//! `{"batch": [{"id": N, "args": [...]}, ...]}`, answered by one line on its stdout,
//! `{"results": [{"id": N, "ok": ...} | {"id": N, "error": "..."}, ...]}`.
//!
//! Failures never escape as panics or hangs; each becomes per-item errors:
//! - the program exits (crash): the batch's items fail with the exit status and the last lines
//!   of its stderr; the program is started again for the next batch;
//! - the program does not answer within the node's `timeout_ms` (default 30 s): its process
//!   group is killed, the items fail with a timeout error, it is started again;
//! - a line that is not a well-formed response: the items fail, and the program is restarted
//!   (its stdout can no longer be trusted to be in step with its stdin);
//! - an item whose id is missing from the response fails alone.
//!
//! Three threads per running program keep pipes flowing: one writes requests (so a program
//! that stops reading cannot block the caller past the timeout), one reads response lines,
//! one drains stderr into `tracing` and keeps its last lines for error messages.
//!
//! This module must not know about timely or batching policy; it only implements [`Node`].

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use mars_plan::DataType;

use crate::node::{Item, Node, NodeContext, Outputs};
use crate::value::{NodeError, Value};

/// A hung program is killed after this long when the plan sets no `timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// How many lines of a program's stderr an error message quotes.
const STDERR_TAIL_LINES: usize = 8;

/// Start one replica of an exec node running `command` in `ctx.base_dir`.
///
/// The program is started at once, so a bad folder is reported when the node is built; a
/// program that exits at once is reported on its first batch (with its stderr).
pub fn spawn(ctx: &NodeContext, command: &str) -> Result<Box<dyn Node>, NodeError> {
    spawn_with_images(ctx, command, None)
}

/// [`spawn`], with the codec that turns `Image` values into encoded bytes and back (the
/// registry's `image.decode`/`image.encode`), so images can cross the pipe as `{"$base64": …}`.
pub fn spawn_with_images(
    ctx: &NodeContext,
    command: &str,
    images: Option<Arc<dyn crate::codec::ImageCodec>>,
) -> Result<Box<dyn Node>, NodeError> {
    let mut node = ExecNode::new(ctx, command)?;
    node.edge.images = images;
    Ok(Box::new(node))
}

/// One replica of an exec node. See the module documentation.
pub struct ExecNode {
    node_id: String,
    replica: u32,
    command: String,
    base_dir: PathBuf,
    timeout: Duration,
    in_types: Vec<DataType>,
    out_types: Vec<DataType>,
    /// How values cross the pipe; `$file` results resolve against the program's folder.
    edge: crate::codec::EdgeContext,
    /// The id the next item gets; unique over the replica's lifetime, across restarts.
    next_id: u64,
    /// `None` after a crash, a kill or a desync; started again on the next batch.
    process: Option<Process>,
    /// How many times the program has been started.
    starts: u64,
}

impl ExecNode {
    pub fn new(ctx: &NodeContext, command: &str) -> Result<ExecNode, NodeError> {
        let parse = |tys: &[String], what: &str| -> Result<Vec<DataType>, NodeError> {
            tys.iter()
                .map(|t| {
                    t.parse::<DataType>().map_err(|e| {
                        NodeError::new(format!(
                            "node `{}`: bad {what} type `{t}` in plan: {e}",
                            ctx.node.id
                        ))
                    })
                })
                .collect()
        };
        let mut node = ExecNode {
            node_id: ctx.node.id.clone(),
            replica: ctx.replica,
            command: command.to_string(),
            base_dir: ctx.base_dir.clone(),
            timeout: Duration::from_millis(ctx.node.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
            in_types: parse(&ctx.node.in_types, "input")?,
            out_types: parse(&ctx.node.out_types, "output")?,
            edge: crate::codec::EdgeContext {
                base_dir: Some(ctx.base_dir.clone()),
                images: None,
                allow: Vec::new(),
            },
            next_id: 1,
            process: None,
            starts: 0,
        };
        node.process = Some(node.start()?);
        Ok(node)
    }

    /// How many times the program has been started (1 until it first has to be restarted).
    pub fn starts(&self) -> u64 {
        self.starts
    }

    fn start(&mut self) -> Result<Process, NodeError> {
        self.starts += 1;
        Process::start(&self.command, &self.base_dir, &self.node_id, self.replica).map_err(|e| {
            NodeError::new(format!(
                "exec node `{}`: cannot start `{}` in {}: {e}",
                self.node_id,
                self.command,
                self.base_dir.display()
            ))
        })
    }

    /// Send a request line and wait for the response line; on any failure the process is
    /// dropped (killed) and the error applies to every item of the batch.
    fn exchange(&mut self, request: String) -> Result<String, NodeError> {
        if let Some(p) = self.process.as_mut() {
            // A program that died after answering its last batch is restarted, not blamed on
            // this batch.
            if let Ok(Some(status)) = p.child.try_wait() {
                p.reaped = true;
                tracing::warn!(node = %self.node_id, replica = self.replica, "exec program exited between batches ({}); restarting", describe(status));
                self.process = None;
            }
        }
        if self.process.is_none() {
            tracing::info!(node = %self.node_id, replica = self.replica, "starting exec program `{}`", self.command);
            self.process = Some(self.start()?);
        }
        let process = self.process.as_mut().expect("started above");
        // The writer thread only ends when the program has closed its stdin; the reader
        // reports that as end of output below.
        let _ = process.requests.send(request);
        self.receive(Instant::now() + self.timeout)
    }

    /// The next non-blank line of the program's output, by `deadline`.
    fn receive(&mut self, deadline: Instant) -> Result<String, NodeError> {
        let Some(process) = self.process.as_mut() else {
            return Err(NodeError::new(format!(
                "exec node `{}`: the program is not running",
                self.node_id
            )));
        };
        loop {
            match process.responses.recv_deadline(deadline) {
                Ok(Ok(line)) if line.trim().is_empty() => continue,
                Ok(Ok(line)) => return Ok(line),
                Ok(Err(read_error)) => {
                    let process = self.process.take().expect("running");
                    let why = process.finish(Duration::from_secs(2));
                    return Err(
                        self.crashed(&format!("reading its output failed ({read_error}); {why}"))
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let process = self.process.take().expect("running");
                    let why = process.finish(Duration::from_secs(2));
                    return Err(self.crashed(&why));
                }
                Err(RecvTimeoutError::Timeout) => {
                    let process = self.process.take().expect("running");
                    let tail = process.kill();
                    tracing::warn!(node = %self.node_id, replica = self.replica, "exec program timed out; killed");
                    return Err(NodeError::new(format!(
                        "exec node `{}`: program `{}` did not answer within {} ms; killed it (it is restarted for the next batch){}",
                        self.node_id,
                        self.command,
                        self.timeout.as_millis(),
                        stderr_suffix(&tail)
                    )));
                }
            }
        }
    }

    fn crashed(&self, why: &str) -> NodeError {
        tracing::warn!(node = %self.node_id, replica = self.replica, "exec program crashed: {why}");
        NodeError::new(format!(
            "exec node `{}`: program `{}` {why} (it is restarted for the next batch)",
            self.node_id, self.command
        ))
    }
}

impl Node for ExecNode {
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        let mut results: Vec<Option<Result<Outputs, NodeError>>> = vec![None; batch.len()];
        // Encode every item; an item that cannot be encoded fails alone and is not sent.
        let mut sent: BTreeMap<u64, usize> = BTreeMap::new();
        let mut entries = Vec::with_capacity(batch.len());
        for (index, item) in batch.iter().enumerate() {
            if item.len() != self.in_types.len() {
                results[index] = Some(Err(NodeError::new(format!(
                    "exec node `{}`: got {} arguments, the node takes {}",
                    self.node_id,
                    item.len(),
                    self.in_types.len()
                ))));
                continue;
            }
            match codec::encode_args(item, &self.edge) {
                Ok(args) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    sent.insert(id, index);
                    entries.push(serde_json::json!({"id": id, "args": args}));
                }
                Err(e) => {
                    results[index] = Some(Err(NodeError::new(format!(
                        "exec node `{}`: cannot encode arguments: {e}",
                        self.node_id
                    ))))
                }
            }
        }
        if !entries.is_empty() {
            let mut request = serde_json::json!({ "batch": entries }).to_string();
            request.push('\n');
            let deadline = Instant::now() + self.timeout;
            let first_id = sent.keys().next().copied().unwrap_or(0);
            let mut response = self.exchange(request);
            // A line answering only earlier ids (a program that answered some batch twice) is
            // stale: skip it rather than fail this batch and every one after it.
            while let Ok(line) = &response {
                match parse_response(line) {
                    Ok(answers)
                        if !answers.is_empty() && answers.iter().all(|(id, _)| *id < first_id) =>
                    {
                        tracing::warn!(node = %self.node_id, replica = self.replica, "skipping a stale response line: {}", truncate(line, 120));
                        response = self.receive(deadline);
                    }
                    _ => break,
                }
            }
            match response {
                Err(e) => {
                    for &index in sent.values() {
                        results[index] = Some(Err(e.clone()));
                    }
                }
                Ok(line) => match parse_response(&line) {
                    Err(why) => {
                        // Out of step with the program: restart it rather than guess.
                        if let Some(p) = self.process.take() {
                            p.kill();
                        }
                        let e = NodeError::new(format!(
                            "exec node `{}`: malformed response from `{}`: {why}; got: {}",
                            self.node_id,
                            self.command,
                            truncate(&line, 200)
                        ));
                        for &index in sent.values() {
                            results[index] = Some(Err(e.clone()));
                        }
                    }
                    Ok(answers) => {
                        for (id, answer) in answers {
                            let Some(&index) = sent.get(&id) else {
                                continue;
                            };
                            if results[index].is_some() {
                                continue; // a repeated id: the first answer counts
                            }
                            results[index] = Some(match answer {
                                Answer::Error(message) => Err(NodeError::new(message)),
                                Answer::Ok(json) => {
                                    codec::decode_outputs(&json, &self.out_types, &self.edge)
                                        .map_err(|e| {
                                            NodeError::new(format!(
                                                "exec node `{}`: bad result: {e}",
                                                self.node_id
                                            ))
                                        })
                                }
                            });
                        }
                    }
                },
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(NodeError::new(format!(
                        "exec node `{}`: the response of `{}` has no result for this item",
                        self.node_id, self.command
                    )))
                })
            })
            .collect()
    }
}

/// One item's answer in a response line.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Ok(serde_json::Value),
    Error(String),
}

/// Parse `{"results": [{"id": N, "ok": V} | {"id": N, "error": "..."}]}`.
fn parse_response(line: &str) -> Result<Vec<(u64, Answer)>, String> {
    let json: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let results = json
        .get("results")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| "expected an object with a `results` array".to_string())?;
    let mut answers = Vec::with_capacity(results.len());
    for (i, r) in results.iter().enumerate() {
        let id = r
            .get("id")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| format!("results[{i}] has no integer `id`"))?;
        let answer = match (r.get("ok"), r.get("error")) {
            (Some(v), None) => Answer::Ok(v.clone()),
            (None, Some(serde_json::Value::String(m))) => Answer::Error(m.clone()),
            (None, Some(other)) => Answer::Error(other.to_string()),
            (Some(_), Some(_)) => return Err(format!("results[{i}] has both `ok` and `error`")),
            (None, None) => return Err(format!("results[{i}] has neither `ok` nor `error`")),
        };
        answers.push((id, answer));
    }
    Ok(answers)
}

fn truncate(s: &str, max: usize) -> String {
    let s = s.trim_end();
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn stderr_suffix(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last lines of its stderr:\n{}", tail.join("\n"))
    }
}

/// A running program and the threads that serve its pipes.
struct Process {
    child: Child,
    requests: Sender<String>,
    responses: Receiver<std::io::Result<String>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_done: Receiver<()>,
    threads: Vec<JoinHandle<()>>,
    /// Set once the child has been waited for; its pid must not be signalled after that.
    reaped: bool,
}

impl Process {
    fn start(
        command: &str,
        dir: &std::path::Path,
        node_id: &str,
        replica: u32,
    ) -> std::io::Result<Process> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(dir)
            .env("MARS_NODE_ID", node_id)
            .env("MARS_REPLICA", replica.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a kill reaches the program and not only `sh`.
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let label = format!("{node_id}#{replica}");

        let (requests, request_rx) = crossbeam_channel::unbounded::<String>();
        let writer = std::thread::Builder::new()
            .name(format!("exec-w {label}"))
            .spawn(move || write_requests(stdin, request_rx))?;

        let (response_tx, responses) = crossbeam_channel::unbounded();
        let reader = std::thread::Builder::new()
            .name(format!("exec-r {label}"))
            .spawn(move || {
                let mut out = BufReader::new(stdout);
                loop {
                    let mut line = String::new();
                    match out.read_line(&mut line) {
                        Ok(0) => return, // end of output: dropping the sender tells the node
                        Ok(_) => {
                            if response_tx.send(Ok(line)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = response_tx.send(Err(e));
                            return;
                        }
                    }
                }
            })?;

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (done_tx, stderr_done) = crossbeam_channel::bounded(1);
        let tail = Arc::clone(&stderr_tail);
        let stderr_label = label.clone();
        let drainer = std::thread::Builder::new().name(format!("exec-e {label}")).spawn(move || {
            let mut err = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match err.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        tracing::info!(target: "mars::exec::stderr", node = %stderr_label, "{line}");
                        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                        if t.len() == STDERR_TAIL_LINES {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
            }
            let _ = done_tx.send(());
        })?;

        Ok(Process {
            child,
            requests,
            responses,
            stderr_tail,
            stderr_done,
            threads: vec![writer, reader, drainer],
            reaped: false,
        })
    }

    /// The program has closed its output: wait (up to `grace`) for it to exit, and describe how
    /// it ended, with the last lines of its stderr.
    fn finish(mut self, grace: Duration) -> String {
        let deadline = Instant::now() + grace;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped = true;
                    break Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => break None,
            }
        };
        let what = match status {
            Some(status) => format!("exited ({})", describe(status)),
            None => "closed its output without exiting (killed it)".to_string(),
        };
        // Let the drainer read what the program wrote before it died.
        let _ = self.stderr_done.recv_timeout(Duration::from_millis(500));
        let tail = self.tail();
        format!("{what}{}", stderr_suffix(&tail))
    }

    /// Kill the whole process group and reap it; returns the last lines of its stderr.
    fn kill(mut self) -> Vec<String> {
        self.kill_group();
        let _ = self.stderr_done.recv_timeout(Duration::from_millis(500));
        self.tail()
    }

    fn tail(&self) -> Vec<String> {
        self.stderr_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn kill_group(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group we created.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // Closing stdin asks a well-behaved program to exit; give it a moment, then kill.
        let (closed, _) = crossbeam_channel::bounded(0);
        self.requests = closed;
        let deadline = Instant::now() + Duration::from_millis(200);
        let exited = loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break true,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => break false,
            }
        };
        // A program that exited on its own is reaped, and its pid may be reused at once: only
        // a live one has its group signalled.
        if !exited {
            self.kill_group();
        }
        // The threads end once the pipes close; they are detached rather than joined so that
        // a grandchild holding a pipe open cannot stall the drop.
        self.threads.clear();
    }
}

fn write_requests(mut stdin: ChildStdin, requests: Receiver<String>) {
    for line in requests {
        if stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .is_err()
        {
            return; // the program closed its stdin; the reader sees it end
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// The JSON encoding of values exchanged with exec programs: that of the run's edges
/// (language.md §6, [`crate::codec`]), with `$file` paths relative to the program's folder.
mod codec {
    use super::*;
    use crate::codec::{decode, encode, EdgeContext};

    pub fn encode_args(item: &[Value], cx: &EdgeContext) -> Result<serde_json::Value, String> {
        item.iter()
            .map(|v| encode(v, cx))
            .collect::<Result<Vec<_>, _>>()
            .map(serde_json::Value::Array)
    }

    /// `ok` of a result: the value itself for one output port, an array of them for several.
    pub fn decode_outputs(
        json: &serde_json::Value,
        types: &[DataType],
        cx: &EdgeContext,
    ) -> Result<Vec<Value>, String> {
        match types {
            [one] => Ok(vec![
                decode(json, one, cx).map_err(|e| format!("output: {e}"))?
            ]),
            many => {
                let arr = json.as_array().ok_or_else(|| {
                    format!(
                        "expected an array of {} outputs, got `{}`",
                        many.len(),
                        truncate(&json.to_string(), 60)
                    )
                })?;
                if arr.len() != many.len() {
                    return Err(format!(
                        "expected {} outputs, got {}",
                        many.len(),
                        arr.len()
                    ));
                }
                arr.iter()
                    .zip(many)
                    .enumerate()
                    .map(|(i, (j, t))| decode(j, t, cx).map_err(|e| format!("output {i}: {e}")))
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mars_plan::{BatchPolicy, BatchSpec, Device, Implementation, NodePrediction, PlanNode};

    fn ctx(
        command: &str,
        in_types: &[&str],
        out_types: &[&str],
        timeout_ms: Option<u64>,
    ) -> NodeContext {
        NodeContext {
            node: PlanNode {
                id: "ext".into(),
                kind: "ext".into(),
                implementation: Implementation {
                    builtin: None,
                    exec: Some(command.into()),
                    model: None,
                },
                map_over: None,
                args: vec![],
                params: Default::default(),
                in_types: in_types.iter().map(|s| s.to_string()).collect(),
                out_types: out_types.iter().map(|s| s.to_string()).collect(),
                device: Device::Cpu,
                worker: "w0".into(),
                gpu: None,
                replicas: 1,
                batch: BatchSpec {
                    policy: BatchPolicy::Dynamic,
                    max: 8,
                    wait_ms: 1.0,
                },
                timeout_ms,
                predicted: NodePrediction {
                    latency_ms: 0.0,
                    p99_ms: 0.0,
                    throughput: 0.0,
                    utilization: 0.0,
                },
            },
            replica: 0,
            base_dir: std::env::temp_dir(),
        }
    }

    /// A shell program answering each request line with a fixed response line.
    fn canned(response: &str) -> String {
        format!("while read -r line; do echo '{response}'; done")
    }

    fn texts(n: usize) -> Vec<Item> {
        (0..n).map(|i| vec![Value::Text(format!("t{i}"))]).collect()
    }

    #[test]
    fn answers_map_to_items_by_id() {
        // Ids start at 1 for a fresh replica; the answer lists them out of order.
        let cmd = canned(r#"{"results": [{"id": 2, "error": "no"}, {"id": 1, "ok": "one"}]}"#);
        let mut node = ExecNode::new(&ctx(&cmd, &["Text"], &["Text"], None), &cmd).expect("starts");
        let out = node.run_batch(texts(3));
        assert_eq!(out[0], Ok(vec![Value::Text("one".into())]));
        assert_eq!(out[1], Err(NodeError::new("no")));
        let missing = out[2].as_ref().expect_err("item 3 has no answer");
        assert!(
            missing.message.contains("no result for this item"),
            "{}",
            missing.message
        );
        assert_eq!(node.starts(), 1);
    }

    #[test]
    fn the_program_knows_its_node_and_replica() {
        let cmd = r#"while read -r line; do echo "{\"results\": [{\"id\": 1, \"ok\": \"$MARS_NODE_ID/$MARS_REPLICA\"}]}"; done"#;
        let mut c = ctx(cmd, &["Text"], &["Text"], None);
        c.replica = 3;
        let mut node = ExecNode::new(&c, cmd).expect("starts");
        assert_eq!(
            node.run_batch(texts(1)),
            vec![Ok(vec![Value::Text("ext/3".into())])]
        );
    }

    #[test]
    fn a_stale_response_line_is_skipped() {
        // Answers the first request twice, then every request once, echoing its ids.
        let cmd = r#"python3 -c '
import json, sys
first = True
for line in sys.stdin:
    ids = [i["id"] for i in json.loads(line)["batch"]]
    out = json.dumps({"results": [{"id": i, "ok": "x"} for i in ids]})
    print(out, flush=True)
    if first:
        print(out, flush=True)
        first = False
'"#;
        let mut node = ExecNode::new(&ctx(cmd, &["Text"], &["Text"], None), cmd).expect("starts");
        for _ in 0..3 {
            let out = node.run_batch(texts(2));
            assert_eq!(out, vec![Ok(vec![Value::Text("x".into())]); 2]);
        }
        assert_eq!(node.starts(), 1);
    }

    #[test]
    fn malformed_response_fails_batch_and_restarts() {
        let cmd = canned("this is not json");
        let mut node = ExecNode::new(&ctx(&cmd, &["Text"], &["Text"], None), &cmd).expect("starts");
        let out = node.run_batch(texts(2));
        for r in &out {
            let e = r.as_ref().expect_err("fails");
            assert!(e.message.contains("malformed response"), "{}", e.message);
        }
        node.run_batch(texts(1));
        assert_eq!(node.starts(), 2);
    }

    #[test]
    fn crash_reports_status_and_stderr() {
        let cmd = "read -r line; echo 'boom: bad input' >&2; exit 3";
        let mut node = ExecNode::new(&ctx(cmd, &["Text"], &["Text"], None), cmd).expect("starts");
        let out = node.run_batch(texts(2));
        for r in &out {
            let e = r.as_ref().expect_err("fails");
            assert!(e.message.contains("exit status 3"), "{}", e.message);
            assert!(e.message.contains("boom: bad input"), "{}", e.message);
        }
        // Restarted for the next batch, and crashes the same way.
        let again = node.run_batch(texts(1));
        assert!(again[0].is_err());
        assert_eq!(node.starts(), 2);
    }

    #[test]
    fn hung_program_is_killed_after_timeout() {
        let cmd = "sleep 1000";
        let mut node =
            ExecNode::new(&ctx(cmd, &["Text"], &["Text"], Some(200)), cmd).expect("starts");
        let out = node.run_batch(texts(1));
        let e = out[0].as_ref().expect_err("times out");
        assert!(
            e.message.contains("did not answer within 200 ms"),
            "{}",
            e.message
        );
    }

    #[test]
    fn empty_batch_sends_nothing() {
        let cmd = "exit 1";
        let mut node = ExecNode::new(&ctx(cmd, &["Text"], &["Text"], None), cmd).expect("starts");
        assert!(node.run_batch(Vec::new()).is_empty());
        assert_eq!(node.starts(), 1);
    }

    #[test]
    fn multi_output_ok_is_an_array() {
        let cmd = canned(r#"{"results": [{"id": 1, "ok": ["a", 2]}, {"id": 2, "ok": ["b"]}]}"#);
        let mut node =
            ExecNode::new(&ctx(&cmd, &["Text"], &["Text", "Int"], None), &cmd).expect("starts");
        let out = node.run_batch(texts(2));
        assert_eq!(out[0], Ok(vec![Value::Text("a".into()), Value::Int(2)]));
        assert!(out[1]
            .as_ref()
            .expect_err("wrong arity")
            .message
            .contains("expected 2 outputs"));
    }

    #[test]
    fn file_results_resolve_in_the_programs_folder() {
        let dir = std::env::temp_dir().join(format!("mars-exec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp folder");
        std::fs::write(dir.join("out.bin"), [1u8, 2, 3]).expect("write");
        let cmd = canned(r#"{"results": [{"id": 1, "ok": {"$file": "out.bin"}}]}"#);
        let mut c = ctx(&cmd, &["Text"], &["Bytes"], None);
        c.base_dir = dir.clone();
        let mut node = ExecNode::new(&c, &cmd).expect("starts");
        let out = node.run_batch(texts(1));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(out, vec![Ok(vec![Value::Bytes(Arc::new(vec![1, 2, 3]))])]);
    }
}
