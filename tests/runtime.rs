//! End-to-end tests of `marsc run`: real plan files (compiled from the `.mars` files beside
//! them in `tests/runtime/`), real input files, the real binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value as Json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/runtime")
        .join(name)
}

fn marsc() -> Command {
    Command::cargo_bin("marsc").expect("the marsc binary is built")
}

struct Run {
    code: i32,
    lines: Vec<Json>,
    stderr: String,
    dir: tempfile::TempDir,
}

/// Run `marsc run PLAN` over `input` with extra arguments; output and stats go to a temp dir.
fn run(plan: &str, input: &str, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let inp = dir.path().join("in.jsonl");
    let out = dir.path().join("out.jsonl");
    std::fs::write(&inp, input).expect("write input");
    let assert = marsc()
        .arg("run")
        .arg(fixture(plan))
        .arg("--input")
        .arg(&inp)
        .arg("--output")
        .arg(&out)
        .arg("--stats-json")
        .arg(dir.path().join("stats.json"))
        .args(extra)
        .assert();
    let o = assert.get_output();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let lines = text
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("output line is not JSON ({e}): {l}"))
        })
        .collect();
    Run {
        code: o.status.code().unwrap_or(-1),
        lines,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        dir,
    }
}

impl Run {
    fn stats(&self) -> Json {
        let text =
            std::fs::read_to_string(self.dir.path().join("stats.json")).expect("stats written");
        serde_json::from_str(&text).expect("stats are JSON")
    }

