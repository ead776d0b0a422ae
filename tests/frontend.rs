//! End-to-end tests of the front-end commands as a user runs them: `marsc check`, `marsc fmt`,
//! `marsc graph`, on real files.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn marsc() -> Command {
    Command::cargo_bin("marsc").expect("the marsc binary is built")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_passes_the_example_pipeline() {
    let out = marsc()
        .arg("check")
        .arg(root().join("pipelines/image_translate.mars"))
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("checked 1 file: 0 errors, 0 warnings"));
}

#[test]
fn check_reports_every_error_with_its_location_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(
        dir.path(),
        "bad.mars",
        "use std.text.{lower}\npipeline p(x: Text) -> (y: Text, z: Int) {\n  let a = lowr(x)\n  y = lower(3)\n}\n",
    );
    let out = marsc().arg("check").arg(&f).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    for needle in [
        "mars::resolve::unknown_name",
        "did you mean `lower`?",
        "mars::type::mismatch",
        "mars::pipeline::output_missing",
        "bad.mars:3:11",
        "3 errors, 1 warning",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"));
}

#[test]
fn warnings_pass_unless_denied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(dir.path(), "w.mars", "use std.text.{lower}\npipeline p(x: Text) -> (y: Text) {\n  let unused = lower(x)\n  y = lower(x)\n}\n");
    let out = marsc().arg("check").arg(&f).output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("mars::lint::unused_binding"));
    let out = marsc()
        .args(["check", "--deny-warnings"])
        .arg(&f)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn hostile_inputs_get_an_answer_not_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let utf8 = write(dir.path(), "latin1.mars", b"// caf\xe9\n".as_slice());
    let empty = write(dir.path(), "empty.mars", "");
    let deep = write(
        dir.path(),
        "deep.mars",
        format!(
            "use std.text.{{lower}}\npipeline p(x: Text) -> (y: Text) {{\n  y = {}x{}\n}}\n",
            "lower(".repeat(3000),
            ")".repeat(3000)
        ),
    );
    let cases = [
        (utf8, 1, "mars::syntax::invalid_utf8"),
        (empty, 0, "0 errors"),
        (deep, 1, "mars::syntax::too_deep"),
    ];
    for (file, code, needle) in cases {
        let out = marsc().arg("check").arg(&file).output().expect("runs");
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}: {}",
            file.display(),
            stderr_of(&out)
        );
        assert!(stderr_of(&out).contains(needle), "{}", stderr_of(&out));
    }
    let out = marsc()
        .arg("check")
        .arg(dir.path().join("missing.mars"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("mars::io::read"));
}

/// A pipeline at the node limit (SPEC 7.1: 10,000 nodes) checks; twice as many is refused.
#[test]
fn a_pipeline_at_the_node_limit_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = |n: usize| {
        let mut text = String::from(
            "use std.text.{lower}\npipeline big(x: Text) -> (y: Text) {\n  let a0 = lower(x)\n",
        );
        for i in 1..n - 1 {
            text.push_str(&format!("  let a{i} = lower(a{})\n", i - 1));
        }
        text.push_str(&format!("  y = lower(a{})\n}}\n", n - 2));
        text
    };
    let f = write(dir.path(), "big.mars", chain(10_000));
    let out = marsc().arg("check").arg(&f).output().expect("runs");
    assert!(out.status.success(), "{}", stderr_of(&out));
    let f = write(dir.path(), "bigger.mars", chain(20_000));
    let out = marsc().arg("check").arg(&f).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("mars::pipeline::too_many_nodes"));
}

#[test]
fn fmt_check_reports_and_fmt_rewrites_canonically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let messy = "use std.text.{lower}\npipeline p( x:Text )->( y:Text ){\n// keep me\ny=lower( x )@device( cpu )\n}\n";
    let f = write(dir.path(), "m.mars", messy);
    let out = marsc()
        .args(["fmt", "--check"])
        .arg(&f)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("would reformat"));
    assert_eq!(
        std::fs::read_to_string(&f).expect("read"),
        messy,
        "--check writes nothing"
    );
    marsc().arg("fmt").arg(&f).assert().success();
    let formatted = std::fs::read_to_string(&f).expect("read");
    assert_eq!(formatted, "use std.text.{lower}\n\npipeline p(x: Text) -> (y: Text) {\n  // keep me\n  y = lower(x)   @device(cpu)\n}\n");
    marsc().args(["fmt", "--check"]).arg(&f).assert().success();
    marsc()
        .args(["fmt", "--check"])
        .arg(root().join("pipelines/image_translate.mars"))
        .assert()
        .success();
    let broken = write(dir.path(), "broken.mars", "pipeline (");
    let out = marsc().arg("fmt").arg(&broken).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("mars::syntax::unexpected"));
}

#[test]
fn graph_prints_dot_and_json() {
    let example = root().join("pipelines/image_translate.mars");
    let out = marsc().arg("graph").arg(&example).output().expect("runs");
    assert!(out.status.success(), "{}", stderr_of(&out));
    let dot = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(dot.starts_with("digraph \"image_translate\" {"));
    assert!(
        dot.contains("@device(any)")
            && dot.contains("model unet_tiny")
            && dot.contains("[label=\"List<Box>\"]")
    );
    assert_eq!(dot.matches('{').count(), dot.matches('}').count());
    // Where Graphviz is installed, it must accept the output.
    if let Ok(mut child) = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(dot.as_bytes())
            .expect("write to dot");
        let rendered = child.wait_with_output().expect("dot runs");
        assert!(
            rendered.status.success(),
            "dot rejected the graph: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        assert!(String::from_utf8_lossy(&rendered.stdout).contains("<svg"));
    }

    let out = marsc()
        .args(["graph", "--format", "json", "--pipeline", "image_translate"])
        .arg(&example)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json["pipeline"], "image_translate");
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(10));
    assert!(json["edges"].as_array().is_some_and(|e| e
        .iter()
        .any(|e| e["from"] == "words.crop" && e["to"] == "words" && e["type"] == "List<Image>")));

    let out = marsc()
        .args(["graph", "--pipeline", "nope"])
        .arg(&example)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("image_translate"));
}

#[test]
fn graph_of_a_file_with_errors_fails_with_the_diagnostics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(
        dir.path(),
        "e.mars",
        "pipeline p(x: Text) -> (y: Text) {\n  y = nope(x)\n}\n",
    );
    let out = marsc().arg("graph").arg(&f).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("mars::resolve::unknown_name"));
    assert!(out.stdout.is_empty());
}
