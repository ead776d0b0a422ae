//! `marsc target detect` on this machine: a target file that loads, with the machine's cores,
//! and GPUs only where a CUDA driver reports them (here usually none: a CPU-only target and a
//! note saying why).

use assert_cmd::Command;

#[test]
fn target_detect_writes_a_target_of_this_machine_that_plans_compile_against() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::cargo_bin("marsc")
        .expect("marsc builds")
        .current_dir(dir.path())
        .args(["target", "detect", "-o", "here.yaml", "--name", "w0"])
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    let text = std::fs::read_to_string(dir.path().join("here.yaml")).expect("written");
    let target = mars_plan::Target::from_yaml(&text, "here.yaml").expect("loads");
    let w = &target.workers[0];
    assert_eq!(w.name, "w0");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(w.cpus, cores as f64);
    assert!(w.memory_gb > 0.0, "{text}");
    match mars_cuda::probe::gpus() {
        Ok(gpus) => {
            assert_eq!(w.gpus.len(), gpus.len(), "{text}");
            assert!(text.contains("SMs, compute capability"), "{text}");
        }
        Err(why) => {
            assert!(w.gpus.is_empty(), "{text}");
            assert!(text.contains(&format!("# no GPU: {why}")), "{text}");
            assert!(stderr.contains("note: a CPU-only target"), "{stderr}");
        }
    }

    // A pipeline compiles against it.
    std::fs::write(
        dir.path().join("app.mars"),
        "use std.text.{lower}\n\npipeline app(text: Text) -> (out: Text) {\n  out = lower(text)\n}\n",
    )
    .expect("write source");
    Command::cargo_bin("marsc")
        .expect("marsc builds")
        .current_dir(dir.path())
        .args([
            "compile",
            "app.mars",
            "--target",
            "here.yaml",
            "-o",
            "app.plan.yaml",
        ])
        .assert()
        .success();
}

#[test]
fn target_detect_prints_to_stdout_without_an_output_file() {
    let out = Command::cargo_bin("marsc")
        .expect("marsc builds")
        .args(["target", "detect"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let t = mars_plan::Target::from_yaml(&text, "stdout").expect("loads");
    assert_eq!(t.workers[0].name, "local");
}
