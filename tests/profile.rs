//! `marsc profile` end to end: real node kinds (std.bench nodes and a Python exec program from
//! `tests/exec/`), measured by the real binary, written as a profile the planner accepts.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use mars_plan::Profile;

fn exec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/exec")
}

/// A plan (as `marsc compile` writes one without a profile) of: an exec node splitting text
/// into words, a map of `std.bench.delay` over the words, a `std.bench.spin` on the text, and a
/// second `std.bench.delay` with other parameters.
fn plan_yaml() -> String {
    let source = exec_dir().join("app.mars");
    format!(
        r#"mars_plan: 1
mars_version: "0.1.0"
pipeline: app
inputs_of_plan: {{source: "{}", source_hash: "sha256:00"}}
inputs:
  - {{name: text, type: Text}}
outputs:
  - {{name: out, type: List<Text>, from: {{node: slow}}}}
  - {{name: loud, type: Text, from: {{node: burn}}}}
  - {{name: late, type: Text, from: {{node: slow2}}}}
nodes:
  - id: stats
    kind: stats
    implementation: {{exec: "python3 stats.py"}}
    args: [{{input: text}}]
    in_types: [Text]
    out_types: [Int, List<Text>]
    device: cpu
    worker: w0
    replicas: 1
    batch: {{policy: dynamic, max: 8, wait_ms: 1}}
    predicted: {{latency_ms: 1, p99_ms: 1, throughput: 1, utilization: 0}}
  - id: slow
    kind: std.bench.delay
    implementation: {{builtin: bench.delay}}
    map_over: 0
    args: [{{node: stats, port: 1}}]
    params: {{batch_ms: 1.0, item_ms: 2.0}}
    in_types: [Text]
    out_types: [Text]
    device: cpu
    worker: w0
    replicas: 1
    batch: {{policy: dynamic, max: 8, wait_ms: 1}}
    predicted: {{latency_ms: 1, p99_ms: 1, throughput: 1, utilization: 0}}
  - id: burn
    kind: std.bench.spin
    implementation: {{builtin: bench.spin}}
    args: [{{input: text}}]
    params: {{item_ms: 1.0}}
    in_types: [Text]
    out_types: [Text]
    device: cpu
    worker: w0
    replicas: 1
    batch: {{policy: none, max: 1, wait_ms: 0}}
    predicted: {{latency_ms: 1, p99_ms: 1, throughput: 1, utilization: 0}}
  - id: slow2
    kind: std.bench.delay
    implementation: {{builtin: bench.delay}}
    args: [{{input: text}}]
    params: {{item_ms: 5.0}}
    in_types: [Text]
    out_types: [Text]
    device: cpu
    worker: w0
    replicas: 1
    batch: {{policy: none, max: 1, wait_ms: 0}}
    predicted: {{latency_ms: 1, p99_ms: 1, throughput: 1, utilization: 0}}
predicted: {{throughput: 1, latency_p50_ms: 1, latency_p99_ms: 1, bottleneck: slow}}
"#,
        source.display()
    )
}

const TARGET: &str = "mars_target: 1\nworkers:\n  - {name: w0, cpus: 2, memory_gb: 8}\n";

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(plan: &str, target: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("app.plan.yaml"), plan).expect("write plan");
        std::fs::write(dir.path().join("target.yaml"), target).expect("write target");
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `marsc profile` with short measuring settings, so the test stays quick.
    fn profile(&self, extra: &[&str]) -> assert_cmd::assert::Assert {
        Command::cargo_bin("marsc")
            .expect("marsc builds")
            .current_dir(self.dir.path())
            .args([
                "profile",
                "app.plan.yaml",
                "--target",
                "target.yaml",
                "-o",
                "app.profile.yaml",
            ])
            .args(["--max-batch", "4", "--min-runs", "3", "--min-time-ms", "0"])
            .args(extra)
            .assert()
    }

    fn read_profile(&self) -> Profile {
        let text = std::fs::read_to_string(self.path("app.profile.yaml")).expect("profile written");
        Profile::from_yaml(&text, "app.profile.yaml").expect("the profile is valid")
    }
}

