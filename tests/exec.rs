//! Exec nodes against real child processes: the Python programs in `tests/exec/` speak the exec
//! protocol (language.md §5), and misbehave on request (crash, hang, garbage, stderr floods).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mars_plan::{BatchPolicy, BatchSpec, Device, Implementation, NodePrediction, PlanNode};
use mars_runtime::{Item, Node, NodeContext, NodeError, Outputs, Registry, Value};

fn programs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/exec")
}

fn context(
    command: &str,
    in_types: &[&str],
    out_types: &[&str],
    timeout_ms: Option<u64>,
) -> NodeContext {
    NodeContext {
        node: PlanNode {
            id: "external".into(),
            kind: "external".into(),
            implementation: Implementation {
                builtin: None,
                exec: Some(command.into()),
                model: None,
            },
            map_over: None,
            args: vec![],
            params: BTreeMap::new(),
            in_types: in_types.iter().map(|s| s.to_string()).collect(),
            out_types: out_types.iter().map(|s| s.to_string()).collect(),
            device: Device::Cpu,
            worker: "w0".into(),
            gpu: None,
            replicas: 1,
            replica_range: None,
            batch: BatchSpec {
                policy: BatchPolicy::Dynamic,
                max: 64,
                wait_ms: 1.0,
            },
            timeout_ms,
            predicted: NodePrediction {
                latency_ms: 1.0,
                p99_ms: 1.0,
                throughput: 1.0,
                utilization: 0.0,
            },
        },
        replica: 0,
        // Commands are relative to the source's folder, as in a real plan.
        base_dir: programs(),
    }
}

/// Build the node through the registry, as the runtime does.
fn exec_node(
    command: &str,
    in_types: &[&str],
    out_types: &[&str],
    timeout_ms: Option<u64>,
) -> Box<dyn Node> {
    Registry::new()
        .instantiate(&context(command, in_types, out_types, timeout_ms))
        .expect("the exec node starts")
}

fn texts(words: &[&str]) -> Vec<Item> {
    words
        .iter()
        .map(|w| vec![Value::Text(w.to_string())])
        .collect()
}

fn ok_texts(out: &[Result<Outputs, NodeError>]) -> Vec<Option<String>> {
    out.iter()
        .map(|r| match r {
            Ok(v) => match v.as_slice() {
                [Value::Text(s)] => Some(s.clone()),
                other => panic!("unexpected outputs {other:?}"),
            },
            Err(_) => None,
        })
        .collect()
}

fn message(r: &Result<Outputs, NodeError>) -> &str {
    &r.as_ref().expect_err("an error").message
}

#[test]
fn echo_round_trips_every_encoding() {
    let mut node = exec_node("python3 echo.py", &["Text"], &["Text"], None);
    let out = node.run_batch(texts(&["hello", "wörld", ""]));
    assert_eq!(
        ok_texts(&out),
        vec![
            Some("hello".into()),
            Some("wörld".into()),
            Some(String::new())
        ]
    );

    for (ty, value) in [
        ("Int", Value::Int(-42)),
        ("Float", Value::Float(2.5)),
        ("Bool", Value::Bool(true)),
        ("List<Int>", Value::List(vec![Value::Int(1), Value::Int(2)])),
        ("Bytes", Value::Bytes(Arc::new((0..=255).collect()))),
        ("Json", Value::Json(serde_json::json!({"a": [1, null]}))),
    ] {
        let mut node = exec_node("python3 echo.py", &[ty], &[ty], None);
        let out = node.run_batch(vec![vec![value.clone()]]);
        assert_eq!(out, vec![Ok(vec![value])], "{ty}");
    }
}

#[test]
fn large_batches_keep_item_order() {
    let mut node = exec_node("python3 echo.py", &["Int"], &["Int"], None);
    let batch: Vec<Item> = (0..2000).map(|i| vec![Value::Int(i)]).collect();
    let out = node.run_batch(batch.clone());
    assert_eq!(out, batch.into_iter().map(Ok).collect::<Vec<_>>());
}

