//! GPU placement at compile time: a node whose kind has no GPU implementation (its `arch` or
//! `fn` is not declared `@gpu`) is refused for `@device(gpu)` with a diagnostic naming the
//! kind — a golden of the whole rendered stderr (`MARS_BLESS=1` rewrites it) — and a `@gpu`
//! kind is planned on the GPU.

use std::path::Path;

use assert_cmd::Command;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gpu")
}

fn compile(file: &str, out: &Path) -> std::process::Output {
    Command::cargo_bin("marsc")
        .expect("marsc builds")
        .current_dir(dir())
        .args(["compile", file, "--target", "../planner/one_gpu.yaml", "-o"])
        .arg(out)
        .output()
        .expect("marsc runs")
}

#[test]
fn a_kind_without_a_gpu_implementation_is_refused_for_a_gpu_placement() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = compile("segmenter_on_gpu.mars", &tmp.path().join("p.yaml"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let golden = dir().join("segmenter_on_gpu.stderr");
    if std::env::var_os("MARS_BLESS").is_some() {
        std::fs::write(&golden, &stderr).expect("write golden");
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert_eq!(stderr, expected, "golden mismatch (MARS_BLESS=1 to accept)");
    assert!(!tmp.path().join("p.yaml").exists(), "no plan is written");
}

#[test]
fn a_gpu_kind_is_planned_on_the_gpu() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let plan_path = tmp.path().join("p.yaml");
    let out = compile("translator_on_gpu.mars", &plan_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&plan_path).expect("plan written");
    let plan = mars_plan::Plan::from_yaml(&text, "p.yaml").expect("plan loads");
    let node = plan.nodes.iter().find(|n| n.id == "out").expect("node out");
    assert_eq!(node.gpu.as_deref(), Some("gpu0"), "{text}");
}