#[test]
fn profiles_every_kind_with_samples_and_fanout() {
    let s = Setup::new(&plan_yaml(), TARGET);
    std::fs::write(
        s.path("samples.jsonl"),
        "{\"text\": \"a b c\"}\n\n{\"text\": \"d e f g h i\"}\n{\"text\": \"x\"}\n",
    )
    .expect("write samples");
    let out = s.profile(&["--input", "samples.jsonl"]).success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        stderr.contains("wrote app.profile.yaml (4 node kinds)"),
        "{stderr}"
    );
    // A table for humans on stdout: a header, one row per kind and device, the fan-out.
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("kind") && lines[0].contains("ms/item"),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("std.bench.delay@slow2  cpu")),
        "{stdout}"
    );
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(lines[5], "fan-out at map nodes: slow 3.333");

    let p = s.read_profile();
    assert_eq!(
        p.nodes.keys().map(String::as_str).collect::<Vec<_>>(),
        vec![
            "stats",
            "std.bench.delay",
            "std.bench.delay@slow2",
            "std.bench.spin"
        ]
    );
    assert!(stderr.contains("`slow` and `slow2`"), "{stderr}");
    for (name, kind) in &p.nodes {
        let cpu = kind.cpu.as_ref().expect("measured on cpu");
        // Up to --max-batch 4, and up to the plan's own bound where it batches (`max: 8`).
        let sizes = if name == "stats" || name == "std.bench.delay" {
            vec![1, 2, 4, 8]
        } else {
            vec![1, 2, 4]
        };
        assert_eq!(cpu.batch, sizes, "{name}");
        assert!(kind.gpu.is_none(), "the target has no GPU");
    }
    // delay sleeps batch_ms + item_ms × b and never wakes early: lower bounds only.
    let delay = p.nodes["std.bench.delay"].cpu.as_ref().expect("cpu");
    for (b, l) in delay.batch.iter().zip(&delay.latency_ms) {
        assert!(*l >= 1.0 + 2.0 * f64::from(*b), "batch {b}: {l} ms");
    }
    let delay2 = p.nodes["std.bench.delay@slow2"].cpu.as_ref().expect("cpu");
    for (b, l) in delay2.batch.iter().zip(&delay2.latency_ms) {
        assert!(*l >= 5.0 * f64::from(*b), "slow2, batch {b}: {l} ms");
    }
    let p99 = delay.p99_ms.as_ref().expect("p99 measured");
    assert!(p99.iter().zip(&delay.latency_ms).all(|(p, m)| p >= m));
    // spin keeps a core busy, delay does not.
    let spin_cores = p.nodes["std.bench.spin"]
        .cpu
        .as_ref()
        .and_then(|d| d.cpu_cores)
        .expect("cores");
    let delay_cores = delay.cpu_cores.expect("cores");
    assert!(
        spin_cores > delay_cores,
        "spin {spin_cores} vs delay {delay_cores}"
    );
    // The exec program's resident memory is counted.
    let stats_mem = p.nodes["stats"]
        .cpu
        .as_ref()
        .and_then(|d| d.memory_mb.clone())
        .expect("memory");
    assert!(stats_mem.iter().all(|&m| m > 1.0), "{stats_mem:?}");
    // Words per sample: 3, 6 and 1.
    assert_eq!(p.fanout.get("slow"), Some(&3.333));
}

#[test]
fn without_samples_inputs_are_synthesized_and_no_fanout_is_written() {
    let s = Setup::new(&plan_yaml(), TARGET);
    let out = s.profile(&[]).success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("synthesized requests"), "{stderr}");
    let p = s.read_profile();
    assert_eq!(p.nodes.len(), 4);
    assert!(p.fanout.is_empty());
}