#[test]
fn several_outputs_come_as_an_array() {
    let mut node = exec_node("python3 stats.py", &["Text"], &["Int", "List<Text>"], None);
    let out = node.run_batch(texts(&["a bc"]));
    assert_eq!(
        out,
        vec![Ok(vec![
            Value::Int(4),
            Value::List(vec![Value::Text("a".into()), Value::Text("bc".into())])
        ])]
    );
}

#[test]
fn item_errors_and_missing_ids_fail_only_those_items() {
    let mut node = exec_node("python3 echo.py", &["Text"], &["Text"], None);
    let out = node.run_batch(texts(&["a", "error", "skip", "b"]));
    assert_eq!(
        ok_texts(&out),
        vec![Some("a".into()), None, None, Some("b".into())]
    );
    assert_eq!(message(&out[1]), "asked to fail");
    assert!(
        message(&out[2]).contains("no result for this item"),
        "{}",
        message(&out[2])
    );
}

#[test]
fn a_crash_fails_only_the_item_that_causes_it_then_restarts() {
    let mut node = exec_node("python3 echo.py", &["Text"], &["Text"], None);
    assert_eq!(
        ok_texts(&node.run_batch(texts(&["before"]))),
        vec![Some("before".into())]
    );
    // The batch is run again one item at a time: only "crash" crashes the program again.
    let out = node.run_batch(texts(&["a", "crash", "b"]));
    assert_eq!(
        ok_texts(&out),
        vec![Some("a".into()), None, Some("b".into())]
    );
    let m = message(&out[1]);
    assert!(m.contains("crashed the program again"), "{m}");
    assert!(m.contains("exit status 7"), "{m}");
    assert!(m.contains("crashing on purpose"), "{m}");
    assert!(m.contains("python3 echo.py"), "{m}");
    assert_eq!(
        ok_texts(&node.run_batch(texts(&["after"]))),
        vec![Some("after".into())]
    );
}

#[test]
fn hung_program_is_killed_after_the_timeout_then_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let command = format!("python3 echo.py {}", pid_file.display());
    let mut node = exec_node(&command, &["Text"], &["Text"], Some(3000));
    let first = node.run_batch(texts(&["warm"]));
    assert_eq!(ok_texts(&first), vec![Some("warm".into())]);
    let hung_pid = std::fs::read_to_string(&pid_file).expect("pid written");

    let out = node.run_batch(texts(&["x", "hang"]));
    // "x" succeeds when run again alone; "hang" times out again.
    assert_eq!(ok_texts(&out)[0], Some("x".into()));
    assert!(
        message(&out[1]).contains("did not answer within 3000 ms"),
        "{}",
        message(&out[1])
    );
    assert!(
        gone(&hung_pid),
        "the hung program {hung_pid} is still running"
    );
    assert_eq!(
        ok_texts(&node.run_batch(texts(&["again"]))),
        vec![Some("again".into())]
    );
}

/// Whether a process has exited (absent, or a zombie awaiting its new parent's reaping).
/// SIGKILL is asynchronous, so allow it a bounded moment to take effect.
fn gone(pid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string))
            });
        match state.as_deref() {
            None | Some("Z") | Some("X") => return true,
            Some(_) if Instant::now() > deadline => return false,
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn dropping_the_node_stops_the_program() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let mut node = exec_node(
        &format!("python3 echo.py {}", pid_file.display()),
        &["Text"],
        &["Text"],
        None,
    );
    node.run_batch(texts(&["hi"]));
    let pid = std::fs::read_to_string(&pid_file).expect("pid written");
    drop(node);
    assert!(gone(&pid), "program {pid} outlived its node");
}

#[test]
fn a_stderr_flood_does_not_deadlock() {
    let mut node = exec_node("python3 echo.py", &["Text"], &["Text"], Some(20_000));
    for _ in 0..4 {
        let out = node.run_batch(texts(&["noise", "quiet"]));
        assert_eq!(
            ok_texts(&out),
            vec![Some("noise".into()), Some("quiet".into())]
        );
    }
}

