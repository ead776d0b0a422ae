//! Exec nodes: long-lived child processes speaking the exec protocol (SPEC 5.1).
//!
//! One [`ExecNode`] is one replica: one program started with `sh -c COMMAND` in the source's
//! folder (`NodeContext::base_dir`), in its own process group, kept running across batches.
//! Each batch is one request line on the program's stdin,
//! `{"batch": [{"id": N, "args": [...]}, ...]}`, answered by one line on its stdout,
//! `{"results": [{"id": N, "ok": ...} | {"id": N, "error": "..."}, ...]}`.
//!
//! Failures never escape as panics or hangs; each becomes per-item errors:
//! - the program exits, or does not answer within the node's `timeout_ms` (default 30 s;
//!   the whole answer must arrive by then), or writes a line longer than
//!   [`MAX_RESPONSE_BYTES`]: its process group is killed, and the batch's items are run again
//!   one at a time on a restarted program; an item that makes it fail again fails alone,
//!   saying it crashed the program (exit status and stderr tail). Each item is retried at
//!   most once;
//! - a line that is not a well-formed response: the items fail, and the program is restarted
//!   (its stdout can no longer be trusted to be in step with its stdin);
//! - an item whose id is missing from the response fails alone.
//!
//! Three threads per running program keep pipes flowing (see [`process`]).
//!
//! This module must not know about timely or batching policy; it only implements [`Node`].

mod process;
mod protocol;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use mars_plan::DataType;

use crate::node::{Item, Node, NodeContext, Outputs};
use crate::value::NodeError;
use process::{stderr_suffix, Process, ReadError};
use protocol::{truncate, Answer};

pub use process::{kill_all, running, MAX_RESPONSE_BYTES};

/// A hung program is killed after this long when the plan sets no `timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

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

/// How one request to the program went.
enum Attempt {
    /// A response line (parsed), its answers by id.
    Answered(Vec<(u64, Answer)>),
    /// The program failed the whole request. `poison`: it died, hung or flooded — a failure
    /// one item may have caused, so its items are worth running again one at a time.
    Failed { error: NodeError, poison: bool },
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

    /// Send one request for `entries` and read its response line, by one deadline for the
    /// whole answer. On any failure the program is killed (restarted for the next request).
    fn attempt(&mut self, entries: &[(u64, &serde_json::Value)]) -> Attempt {
        if let Some(p) = self.process.as_ref() {
            // A program that died after answering its last request is restarted, not blamed
            // on this one.
            if let Some(ended) = p.ended() {
                tracing::warn!(node = %self.node_id, replica = self.replica, "exec program exited between batches ({ended}); restarting");
                if let Some(p) = self.process.take() {
                    p.kill();
                }
            }
        }
        if self.process.is_none() {
            tracing::info!(node = %self.node_id, replica = self.replica, "starting exec program `{}`", self.command);
            match self.start() {
                Ok(p) => self.process = Some(p),
                Err(error) => {
                    return Attempt::Failed {
                        error,
                        poison: false,
                    }
                }
            }
        }
        let Some(process) = self.process.as_mut() else {
            unreachable!("started above")
        };
        let deadline = Instant::now() + self.timeout;
        let seq = process.send(protocol::request_line(entries));
        let first_id = entries.first().map_or(0, |e| e.0);
        loop {
            let line = match self.receive(deadline, seq) {
                Ok(line) => line,
                Err(failed) => return failed,
            };
            match protocol::parse_response(&line) {
                // A line answering only earlier ids (a program that answered some batch
                // twice) is stale: skip it rather than fail this batch and every one after.
                Ok(answers)
                    if !answers.is_empty() && answers.iter().all(|(id, _)| *id < first_id) =>
                {
                    tracing::warn!(node = %self.node_id, replica = self.replica, "skipping a stale response line: {}", truncate(&line, 120));
                }
                Ok(answers) => {
                    if let Some(p) = self.process.as_mut() {
                        p.answered = true;
                    }
                    return Attempt::Answered(answers);
                }
                Err(why) => {
                    // Out of step with the program: restart it rather than guess.
                    if let Some(p) = self.process.take() {
                        p.kill();
                    }
                    return Attempt::Failed {
                        error: NodeError::new(format!(
                            "exec node `{}`: malformed response from `{}`: {why}; got: {}",
                            self.node_id,
                            self.command,
                            truncate(&line, 200)
                        )),
                        poison: false,
                    };
                }
            }
        }
    }