#[test]
fn a_bad_sample_names_its_file_and_line() {
    let s = Setup::new(&plan_yaml(), TARGET);
    std::fs::write(
        s.path("samples.jsonl"),
        "{\"text\": \"ok\"}\n\n{\"text\": 42}\n",
    )
    .expect("write samples");
    let out = s.profile(&["--input", "samples.jsonl"]).failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("samples.jsonl:3"), "{stderr}");
    assert!(stderr.contains("expected Text"), "{stderr}");
    assert!(!s.path("app.profile.yaml").exists());
}

#[test]
fn a_node_without_an_implementation_is_an_error_naming_it() {
    let plan = plan_yaml().replace("builtin: bench.spin", "builtin: bench.nope");
    let s = Setup::new(&plan, TARGET);
    let out = s.profile(&[]).failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("node `burn`"), "{stderr}");
    assert!(stderr.contains("bench.nope"), "{stderr}");
}

#[test]
fn a_gpu_target_without_cuda_is_profiled_on_cpu_and_says_so() {
    let target = "mars_target: 1\nworkers:\n  - name: w0\n    cpus: 2\n    gpus:\n      - {name: gpu0, memory_gb: 16}\n";
    let s = Setup::new(&plan_yaml(), target);
    let out = s.profile(&[]).success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    if !cfg!(feature = "cuda") {
        assert!(stderr.contains("without the `cuda` feature"), "{stderr}");
    }
    assert!(s.read_profile().nodes.values().all(|k| k.gpu.is_none()));
}

#[test]
fn a_bad_target_names_its_file() {
    let s = Setup::new(&plan_yaml(), "mars_target: 1\nworkers: []\n");
    let out = s.profile(&[]).failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("target.yaml"), "{stderr}");
    assert!(stderr.contains("workers"), "{stderr}");
}

/// A source using std.bench nodes and an exec program, two `delay` calls with different
/// parameters among them.
fn source() -> String {
    let stats = exec_dir().join("stats.py");
    format!(
        r#"use std.bench.{{delay, spin}}

fn stats(text: Text) -> (n: Int, words: List<Text>) = exec "python3 {}"

pipeline app(text: Text) -> (out: List<Text>, loud: Text, n: Int) {{
  let (count, words) = stats(text)
  out  = map(delay, words, item_ms = 2.0)
  loud = spin(delay(text, item_ms = 5.0), item_ms = 1.0)
  n = count
}}

pipeline other(text: Text) -> (out: Text) {{
  out = delay(text, item_ms = 1.0)
}}
"#,
        stats.display()
    )
}

#[test]
fn a_profiled_source_round_trips_into_compile() {
    let s = Setup::new("", TARGET);
    std::fs::write(s.path("app.mars"), source()).expect("write source");
    std::fs::write(
        s.path("samples.jsonl"),
        "{\"text\": \"a b c\"}\n{\"text\": \"d e\"}\n",
    )
    .expect("write samples");
    Command::cargo_bin("marsc")
        .expect("marsc builds")
        .current_dir(s.dir.path())
        .args([
            "profile",
            "app.mars",
            "--pipeline",
            "app",
            "--target",
            "target.yaml",
            "-o",
            "app.profile.yaml",
        ])
        .args([
            "--input",
            "samples.jsonl",
            "--max-batch",
            "4",
            "--min-runs",
            "3",
            "--min-time-ms",
            "0",
        ])
        .assert()
        .success();
    let profile = s.read_profile();
    // Kinds as written; the `delay` whose parameters differ from the first one gets its own entry.
    assert_eq!(
        profile.nodes.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["delay", "delay@out", "spin", "stats"]
    );
    assert_eq!(profile.fanout.get("out"), Some(&2.5));

    Command::cargo_bin("marsc")
        .expect("marsc builds")
        .current_dir(s.dir.path())
        .args([
            "compile",
            "app.mars",
            "--pipeline",
            "app",
            "--profile",
            "app.profile.yaml",
        ])
        .args(["--target", "target.yaml", "-o", "app.plan.yaml"])
        .assert()
        .success();
    let text = std::fs::read_to_string(s.path("app.plan.yaml")).expect("plan written");
    let plan = mars_plan::Plan::from_yaml(&text, "app.plan.yaml").expect("a valid plan");
    assert!(plan.inputs_of_plan.profile_hash.is_some());
    // The planner predicts each node's batch latency from the entry measured for it.
    for node in &plan.nodes {
        let key = if profile
            .nodes
            .contains_key(&format!("{}@{}", node.kind, node.id))
        {
            format!("{}@{}", node.kind, node.id)
        } else {
            node.kind.clone()
        };
        let cpu = profile.nodes[&key].cpu.as_ref().expect("cpu");
        let at = cpu
            .batch
            .iter()
            .position(|&b| b == node.batch.max)
            .expect("a measured batch size");
        // (The plan rounds to 3 decimals.)
        let (predicted, measured) = (node.predicted.latency_ms, cpu.latency_ms[at]);
        assert!(
            (predicted - measured).abs() < 0.001,
            "node {} ({key}): {predicted} vs {measured}",
            node.id
        );
    }
}