#[test]
fn garbage_output_fails_the_batch_and_resyncs() {
    let mut node = exec_node("python3 echo.py", &["Text"], &["Text"], None);
    // After its first response (before it, non-response lines are start-up output).
    node.run_batch(texts(&["warm"]));
    let out = node.run_batch(texts(&["a", "garbage"]));
    for r in &out {
        assert!(message(r).contains("malformed response"), "{}", message(r));
        assert!(
            message(r).contains("this is not a response"),
            "{}",
            message(r)
        );
    }
    assert_eq!(
        ok_texts(&node.run_batch(texts(&["b"]))),
        vec![Some("b".into())]
    );
}

#[test]
fn a_missing_program_is_reported_with_the_shells_message() {
    let mut node = exec_node("./no-such-program", &["Text"], &["Text"], None);
    let out = node.run_batch(texts(&["a"]));
    let m = message(&out[0]);
    assert!(m.contains("exit status 127"), "{m}");
    assert!(m.contains("no-such-program"), "{m}");
}

#[test]
fn results_of_the_wrong_type_fail_the_item() {
    // echo.py returns the text it got, but the node declares an Int output.
    let mut node = exec_node("python3 echo.py", &["Text"], &["Int"], None);
    let out = node.run_batch(texts(&["seven"]));
    assert!(
        message(&out[0]).contains("expected Int"),
        "{}",
        message(&out[0])
    );
}

/// Images cross the pipe as the registry's encoded bytes. Stand-in codec builtins: an image
/// of width 1 "encodes" to its RGB bytes.
#[test]
fn images_cross_as_encoded_bytes_when_the_registry_has_a_codec() {
    use mars_runtime::ImageData;
    let mut registry = Registry::new();
    registry.builtin(
        "image.decode",
        Arc::new(|_ctx: &NodeContext| {
            Ok(mars_runtime::node::per_item(|item: Item| match &item[0] {
                Value::Bytes(b) => Ok(vec![Value::Image(Arc::new(ImageData {
                    width: 1,
                    height: (b.len() / 3) as u32,
                    rgb: b.as_ref().clone(),
                }))]),
                other => Err(NodeError::new(format!("not bytes: {}", other.kind()))),
            }))
        }),
    );
    registry.builtin(
        "image.encode",
        Arc::new(|_ctx: &NodeContext| {
            Ok(mars_runtime::node::per_item(|item: Item| match &item[0] {
                Value::Image(i) => Ok(vec![Value::Bytes(Arc::new(i.rgb.clone()))]),
                other => Err(NodeError::new(format!("not an image: {}", other.kind()))),
            }))
        }),
    );
    let image = Value::Image(Arc::new(ImageData {
        width: 1,
        height: 2,
        rgb: vec![1, 2, 3, 4, 5, 6],
    }));
    let mut node = registry
        .instantiate(&context("python3 echo.py", &["Image"], &["Image"], None))
        .expect("starts");
    assert_eq!(
        node.run_batch(vec![vec![image.clone()]]),
        vec![Ok(vec![image.clone()])]
    );

    // Without a codec the item fails, naming what is missing.
    let mut plain = exec_node("python3 echo.py", &["Image"], &["Image"], None);
    let out = plain.run_batch(vec![vec![image]]);
    assert!(
        message(&out[0]).contains("image.encode"),
        "{}",
        message(&out[0])
    );
}

// ---- through `marsc run` -------------------------------------------------------------------

mod through_run {
    use super::programs;
    use assert_cmd::Command;
    use std::collections::BTreeMap;

    const TARGET: &str = "mars_target: 1\nworkers:\n  - {name: w0, cpus: 2, memory_gb: 8}\n";