    /// Records by id; panics on an id written twice.
    fn by_id(&self) -> BTreeMap<u64, Json> {
        let mut m = BTreeMap::new();
        for l in &self.lines {
            let id = l["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("record without id: {l}"));
            assert!(
                m.insert(id, l.clone()).is_none(),
                "request {id} written twice"
            );
        }
        m
    }
}

fn ints(n: u64) -> String {
    (1..=n).map(|i| format!("{{\"x\": {i}}}\n")).collect()
}

#[test]
fn every_request_yields_exactly_one_record_under_injected_failures() {
    let r = run("fail.plan.yaml", &ints(3000), &["-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = r.by_id();
    assert_eq!(
        m.keys().copied().collect::<Vec<_>>(),
        (1..=3000).collect::<Vec<_>>()
    );
    let mut failed = 0;
    for (id, rec) in &m {
        if let Some(err) = rec.get("error") {
            failed += 1;
            assert_eq!(err["node"], "f", "{rec}");
            assert!(err["message"].as_str().is_some_and(|s| !s.is_empty()));
            assert!(rec.get("ok").is_none());
        } else {
            assert_eq!(
                rec["ok"],
                serde_json::json!({"y": id, "label": "none"}),
                "{rec}"
            );
            assert!(rec["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
        }
    }
    // A seeded 30% share: deterministic, and near its rate.
    assert!((600..1200).contains(&failed), "{failed} failures");
    let stats = r.stats();
    assert_eq!(stats["requests"], 3000);
    assert_eq!(stats["errors"], failed);
    assert_eq!(stats["errors_by_node"]["f"], failed);
    assert_eq!(stats["nodes"]["f"]["items"], 3000);
    assert_eq!(stats["nodes"]["y"]["items"], 3000 - failed);
    // The same seed fails the same requests on every run, with several workers too.
    let again = run(
        "fail.plan.yaml",
        &ints(3000),
        &["-q", "--workers", "2", "--max-inflight", "64"],
    );
    let failed_ids = |m: &BTreeMap<u64, Json>| {
        m.iter()
            .filter(|(_, r)| r.get("error").is_some())
            .map(|(i, _)| *i)
            .collect::<Vec<_>>()
    };
    assert_eq!(failed_ids(&again.by_id()), failed_ids(&m));
}

#[test]
fn malformed_lines_and_bad_fields_are_error_records_and_the_run_succeeds() {
    let input = "{\"x\": 2}\nnot json at all\n{\"x\": \"two\"}\n{\"tag\": \"t\"}\n[1, 2]\n\n{\"x\": 4, \"tag\": \"t\"}\n";
    let r = run("fail.plan.yaml", input, &["--ordered"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let ids: Vec<u64> = r
        .lines
        .iter()
        .map(|l| l["id"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7]);
    let err = |i: usize| &r.lines[i]["error"];
    assert_eq!(err(1)["node"], "input");
    assert!(err(1)["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("malformed JSON")));
    assert_eq!(err(2)["message"], "field `x`: expected Int, got `\"two\"`");
    assert_eq!(err(3)["message"], "missing field `x` (Int)");
    assert_eq!(
        err(4)["message"],
        "expected a JSON object keyed by the pipeline's inputs"
    );
    assert_eq!(err(5)["message"], "empty line; expected a JSON object");
    // Line 7 either passes or is one of the seeded failures; either way it names its node.
    let last = &r.lines[6];
    assert!(
        last["ok"]["label"] == "t" || last["error"]["node"] == "f",
        "{last}"
    );
    assert!(
        r.stderr.contains("errors by node: "),
        "summary on stderr: {}",
        r.stderr
    );
}

#[test]
fn fail_fast_stops_at_the_first_error_and_exits_1() {
    let mut input = String::from("{\"x\": 1}\n{\"x\": \"bad\"}\n");
    input.push_str(&ints(20000));
    let r = run(
        "fail.plan.yaml",
        &input,
        &["-q", "--fail-fast", "--max-inflight", "8"],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let m = r.by_id();
    assert!(m.len() < 20002, "the run went on: {} records", m.len());
    let stats = r.stats();
    let first = stats["stopped_at"].as_u64().expect("stopped_at is set");
    assert!(m[&first].get("error").is_some());
}

#[test]
fn ordered_output_is_in_input_order_and_map_keeps_element_order() {
    let input: String = (1..=400)
        .map(|i| format!("{{\"x\": {i}, \"xs\": [{i}, 0, {}]}}\n", i * 2))
        .collect();
    let r = run(
        "shuffle.plan.yaml",
        &input,
        &["-q", "--ordered", "--workers", "2"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (i, l) in r.lines.iter().enumerate() {
        let x = i as u64 + 1;
        assert_eq!(l["id"], x);
        assert_eq!(l["ok"], serde_json::json!({"y": x, "ys": [x, 0, 2 * x]}));
    }
    assert_eq!(r.lines.len(), 400);
    let unordered = run("shuffle.plan.yaml", &input, &["-q"]);
    assert_eq!(unordered.by_id().len(), 400);
}

#[test]
fn a_crashing_exec_program_fails_only_its_requests() {
    let r = run("crash.plan.yaml", &ints(30), &["-q", "--ordered"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.lines.len(), 30);
    for (i, l) in r.lines.iter().enumerate() {
        let x = i as i64 + 1;
        if x == 13 {
            assert_eq!(l["error"]["node"], "y");
            assert!(
                l["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("exit")),
                "{l}"
            );
        } else {
            assert_eq!(l["ok"]["y"], x + 1, "{l}");
        }
    }
}

#[test]
fn the_trace_is_chrome_trace_json_with_a_track_per_replica() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = dir.path().join("trace.json");
    let trace_arg = trace.to_str().expect("utf-8 path");
    let r = run("fail.plan.yaml", &ints(200), &["-q", "--trace", trace_arg]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t: Json = serde_json::from_str(&std::fs::read_to_string(&trace).expect("trace written"))
        .expect("JSON");
    let events = t["traceEvents"]
        .as_array()
        .expect("traceEvents is an array");
    let tracks: Vec<&str> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    assert_eq!(tracks, ["f#0", "f#1", "y#0", "y#1", "y#2"]);
    let mut items = BTreeMap::<String, u64>::new();
    for e in events.iter().filter(|e| e["ph"] == "X") {
        for key in ["name", "ts", "dur", "pid", "tid"] {
            assert!(e.get(key).is_some(), "slice without `{key}`: {e}");
        }
        assert!(e["dur"].as_f64().is_some_and(|d| d >= 0.0));
        *items
            .entry(e["name"].as_str().unwrap_or("").to_string())
            .or_default() += e["args"]["items"].as_u64().unwrap_or(0);
    }
    let stats = r.stats();
    assert_eq!(items["f"], 200);
    assert_eq!(Some(items["y"]), stats["nodes"]["y"]["items"].as_u64());
}

#[test]
fn a_missing_plan_or_a_plan_naming_an_unknown_builtin_is_an_error() {
    let stderr = |cmd: &mut Command| {
        let o = cmd.output().expect("marsc runs");
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = stderr(marsc().args(["run", "no-such.plan.yaml", "-q"]));
    assert!(e.contains("cannot read plan"), "{e}");
    let dir = tempfile::tempdir().expect("temp dir");
    let text = std::fs::read_to_string(fixture("fail.plan.yaml")).expect("fixture");
    let bad = dir.path().join("bad.plan.yaml");
    std::fs::write(
        &bad,
        text.replace("builtin: bench.fail", "builtin: bench.nope"),
    )
    .expect("write");
    let e = stderr(
        marsc()
            .arg("run")
            .arg(&bad)
            .arg("-q")
            .write_stdin("{\"x\": 1}\n"),
    );
    assert!(e.contains("mars::run::build") && e.contains("`f`"), "{e}");
}

#[test]
fn a_plan_placing_a_node_on_a_gpu_this_build_cannot_use_is_refused_with_the_reason() {
    if cfg!(feature = "cuda") {
        // With CUDA support the answer depends on the machine's driver; covered by the
        // runtime's own probe test.
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let text = std::fs::read_to_string(fixture("slow.plan.yaml")).expect("fixture");
    let on_gpu = text.replacen("  device: cpu\n", "  device: gpu\n  gpu: gpu0\n", 1);
    assert_ne!(on_gpu, text);
    let plan = dir.path().join("gpu.plan.yaml");
    std::fs::write(&plan, on_gpu).expect("write");
    let o = marsc()
        .arg("run")
        .arg(&plan)
        .arg("-q")
        .write_stdin("{\"x\": 1}\n")
        .output()
        .expect("marsc runs");
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("mars::run::build") && e.contains("`a`") && e.contains("gpu0"),
        "{e}"
    );
    assert!(e.contains("built without the `cuda` feature"), "{e}");
}

#[test]
fn resume_skips_written_ids_and_drops_a_cut_off_last_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let inp = dir.path().join("in.jsonl");
    let out = dir.path().join("out.jsonl");
    std::fs::write(&inp, ints(500)).expect("input");
    // A run that "crashed": records for 1..=100 and half of the next line.
    let mut partial: String = (1..=100)
        .map(|i| {
            format!("{{\"id\":{i},\"ok\":{{\"y\":{i},\"label\":\"old\"}},\"latency_ms\":1.0}}\n")
        })
        .collect();
    partial.push_str("{\"id\":101,\"ok\":{\"y\":");
    std::fs::write(&out, partial).expect("output");
    let o = marsc()
        .arg("run")
        .arg(fixture("fail.plan.yaml"))
        .arg("--input")
        .arg(&inp)
        .arg("--output")
        .arg(&out)
        .args(["-q", "--resume", "--ordered"])
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).expect("output");
    let ids: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Json>(l).unwrap_or_else(|e| panic!("{e}: {l}"))["id"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(ids, (1..=500).collect::<Vec<_>>());
    assert!(
        text.lines().take(100).all(|l| l.contains("\"old\"")),
        "old records kept as they were"
    );
    // Resuming a finished run runs nothing.
    let again = marsc()
        .arg("run")
        .arg(fixture("fail.plan.yaml"))
        .arg("--input")
        .arg(&inp)
        .arg("--output")
        .arg(&out)
        .args(["-q", "--resume"])
        .output()
        .expect("runs");
    assert!(again.status.success());
    assert_eq!(std::fs::read_to_string(&out).expect("output"), text);
}

/// Regression: a run whose every line is malformed admitted nothing, so nothing woke the source
/// to see the input's end, and the run never finished.
#[test]
fn a_run_with_no_valid_request_still_ends() {
    for input in ["", "not json\n", "{}\n[]\n\n"] {
        let o = marsc()
            .arg("run")
            .arg(fixture("fail.plan.yaml"))
            .args(["-q", "--ordered"])
            .write_stdin(input)
            .timeout(std::time::Duration::from_secs(60))
            .output()
            .expect("runs");
        assert!(
            o.status.success(),
            "input {input:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).lines().count(),
            input.lines().count()
        );
    }
}

#[test]
fn images_cross_the_edge_as_encoded_bytes() {
    // A 2×2 red PNG.
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEElEQVR4nGP4z8AARAwQCgAf7gP9i18U1AAAAABJRU5ErkJggg==";
    let dir = tempfile::tempdir().expect("temp dir");
    let bytes = mars_runtime::codec::base64_decode(png).expect("valid base64");
    std::fs::write(dir.path().join("red.png"), &bytes).expect("write png");
    let inp = dir.path().join("in.jsonl");
    let out = dir.path().join("out.jsonl");
    let lines = format!(
        "{{\"im\": {{\"$file\": \"red.png\"}}}}\n{{\"im\": {{\"$base64\": \"{png}\"}}}}\n{{\"im\": {{\"$base64\": \"bm90IGFuIGltYWdl\"}}}}\n{{\"im\": {{\"$file\": \"missing.png\"}}}}\n"
    );
    std::fs::write(&inp, lines).expect("input");
    let o = marsc()
        .arg("run")
        .arg(fixture("image.plan.yaml"))
        .arg("--input")
        .arg(&inp)
        .arg("--output")
        .arg(&out)
        .args(["-q", "--ordered"])
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs: Vec<Json> = std::fs::read_to_string(&out)
        .expect("output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    for rec in &recs[..2] {
        let b64 = rec["ok"]["out"]["$base64"]
            .as_str()
            .unwrap_or_else(|| panic!("{rec}"));
        let out_png = mars_runtime::codec::base64_decode(b64).expect("base64");
        assert_eq!(&out_png[..8], b"\x89PNG\r\n\x1a\n", "a PNG comes back");
    }
    assert_eq!(recs[2]["error"]["node"], "input");
    assert!(recs[2]["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("field `im`")));
    assert!(recs[3]["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("missing.png")));
}

#[test]
fn a_reader_that_goes_away_ends_the_run_quietly() {
    use std::io::{BufRead, Write};
    // `marsc run … | head -1`: once the reader closes the pipe, marsc stops without an error.
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("marsc"))
        .arg("run")
        .arg(fixture("slow.plan.yaml"))
        .arg("-q")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("marsc starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        for i in 1..=200_000u64 {
            if writeln!(stdin, "{{\"x\": {i}}}").is_err() {
                break;
            }
        }
    });
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("one record");
    assert!(first.starts_with("{\"id\":"), "{first}");
    // The reader is dropped here: the pipe closes.
    let out = child.wait_with_output().expect("exits");
    feeder.join().expect("feeder");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
