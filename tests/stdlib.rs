//! End-to-end tests of the stdlib through the real `marsc`: both demo pipelines compile and run,
//! the translator's output is checked word for word, and the weights/samples commands work.

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

fn compile(source: &str, plan: &Path) {
    marsc()
        .args(["compile", source, "-o"])
        .arg(plan)
        .assert()
        .success();
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("results written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn title_translate_runs_end_to_end_and_translates_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = dir.path().join("title.plan.yaml");
    compile("pipelines/title_translate.mars", &plan);
    let input = dir.path().join("titles.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"title\": \"Pack of  twenty four AA batteries\"}\n",
            "{\"title\": \"Notebook, three hundred twenty one pages\"}\n",
            "{\"title\": \"Plain white mug\"}\n",
            "{\"title\": \"Box of two hundred staples and ninety nine clips\"}\n",
            "{\"title\": 7}\n",
        ),
    )
    .expect("write input");
    let out = dir.path().join("out.jsonl");
    marsc()
        .arg("run")
        .arg(&plan)
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["--ordered", "-q"])
        .assert()
        .success();
    let r = records(&out);
    assert_eq!(r.len(), 5);
    let ok = |i: usize| r[i]["ok"].clone();
    assert_eq!(
        ok(0),
        serde_json::json!({"title_fr": "Pack of vingt-quatre AA batteries", "numbers": 1})
    );
    assert_eq!(ok(1)["title_fr"], "Notebook, trois cent vingt et un pages");
    assert_eq!(
        ok(2),
        serde_json::json!({"title_fr": "Plain white mug", "numbers": 0})
    );
    assert_eq!(
        ok(3)["title_fr"],
        "Box of deux cents staples and quatre-vingt-dix-neuf clips"
    );
    // A title that is not text is that request's error, and the others went on.
    assert!(r[4]["error"]["message"].is_string(), "{}", r[4]);
}

#[test]
fn image_translate_runs_end_to_end_on_generated_samples() {
    let dir = tempfile::tempdir().expect("tempdir");
    marsc()
        .args(["weights", "samples", "-o"])
        .arg(dir.path())
        .assert()
        .success();
    let plan = dir.path().join("img.plan.yaml");
    compile("pipelines/image_translate.mars", &plan);
    let mut input =
        std::fs::read_to_string(dir.path().join("images.jsonl")).expect("requests written");
    // A corrupt image is that request's error, with the decoder's reason.
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nbroken").expect("write");
    input.push_str("{\"img\": {\"$file\": \"bad.png\"}}\n");
    std::fs::write(dir.path().join("images.jsonl"), input).expect("write");
    let out = dir.path().join("out.jsonl");
    marsc()
        .arg("run")
        .arg(&plan)
        .arg("-i")
        .arg(dir.path().join("images.jsonl"))
        .arg("-o")
        .arg(&out)
        .args(["--ordered", "-q"])
        .assert()
        .success();
    let r = records(&out);
    assert_eq!(r.len(), 5);
    for rec in &r[..4] {
        // The segmenter and OCR weights are random: only the shape of the result is checked.
        let b64 = rec["ok"]["out"]["$base64"]
            .as_str()
            .unwrap_or_else(|| panic!("an image: {rec}"));
        assert!(b64.starts_with("iVBORw0KGgo"), "a PNG");
        assert!(rec["ok"]["n_boxes"].is_i64(), "{rec}");
    }
    let msg = r[4]["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("cannot decode image"), "{}", r[4]);

    // With --files-dir the output images are written to disk and the records name them.
    let files = dir.path().join("images_out");
    let out2 = dir.path().join("out2.jsonl");
    marsc()
        .arg("run")
        .arg(&plan)
        .arg("-i")
        .arg(dir.path().join("images.jsonl"))
        .arg("-o")
        .arg(&out2)
        .arg("--files-dir")
        .arg(&files)
        .args(["--ordered", "-q"])
        .assert()
        .success();
    let r2 = records(&out2);
    assert_eq!(r2.len(), 5);
    for (i, rec) in r2[..4].iter().enumerate() {
        let path = rec["ok"]["out"]["$file"]
            .as_str()
            .unwrap_or_else(|| panic!("a file: {rec}"));
        assert_eq!(
            std::path::Path::new(path),
            files.join(format!("{}-out.png", i + 1))
        );
        let png = std::fs::read(path).expect("the image is on disk");
        // The same image as the base64 run wrote.
        let b64 = r[i]["ok"]["out"]["$base64"].as_str().expect("base64");
        assert_eq!(mars_runtime::codec::base64_encode(&png), b64);
    }
    assert!(r2[4]["error"].is_object());
}

#[test]
fn weights_init_is_deterministic_and_refuses_unknown_architectures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    for p in [&a, &b] {
        marsc()
            .args(["weights", "init", "--arch", "crnn_tiny", "-o"])
            .arg(p)
            .assert()
            .success();
    }
    assert!(
        std::fs::read(&a).expect("a") == std::fs::read(&b).expect("b"),
        "two runs of `weights init` wrote different files"
    );
    let out = marsc()
        .args(["weights", "init", "--arch", "resnet", "-o"])
        .arg(dir.path().join("c.safetensors"))
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains("unknown --arch `resnet`"), "{stderr}");
}