    /// Compile `source` in a fresh folder (exec commands run there) and return the folder.
    fn compiled(source: &str, timeout_ms: Option<u64>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("app.mars"), source).expect("write source");
        std::fs::write(dir.path().join("target.yaml"), TARGET).expect("write target");
        Command::cargo_bin("marsc")
            .expect("marsc builds")
            .current_dir(dir.path())
            .args([
                "compile",
                "app.mars",
                "--target",
                "target.yaml",
                "-o",
                "app.plan.yaml",
            ])
            .assert()
            .success();
        if let Some(ms) = timeout_ms {
            // Plans are plain YAML; a shorter exec timeout is an edit of one field.
            let path = dir.path().join("app.plan.yaml");
            let plan = std::fs::read_to_string(&path).expect("plan");
            assert!(plan.contains("timeout_ms: 30000"), "{plan}");
            std::fs::write(
                &path,
                plan.replace("timeout_ms: 30000", &format!("timeout_ms: {ms}")),
            )
            .expect("edit plan");
        }
        dir
    }

    fn echo_source(annotation: &str) -> String {
        format!(
            "fn echo(text: Text) -> Text = exec \"python3 {}\"\n\n\
             pipeline app(text: Text) -> (out: Text) {{\n  out = echo(text)  {annotation}\n}}\n",
            programs().join("echo.py").display()
        )
    }

    /// Run the plan over `lines`; the records by id.
    fn run(dir: &tempfile::TempDir, lines: &[&str]) -> BTreeMap<u64, serde_json::Value> {
        std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").expect("write input");
        Command::cargo_bin("marsc")
            .expect("marsc builds")
            .current_dir(dir.path())
            .args([
                "run",
                "app.plan.yaml",
                "--input",
                "in.jsonl",
                "--output",
                "out.jsonl",
                "--quiet",
            ])
            .assert()
            .success();
        let out = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("output");
        let mut records = BTreeMap::new();
        for line in out.lines() {
            let r: serde_json::Value = serde_json::from_str(line).expect("a JSON record");
            let id = r["id"].as_u64().expect("an id");
            assert!(records.insert(id, r).is_none(), "id {id} written twice");
        }
        assert_eq!(records.len(), lines.len(), "one record per input line");
        records
    }

    fn ok(r: &serde_json::Value) -> Option<&str> {
        r.get("ok").and_then(|o| o["out"].as_str())
    }

    fn error(r: &serde_json::Value) -> String {
        assert_eq!(r["error"]["node"], "out", "{r}");
        r["error"]["message"]
            .as_str()
            .expect("a message")
            .to_string()
    }

    #[test]
    fn a_crash_fails_its_request_and_the_run_goes_on() {
        let dir = compiled(&echo_source("@batch(none) @replicas(1)"), None);
        let r = run(
            &dir,
            &[
                r#"{"text": "a"}"#,
                r#"{"text": "crash"}"#,
                r#"{"text": "b"}"#,
                r#"{"text": "error"}"#,
                r#"{"text": "c"}"#,
            ],
        );
        assert_eq!(ok(&r[&1]), Some("a"));
        let crash = error(&r[&2]);
        assert!(
            crash.contains("exit status 7") && crash.contains("crashing on purpose"),
            "{crash}"
        );
        assert_eq!(ok(&r[&3]), Some("b"));
        assert_eq!(error(&r[&4]), "asked to fail");
        assert_eq!(ok(&r[&5]), Some("c"));
    }

    #[test]
    fn a_hung_program_times_out_and_the_run_goes_on() {
        let dir = compiled(&echo_source("@batch(none) @replicas(1)"), Some(3000));
        let r = run(
            &dir,
            &[
                r#"{"text": "a"}"#,
                r#"{"text": "hang"}"#,
                r#"{"text": "b"}"#,
            ],
        );
        assert_eq!(ok(&r[&1]), Some("a"));
        let hang = error(&r[&2]);
        assert!(hang.contains("did not answer within 3000 ms"), "{hang}");
        assert_eq!(ok(&r[&3]), Some("b"));
    }

    #[test]
    fn replicas_and_batches_answer_every_request() {
        let dir = compiled(
            &echo_source("@batch(max = 16, wait = 2ms) @replicas(3)"),
            None,
        );
        let lines: Vec<String> = (0..500)
            .map(|i| format!("{{\"text\": \"t{i}\"}}"))
            .collect();
        let r = run(&dir, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        for (id, rec) in &r {
            assert_eq!(ok(rec), Some(format!("t{}", id - 1).as_str()), "{rec}");
        }
    }
}
