//! End-to-end tests of elastic replicas (SPEC 10): `marsc compile` writes replica ranges,
//! `marsc run --elastic on` moves replicas when a stage's real cost changes midway, and every
//! request still gets exactly one record.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value as Json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/pool")
        .join(name)
}

fn marsc() -> Command {
    Command::cargo_bin("marsc").expect("the marsc binary is built")
}

/// Compile the drift pipeline into `dir`, returning the plan's path.
fn compile(dir: &Path) -> PathBuf {
    let plan = dir.join("drift.plan.yaml");
    marsc()
        .arg("compile")
        .arg(fixture("drift.mars"))
        .arg("--target")
        .arg(fixture("target.yaml"))
        .arg("-o")
        .arg(&plan)
        .assert()
        .success();
    plan
}

/// Run the plan over `n` requests; the stats and the records.
fn run(plan: &Path, dir: &Path, n: usize, elastic: &str) -> (Json, Vec<Json>) {
    let input = dir.join("in.jsonl");
    let out = dir.join(format!("out-{elastic}.jsonl"));
    let stats = dir.join(format!("stats-{elastic}.json"));
    let lines: String = (1..=n).map(|i| format!("{{\"x\": {i}}}\n")).collect();
    std::fs::write(&input, lines).expect("input");
    marsc()
        .arg("run")
        .arg(plan)
        .args(["--max-inflight", "256", "-q", "--elastic", elastic])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .arg("--stats-json")
        .arg(&stats)
        .assert()
        .success();
    let stats: Json =
        serde_json::from_str(&std::fs::read_to_string(&stats).expect("stats")).expect("json");
    let records = std::fs::read_to_string(&out)
        .expect("output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    (stats, records)
}

fn exactly_once(records: &[Json], n: usize) {
    let mut ids: Vec<u64> = records
        .iter()
        .map(|r| r["id"].as_u64().expect("id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=n as u64).collect::<Vec<_>>());
    assert!(
        records.iter().all(|r| r.get("ok").is_some()),
        "an error record"
    );
}

#[test]
fn the_plan_gives_each_pool_node_a_range_within_the_budget() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = std::fs::read_to_string(compile(dir.path())).expect("plan");
    let plan: serde_yaml::Value = serde_yaml::from_str(&plan).expect("yaml");
    assert_eq!(plan["budget"][0]["worker"], "w0");
    assert_eq!(plan["budget"][0]["cpus"].as_f64(), Some(8.0));
    for node in plan["nodes"].as_sequence().expect("nodes") {
        assert_eq!(node["replicas"].as_u64(), Some(4), "{node:?}");
        let r = &node["replica_range"];
        assert_eq!(
            (r["min"].as_u64(), r["max"].as_u64()),
            (Some(1), Some(8)),
            "{node:?}"
        );
        assert_eq!(r["cores"].as_f64(), Some(1.0));
    }
}

#[test]
fn a_stage_that_slows_down_midway_gets_cores_from_the_other() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compile(dir.path());
    let n = 5000;
    let (stats, records) = run(&plan, dir.path(), n, "on");
    exactly_once(&records, n);
    let e = &stats["elastic"];
    assert!(
        e["moves"].as_u64().expect("moves") >= 1,
        "no move: {stats:#}"
    );
    // The first move hands a core of `a` to the slowed stage `y` (no core is free: the plan
    // uses all 8), and the cores in use never exceed the target's 8.
    let log = e["log"].as_array().expect("log");
    assert_eq!(
        (&log[0]["kind"], &log[0]["from"], &log[0]["to"]),
        (&"transfer".into(), &"a".into(), &"y".into()),
        "{stats:#}"
    );
    for m in log {
        let used: u64 = m["replicas"]
            .as_object()
            .expect("replicas")
            .values()
            .map(|v| v.as_u64().unwrap_or(0))
            .sum();
        assert!(used <= 8, "{m:#}");
    }
    let y = &stats["nodes"]["y"]["elastic"];
    assert!(y["most"].as_u64().expect("most") >= 5, "{stats:#}");
    assert_eq!(stats["nodes"]["a"]["elastic"]["most"].as_u64(), Some(4));
    assert!(
        stats["nodes"]["a"]["elastic"]["fewest"]
            .as_u64()
            .expect("fewest")
            <= 3
    );
}

#[test]
fn elastic_off_keeps_the_plans_replicas() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compile(dir.path());
    let (stats, records) = run(&plan, dir.path(), 1200, "off");
    exactly_once(&records, 1200);
    assert!(stats.get("elastic").is_none(), "{stats:#}");
    assert!(stats["nodes"]["y"].get("elastic").is_none());
    assert_eq!(stats["nodes"]["y"]["replicas"].as_u64(), Some(4));
}