    /// The next line that can answer request `seq`, by `deadline`. Skipped: blank lines, lines
    /// the program wrote before the request was sent, and, before its first response, lines
    /// that are not responses (start-up chatter such as `loading model…`).
    fn receive(&mut self, deadline: Instant, seq: u64) -> Result<String, Attempt> {
        let Some(process) = self.process.as_mut() else {
            return Err(Attempt::Failed {
                error: NodeError::new(format!(
                    "exec node `{}`: the program is not running",
                    self.node_id
                )),
                poison: false,
            });
        };
        loop {
            // Checked before every line, so that a program writing endless lines still times
            // out (a receive with lines waiting never reaches its deadline).
            let received = if Instant::now() >= deadline {
                Err(RecvTimeoutError::Timeout)
            } else {
                process.responses.recv_deadline(deadline)
            };
            match received {
                Ok(Ok(line)) => {
                    let text = line.text.trim();
                    if text.is_empty() {
                        continue;
                    }
                    if line.after_requests < seq {
                        tracing::warn!(node = %self.node_id, replica = self.replica, "skipping output written before the request: {}", truncate(text, 120));
                        continue;
                    }
                    if !process.answered && !protocol::looks_like_response(text) {
                        tracing::warn!(node = %self.node_id, replica = self.replica, "skipping start-up output: {}", truncate(text, 120));
                        continue;
                    }
                    return Ok(line.text);
                }
                Ok(Err(ReadError::TooLong)) => {
                    let process = self.process.take().expect("running");
                    let tail = process.kill();
                    return Err(self.failed(
                        &format!(
                            "wrote a response line longer than {} MiB (killed it){}",
                            MAX_RESPONSE_BYTES >> 20,
                            stderr_suffix(&tail)
                        ),
                        true,
                    ));
                }
                Ok(Err(ReadError::Io(e))) => {
                    let process = self.process.take().expect("running");
                    let why = process.finish(Duration::from_secs(2));
                    return Err(
                        self.failed(&format!("reading its output failed ({e}); {why}"), true)
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let process = self.process.take().expect("running");
                    let why = process.finish(Duration::from_secs(2));
                    return Err(self.failed(&why, true));
                }
                Err(RecvTimeoutError::Timeout) => {
                    let process = self.process.take().expect("running");
                    let tail = process.kill();
                    tracing::warn!(node = %self.node_id, replica = self.replica, "exec program timed out; killed");
                    return Err(self.failed(
                        &format!(
                            "did not answer within {} ms; killed it{}",
                            self.timeout.as_millis(),
                            stderr_suffix(&tail)
                        ),
                        true,
                    ));
                }
            }
        }
    }

    fn failed(&self, why: &str, poison: bool) -> Attempt {
        tracing::warn!(node = %self.node_id, replica = self.replica, "exec program failed: {why}");
        Attempt::Failed {
            error: NodeError::new(format!(
                "exec node `{}`: program `{}` {why} (it is restarted)",
                self.node_id, self.command
            )),
            poison,
        }
    }

    /// Run the items `indices` (of `args`) in one request; fills `results` for each of them.
    /// Returns the failure when the program failed the whole request.
    fn run_request(
        &mut self,
        indices: &[usize],
        args: &[Option<serde_json::Value>],
        results: &mut [Option<Result<Outputs, NodeError>>],
    ) -> Option<(NodeError, bool)> {
        let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
        let mut entries = Vec::with_capacity(indices.len());
        for &index in indices {
            if let Some(a) = &args[index] {
                let id = self.next_id;
                self.next_id += 1;
                ids.insert(id, index);
                entries.push((id, a));
            }
        }
        match self.attempt(&entries) {
            Attempt::Failed { error, poison } => Some((error, poison)),
            Attempt::Answered(answers) => {
                for (id, answer) in answers {
                    let Some(&index) = ids.get(&id) else {
                        continue;
                    };
                    if results[index].is_some() {
                        continue; // a repeated id: the first answer counts
                    }
                    results[index] = Some(match answer {
                        Answer::Error(message) => Err(NodeError::new(message)),
                        Answer::Ok(json) => protocol::decode_outputs(
                            &json,
                            &self.out_types,
                            &self.edge,
                        )
                        .map_err(|e| {
                            NodeError::new(format!("exec node `{}`: bad result: {e}", self.node_id))
                        }),
                    });
                }
                None
            }
        }
    }
}

impl Node for ExecNode {
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        let mut results: Vec<Option<Result<Outputs, NodeError>>> = vec![None; batch.len()];
        // Encode every item; an item that cannot be encoded fails alone and is not sent.
        let mut args: Vec<Option<serde_json::Value>> = Vec::with_capacity(batch.len());
        let mut sent = Vec::with_capacity(batch.len());
        for (index, item) in batch.iter().enumerate() {
            let encoded = if item.len() != self.in_types.len() {
                Err(format!(
                    "got {} arguments, the node takes {}",
                    item.len(),
                    self.in_types.len()
                ))
            } else {
                protocol::encode_args(item, &self.edge)
                    .map_err(|e| format!("cannot encode arguments: {e}"))
            };
            match encoded {
                Ok(a) => {
                    args.push(Some(a));
                    sent.push(index);
                }
                Err(e) => {
                    args.push(None);
                    results[index] = Some(Err(NodeError::new(format!(
                        "exec node `{}`: {e}",
                        self.node_id
                    ))));
                }
            }
        }
        if !sent.is_empty() {
            match self.run_request(&sent, &args, &mut results) {
                None => {}
                Some((error, false)) => {
                    for &index in &sent {
                        results[index] = Some(Err(error.clone()));
                    }
                }
                // Poison isolation: the program died or hung on this request. Run each item
                // again alone on a restarted program; only an item that fails it again fails.
                Some((_, true)) => {
                    tracing::warn!(node = %self.node_id, replica = self.replica, "running the {} items of the failed batch again one at a time", sent.len());
                    for &index in &sent {
                        match self.run_request(&[index], &args, &mut results) {
                            None => {}
                            Some((error, true)) => {
                                results[index] = Some(Err(NodeError::new(format!(
                                    "exec node `{}`: this item crashed the program again when run alone (after its batch of {} failed): {}",
                                    self.node_id,
                                    sent.len(),
                                    error
                                        .message
                                        .strip_prefix(&format!("exec node `{}`: ", self.node_id))
                                        .unwrap_or(&error.message)
                                ))));
                            }
                            Some((error, false)) => results[index] = Some(Err(error)),
                        }
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;
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
                replica_range: None,
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
        let cmd = canned(r#"{"results": "oops"}"#);
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
            assert!(
                e.message.contains("crashed the program again"),
                "{}",
                e.message
            );
        }
        // The batch failed, then each item alone: three starts.
        assert_eq!(node.starts(), 3);
    }

    /// A program that exits on items containing "crash" and echoes the others.
    const CRASH_ON_CRASH: &str = r#"python3 -c '
import json, sys
for line in sys.stdin:
    batch = json.loads(line)["batch"]
    if any("crash" in i["args"][0] for i in batch):
        sys.stderr.write("poisoned\n"); sys.exit(9)
    print(json.dumps({"results": [{"id": i["id"], "ok": i["args"][0]} for i in batch]}), flush=True)
'"#;

    #[test]
    fn a_poison_item_fails_alone_and_its_batch_mates_succeed() {
        let mut node = ExecNode::new(
            &ctx(CRASH_ON_CRASH, &["Text"], &["Text"], None),
            CRASH_ON_CRASH,
        )
        .expect("starts");
        let batch: Vec<Item> = ["a", "b", "crash me", "c"]
            .iter()
            .map(|s| vec![Value::Text(s.to_string())])
            .collect();
        let out = node.run_batch(batch);
        assert_eq!(out[0], Ok(vec![Value::Text("a".into())]));
        assert_eq!(out[1], Ok(vec![Value::Text("b".into())]));
        assert_eq!(out[3], Ok(vec![Value::Text("c".into())]));
        let e = out[2].as_ref().expect_err("the poison item fails");
        assert!(e.message.contains("crashed the program"), "{}", e.message);
        assert!(e.message.contains("exit status 9"), "{}", e.message);
        assert!(e.message.contains("poisoned"), "{}", e.message);
        // The next batch runs normally.
        assert_eq!(
            node.run_batch(texts(2))
                .iter()
                .filter(|r| r.is_ok())
                .count(),
            2
        );
    }

    #[test]
    fn endless_blank_or_stale_lines_still_time_out() {
        for flood in [
            "while :; do echo; done",
            r#"read -r line; while :; do echo '{"results": [{"id": 0, "ok": "old"}]}'; done"#,
        ] {
            let mut node =
                ExecNode::new(&ctx(flood, &["Text"], &["Text"], Some(300)), flood).expect("starts");
            let out = node.run_batch(texts(1));
            let e = out[0].as_ref().expect_err("times out");
            assert!(
                e.message.contains("did not answer within 300 ms"),
                "{flood}: {}",
                e.message
            );
        }
    }

    #[test]
    fn an_over_long_response_line_fails_the_batch() {
        let cmd = format!(
            "read -r line; head -c {} /dev/zero | tr '\\0' x",
            MAX_RESPONSE_BYTES + 1024
        );
        let mut node = ExecNode::new(&ctx(&cmd, &["Text"], &["Text"], None), &cmd).expect("starts");
        let out = node.run_batch(texts(1));
        let e = out[0].as_ref().expect_err("too long");
        assert!(e.message.contains("longer than 64 MiB"), "{}", e.message);
    }

    #[test]
    fn start_up_output_is_not_an_answer() {
        // Chatter before the first response, and a response-shaped line written before the
        // first request was sent, are both skipped.
        let cmd = r#"echo 'loading model...'; echo '{"results": [{"id": 1, "ok": "early"}]}'; while read -r line; do echo '{"results": [{"id": 1, "ok": "answer"}]}'; done"#;
        let mut node = ExecNode::new(&ctx(cmd, &["Text"], &["Text"], None), cmd).expect("starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while node.process.as_ref().is_some_and(|p| p.responses.len() < 2)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            node.run_batch(texts(1)),
            vec![Ok(vec![Value::Text("answer".into())])]
        );
        assert_eq!(node.starts(), 1);
    }

    #[test]
    fn a_program_that_closes_its_stdout_is_noticed_at_once() {
        // A simple command replaces the shell, so nothing else holds the pipe.
        let cmd = r#"python3 -c 'import os, time; os.close(1); time.sleep(1000)'"#;
        let mut node =
            ExecNode::new(&ctx(cmd, &["Text"], &["Text"], Some(600_000)), cmd).expect("starts");
        let out = node.run_batch(texts(1));
        let e = out[0].as_ref().expect_err("fails");
        assert!(e.message.contains("closed its output"), "{}", e.message);
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
