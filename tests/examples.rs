//! End-to-end tests of what the README and `examples/` promise: `marsc demo` runs the built-in
//! pipeline with no setup, and every example checks, compiles and runs as its header says.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn marsc() -> Command {
    let mut c = Command::cargo_bin("marsc").expect("marsc is built");
    c.current_dir(root());
    c
}

fn records(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn the_demo_runs_the_translator_pipeline_from_any_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("demo");
    // From an empty folder, so nothing in the repository is read at run time.
    let o = Command::cargo_bin("marsc")
        .expect("marsc is built")
        .current_dir(dir.path())
        .args(["demo", "-q", "--dir", "demo"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let r = records(&String::from_utf8_lossy(&o.stdout));
    let titles = include_str!("../pipelines/data/titles.jsonl")
        .lines()
        .count();
    assert_eq!(r.len(), titles, "one record per sample title");
    for (i, rec) in r.iter().enumerate() {
        assert_eq!(rec["id"], (i + 1) as u64, "ordered: {rec}");
    }
    assert_eq!(
        r[0]["ok"],
        serde_json::json!({"title_fr": "Pack of vingt-quatre AA batteries", "numbers": 1})
    );
    assert!(work.join("title_translate.plan.yaml").is_file());
    // The records printed are the ones written to the results file.
    let written = std::fs::read_to_string(work.join("results.jsonl")).expect("results written");
    assert_eq!(records(&written), r);
    let stats: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(work.join("stats.json")).expect("stats written"),
    )
    .expect("stats are JSON");
    assert!(stats.is_object());
}

#[test]
fn the_demo_explains_its_plan_and_takes_other_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("mine.jsonl");
    std::fs::write(
        &input,
        "{\"title\": \"Crate of twelve bottles\"}\n{\"nope\": 1}\n",
    )
    .expect("input");
    let o = marsc()
        .args(["demo", "--dir"])
        .arg(dir.path().join("d"))
        .arg("-i")
        .arg(&input)
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // The explanation comes first, then one record per request; a bad request is an error
    // record and the other goes on.
    assert!(stdout.contains("bottleneck"), "{stdout}");
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("{\"id\""))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let r = records(&lines.join("\n"));
    assert_eq!(r[0]["ok"]["title_fr"], "Crate of douze bottles");
    assert!(r[1]["error"]["message"].is_string(), "{}", r[1]);
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "mars"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_checks_clean_and_is_formatted() {
    let all = examples();
    assert!(all.len() >= 2, "{all:?}");
    for file in &all {
        marsc()
            .args(["check", "--deny-warnings"])
            .arg(file)
            .assert()
            .success();
        marsc()
            .args(["fmt", "--check"])
            .arg(file)
            .assert()
            .success();
    }
}

fn compile(source: &str, plan: &Path) {
    marsc()
        .args(["compile", source, "-o"])
        .arg(plan)
        .assert()
        .success();
}

#[test]
fn word_stats_runs_its_exec_node_and_keeps_going_past_a_bad_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = dir.path().join("w.plan.yaml");
    compile("examples/word_stats.mars", &plan);
    let o = marsc()
        .arg("run")
        .arg(&plan)
        .args(["-i", "examples/data/sentences.jsonl", "--ordered", "-q"])
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = records(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(r.len(), 5);
    assert_eq!(
        r[0]["ok"],
        serde_json::json!({"words": 4, "loud": ["THE!", "QUICK!", "BROWN!", "FOX!"]})
    );
    assert_eq!(
        r[1]["ok"]["loud"],
        serde_json::json!(["JUMPS!", "OVER!", "THE!", "LAZY!", "DOG!"])
    );
    assert!(r[3]["error"]["message"].is_string(), "{}", r[3]);
    assert_eq!(r[4]["ok"]["words"], 1);
}

#[test]
fn the_pipelining_example_passes_values_through_four_stages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = dir.path().join("p.plan.yaml");
    compile("examples/pipelining.mars", &plan);
    let input: String = (1..=20).map(|i| format!("{{\"x\": {i}}}\n")).collect();
    let o = marsc()
        .arg("run")
        .arg(&plan)
        .args(["--ordered", "-q"])
        .write_stdin(input)
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = records(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(r.len(), 20);
    for (i, rec) in r.iter().enumerate() {
        assert_eq!(rec["ok"]["y"], (i + 1) as u64, "{rec}");
    }
}
