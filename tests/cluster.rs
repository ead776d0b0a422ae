//! End-to-end tests of cluster mode: real `marsc` processes talking timely over localhost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value as Json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/runtime")
        .join(name)
}

fn marsc_path() -> PathBuf {
    assert_cmd::cargo::cargo_bin("marsc")
}

/// Records by id, without latencies; panics on an id written twice or a bad line.
fn records(path: &Path) -> BTreeMap<u64, Json> {
    let text = std::fs::read_to_string(path).expect("output written");
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let mut rec: Json =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a record ({e}): {line}"));
        if let Some(o) = rec.as_object_mut() {
            o.remove("latency_ms");
        }
        let id = rec["id"].as_u64().expect("id");
        assert!(m.insert(id, rec).is_none(), "request {id} written twice");
    }
    m
}

fn spread_input(dir: &Path, n: u64) -> PathBuf {
    let p = dir.join("in.jsonl");
    let text: String = (1..=n)
        .map(|i| format!("{{\"x\": {i}, \"xs\": [{i}, 7, {}]}}\n", i * 3))
        .collect();
    std::fs::write(&p, text).expect("write input");
    p
}

fn run_local(plan: &str, input: &Path, out: &Path, processes: usize, extra: &[&str]) {
    let o = Command::new(marsc_path())
        .arg("run")
        .arg(fixture(plan))
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(out)
        .args(["-q", "--local-cluster", &processes.to_string()])
        .args(extra)
        .timeout(Duration::from_secs(120))
        .output()
        .expect("marsc runs");
    assert!(
        o.status.success(),
        "{processes} processes: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn two_and_three_processes_write_what_one_process_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = spread_input(dir.path(), 2000);
    let mut outputs = Vec::new();
    let mut stats = Vec::new();
    for (n, workers) in [(1, "1"), (2, "1"), (3, "2")] {
        let out = dir.path().join(format!("out{n}.jsonl"));
        let s = dir.path().join(format!("stats{n}.json"));
        let s_arg = s.display().to_string();
        run_local(
            "spread.plan.yaml",
            &input,
            &out,
            n,
            &["--workers", workers, "--stats-json", &s_arg],
        );
        outputs.push(records(&out));
        let json: Json =
            serde_json::from_str(&std::fs::read_to_string(&s).expect("stats")).expect("JSON");
        stats.push(json);
    }
    // Process 0's stats count every node, wherever it ran: the same items as one process.
    for s in &stats {
        let nodes = s["nodes"].as_object().expect("nodes");
        assert_eq!(nodes.len(), 4, "{s}");
        for (id, n) in nodes {
            let one = &stats[0]["nodes"][id];
            assert_eq!(n["items"], one["items"], "node {id}: {n} vs {one}");
            assert_eq!(n["item_errors"], one["item_errors"], "node {id}");
            assert!(
                n["batches"].as_u64().is_some_and(|b| b > 0),
                "node {id}: {n}"
            );
        }
    }
    assert_eq!(outputs[0].len(), 2000);
    assert_eq!(
        outputs[0].keys().copied().collect::<Vec<_>>(),
        (1..=2000).collect::<Vec<_>>()
    );
    let failed = outputs[0]
        .values()
        .filter(|r| r.get("error").is_some())
        .count();
    assert!((100..400).contains(&failed), "{failed} injected failures");
    assert_eq!(outputs[1], outputs[0], "2 processes");
    assert_eq!(outputs[2], outputs[0], "3 processes");
    assert_eq!(
        outputs[0][&2]["ok"],
        serde_json::json!({"y": 2, "ys": [2, 7, 6]})
    );
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// A hosts file of `n` free local ports in `dir`; also the ports.
fn hosts_file(dir: &Path, n: usize) -> (PathBuf, Vec<u16>) {
    let hosts = dir.join("hosts.txt");
    let ports = free_ports(n);
    let text: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    std::fs::write(&hosts, text).expect("hosts");
    (hosts, ports)
}

fn worker(plan: &Path, hosts: &Path, process: usize, io: Option<(&Path, &Path)>) -> Child {
    let mut c = StdCommand::new(marsc_path());
    c.arg("worker")
        .arg(plan)
        .arg("--hosts")
        .arg(hosts)
        .arg("--process")
        .arg(process.to_string())
        .arg("-q");
    if let Some((input, output)) = io {
        c.arg("--input").arg(input).arg("--output").arg(output);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("marsc worker starts")
}

/// Wait for a child to exit, at most `limit`.
fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn stderr_of(child: Child) -> String {
    let o = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_killed_process_stops_the_cluster_and_resume_finishes_the_run_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (hosts, _) = hosts_file(dir.path(), 3);
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        (1..=3000)
            .map(|i| format!("{{\"x\": {i}}}\n"))
            .collect::<String>(),
    )
    .expect("input");
    let out = dir.path().join("out.jsonl");
    let plan = fixture("slow.plan.yaml");

    let mut p1 = worker(&plan, &hosts, 1, None);
    let mut p2 = worker(&plan, &hosts, 2, None);
    let mut p0 = worker(&plan, &hosts, 0, Some((&input, &out)));
    // Kill process 2 once the run is under way (some records are out).
    let start = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&out)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if lines >= 50 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the cluster never got going"
        );
        assert!(
            p0.try_wait().ok().flatten().is_none(),
            "process 0 ended early: {}",
            stderr_of(p0)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p2.kill().expect("kill process 2");
    let _ = p2.wait();
    let s0 = exit_within(&mut p0, Duration::from_secs(10)).expect("process 0 stops within 10 s");
    let s1 = exit_within(&mut p1, Duration::from_secs(10)).expect("process 1 stops within 10 s");
    assert!(!s0.success() && !s1.success(), "{s0} {s1}");
    // Whichever peer's loss a process notices first is the one it names: process 1 may stop
    // (having lost process 2) before process 0 notices process 2 itself.
    let e0 = stderr_of(p0);
    assert!(e0.contains("lost the connection to process"), "{e0}");
    let e1 = stderr_of(p1);
    assert!(e1.contains("lost the connection to process"), "{e1}");
    let partial = records(&out);
    assert!(
        !partial.is_empty() && partial.len() < 3000,
        "{} records before the crash",
        partial.len()
    );

    run_local("slow.plan.yaml", &input, &out, 3, &["--resume"]);
    let all = records(&out);
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (1..=3000).collect::<Vec<_>>()
    );
    for (id, rec) in &all {
        assert_eq!(rec["ok"]["y"], *id, "{rec}");
    }
}