#[test]
fn a_source_with_several_pipelines_needs_one_chosen() {
    let s = Setup::new("", TARGET);
    std::fs::write(s.path("app.mars"), source()).expect("write source");
    let out = Command::cargo_bin("marsc")
        .expect("marsc builds")
        .current_dir(s.dir.path())
        .args([
            "profile",
            "app.mars",
            "--target",
            "target.yaml",
            "-o",
            "app.profile.yaml",
        ])
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        stderr.contains("several pipelines (app, other)"),
        "{stderr}"
    );
}

#[test]
fn a_source_with_errors_reports_them_and_writes_nothing() {
    let s = Setup::new("", TARGET);
    std::fs::write(
        s.path("bad.mars"),
        "pipeline p(x: Text) -> (y: Text) {\n  y = nosuch(x)\n}\n",
    )
    .expect("write source");
    let out = Command::cargo_bin("marsc")
        .expect("marsc builds")
        .current_dir(s.dir.path())
        .args([
            "profile",
            "bad.mars",
            "--target",
            "target.yaml",
            "-o",
            "bad.profile.yaml",
        ])
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("nosuch"), "{stderr}");
    assert!(!s.path("bad.profile.yaml").exists());
}

#[test]
fn a_plan_error_points_into_the_source() {
    let s = Setup::new("", TARGET);
    std::fs::write(
        s.path("gpu.mars"),
        "use std.bench.{delay}\n\npipeline app(text: Text) -> (out: Text) {\n  out = delay(text, item_ms = 2.0)  @device(gpu)\n}\n",
    )
    .expect("write source");
    let out = Command::cargo_bin("marsc")
        .expect("marsc builds")
        .current_dir(s.dir.path())
        .args([
            "profile",
            "gpu.mars",
            "--target",
            "target.yaml",
            "-o",
            "gpu.profile.yaml",
        ])
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        stderr.contains("mars::plan::device_unavailable"),
        "{stderr}"
    );
    assert!(stderr.contains("gpu.mars:4"), "{stderr}");
}

/// The committed tiny translator twice: generating (`generate = true`) and not.
fn translator_source() -> String {
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/weights/mt.safetensors");
    format!(
        r#"model Translator {{
  arch       = "transformer_lm"
  weights    = "{w}"
  generate   = true
  max_tokens = 24
  in  text: Text
  out text: Text
}}

model Plain {{
  arch       = "transformer_lm"
  weights    = "{w}"
  max_tokens = 24
  in  text: Text
  out text: Text
}}

pipeline t(text: Text) -> (fr: Text, again: Text) {{
  fr = Translator(text)
  again = Plain(text)
}}
"#,
        w = weights.display()
    )
}

#[test]
fn a_generating_model_is_measured_per_step_and_planned_by_policy() {
    let s = Setup::new("", TARGET);
    std::fs::write(s.path("t.mars"), translator_source()).expect("write source");
    // Greedy translations (checked in SPEC 4.3's tests): un, deux, vingt et un, trois cent
    // vingt et un: 1, 1, 3 and 5 words, each followed by the end token.
    std::fs::write(
        s.path("samples.jsonl"),
        "{\"text\": \"one\"}\n{\"text\": \"two\"}\n{\"text\": \"twenty one\"}\n{\"text\": \"three hundred twenty one\"}\n",
    )
    .expect("write samples");
    let out = Command::cargo_bin("marsc")
        .expect("marsc builds")
        .current_dir(s.dir.path())
        .args([
            "profile",
            "t.mars",
            "--target",
            "target.yaml",
            "-o",
            "t.profile.yaml",
        ])
        .args(["--input", "samples.jsonl"])
        .args(["--max-batch", "4", "--min-runs", "3", "--min-time-ms", "0"])
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        stderr.contains(
            "kind `Translator` generates: measured per decode step; its 4 sequences took 3.5 steps on average"
        ),
        "{stderr}"
    );
    let text = std::fs::read_to_string(s.path("t.profile.yaml")).expect("profile written");
    let p = Profile::from_yaml(&text, "t.profile.yaml").expect("the profile is valid");
    let lm = &p.nodes["Translator"];
    let h = lm.output_tokens.as_ref().expect("output lengths");
    assert_eq!(h.tokens, vec![2, 4, 6]);
    assert_eq!(h.share, vec![0.5, 0.25, 0.25]);
    // <bos> words <sep>: 3, 3, 4 and 6 tokens.
    assert_eq!(lm.prompt_tokens, Some(4.0));
    let cpu = lm.cpu.as_ref().expect("cpu");
    assert_eq!(cpu.batch, vec![1, 2, 4]);
    assert_eq!(cpu.latency_ms.len(), 3, "whole batches are measured too");
    for list in [&cpu.step_ms, &cpu.prefill_ms] {
        let list = list.as_ref().expect("per-step costs");
        assert_eq!(list.len(), 3);
        assert!(list.iter().all(|&v| v > 0.0), "{list:?}");
    }
    // Without `generate = true` the same model is measured by whole batches only.
    let plain = &p.nodes["Plain"];
    assert!(plain.output_tokens.is_none() && plain.prompt_tokens.is_none());
    let plain_cpu = plain.cpu.as_ref().expect("cpu");
    assert!(plain_cpu.step_ms.is_none() && plain_cpu.prefill_ms.is_none());

    // The planner predicts the three policies for the generating node and says which it chose.
    let out = Command::cargo_bin("marsc")
        .expect("marsc builds")
        .current_dir(s.dir.path())
        .args(["compile", "t.mars", "--profile", "t.profile.yaml"])
        .args(["--target", "target.yaml", "-o", "t.plan.yaml", "--explain"])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let section: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("generating nodes"))
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(section.len(), 5, "{stdout}");
    assert!(
        section[1].starts_with("  fr: output tokens mean 3.5, p50 2, p99 6"),
        "{stdout}"
    );
    for (line, policy) in section[2..].iter().zip(["none", "dynamic", "continuous"]) {
        assert!(line.trim_start().starts_with(policy), "{stdout}");
    }
    assert_eq!(
        section.iter().filter(|l| l.ends_with("← chosen")).count(),
        1,
        "{stdout}"
    );
    let plan_text = std::fs::read_to_string(s.path("t.plan.yaml")).expect("plan written");
    let plan = mars_plan::Plan::from_yaml(&plan_text, "t.plan.yaml").expect("valid plan");
    let chosen = section
        .iter()
        .find(|l| l.ends_with("← chosen"))
        .expect("one is chosen")
        .trim_start();
    let policy = plan.node("fr").expect("node fr").batch.policy;
    let name = match policy {
        mars_plan::BatchPolicy::None => "none",
        mars_plan::BatchPolicy::Dynamic => "dynamic",
        mars_plan::BatchPolicy::Continuous => "continuous",
    };
    assert!(chosen.starts_with(name), "{chosen} vs {policy:?}");
}