#[test]
fn processes_with_different_plans_refuse_to_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (hosts, _) = hosts_file(dir.path(), 2);
    let plan = fixture("slow.plan.yaml");
    let other = dir.path().join("other.plan.yaml");
    let text = std::fs::read_to_string(&plan).expect("plan");
    // Same folder semantics are irrelevant: the plans differ in one parameter.
    std::fs::write(&other, text.replace("item_ms: 2.0", "item_ms: 2.5")).expect("write");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"x\": 1}\n").expect("input");
    let out = dir.path().join("out.jsonl");
    let mut p1 = worker(&other, &hosts, 1, None);
    let mut p0 = worker(&plan, &hosts, 0, Some((&input, &out)));
    let s0 = exit_within(&mut p0, Duration::from_secs(30)).expect("process 0 exits");
    let s1 = exit_within(&mut p1, Duration::from_secs(30)).expect("process 1 exits");
    assert!(!s0.success() && !s1.success());
    for e in [stderr_of(p0), stderr_of(p1)] {
        assert!(e.contains("start every process with the same plan"), "{e}");
    }
}

#[test]
fn a_cluster_writes_to_a_file_not_stdout() {
    let o = Command::new(marsc_path())
        .arg("run")
        .arg(fixture("slow.plan.yaml"))
        .args(["-q", "--local-cluster", "2"])
        .write_stdin("{\"x\": 1}\n")
        .output()
        .expect("runs");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("mars::cluster::output"));
}

#[test]
fn a_process_whose_peers_never_start_gives_up_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (hosts, ports) = hosts_file(dir.path(), 3);
    // Only process 1 starts; 0 and 2 never do.
    let mut p1 = StdCommand::new(marsc_path())
        .arg("worker")
        .arg(fixture("slow.plan.yaml"))
        .arg("--hosts")
        .arg(&hosts)
        .args(["--process", "1", "-q", "--connect-timeout", "1.5"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("marsc worker starts");
    let status = exit_within(&mut p1, Duration::from_secs(20)).expect("gives up, no hang");
    assert_eq!(status.code(), Some(2));
    let e = stderr_of(p1);
    assert!(e.contains("mars::cluster::connect"), "{e}");
    assert!(
        e.contains(&format!("process 0 (127.0.0.1:{})", ports[0])),
        "{e}"
    );
    assert!(
        e.contains(&format!("process 2 (127.0.0.1:{})", ports[2])),
        "{e}"
    );
}
