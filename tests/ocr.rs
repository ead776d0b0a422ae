//! PP-OCRv4 through `arch = "onnx"` and `std.ocr`, end to end through `marsc run`, on images
//! the project renders itself (`mars_stdlib::ocr::render`, Debian fonts): reading English and
//! Chinese lines, an ONNX port that does not match the graph, and the product-image pipeline.
//!
//! The models come from the model store: `marsc models pull ppocr-v4-det`, `marsc models pull
//! ppocr-v4-rec` (and `gemma-3-270m` for the pipeline, see `gemma_pulled`). Without them these tests say
//! so and pass, unless `MARS_REQUIRE_MODELS=1` (set by `.ci/run`, which pulls them), where a
//! missing model fails them. The fonts (fonts-dejavu-core, fonts-wqy-microhei,
//! fonts-wqy-zenhei, fonts-arphic-uming) must be installed.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use mars_stdlib::image::{encode, Format};
use mars_stdlib::ocr::{edit_distance, render};
use mars_stdlib::store::Store;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn marsc() -> Command {
    let mut c = Command::cargo_bin("marsc").expect("marsc is built");
    c.current_dir(root());
    c
}

/// Whether every model is pulled (see the module documentation).
fn models(names: &[&str]) -> bool {
    let store = Store::from_env().expect("manifest");
    for n in names {
        if let Err(e) = store.resolve(&format!("model:{n}")) {
            if std::env::var("MARS_REQUIRE_MODELS").as_deref() == Ok("1") {
                panic!("MARS_REQUIRE_MODELS=1 but: {}", e.0);
            }
            eprintln!("SKIPPED (model not pulled): {}", e.0);
            return false;
        }
    }
    true
}

/// Whether Gemma-3-270m is pulled; a missing one fails only under `MARS_REQUIRE_GEMMA=1`.
fn gemma_pulled() -> bool {
    let store = Store::from_env().expect("manifest");
    match store.resolve("model:gemma-3-270m") {
        Ok(_) => true,
        Err(e) if std::env::var("MARS_REQUIRE_GEMMA").as_deref() == Ok("1") => {
            panic!("MARS_REQUIRE_GEMMA=1 but: {}", e.0)
        }
        Err(e) => {
            eprintln!(
                "SKIPPED (Gemma not pulled; MARS_REQUIRE_GEMMA is not 1): {}",
                e.0
            );
            false
        }
    }
}

/// Render scenes as PNGs into `dir` with a request file naming them; returns its path.
fn write_requests(dir: &Path, scenes: &[render::Scene]) -> PathBuf {
    let mut lines = String::new();
    for (i, s) in scenes.iter().enumerate() {
        let (img, _) = render::render(s, Path::new(".")).expect("renders (fonts installed?)");
        let name = format!("img_{i}.png");
        std::fs::write(dir.join(&name), encode(&img, Format::Png).expect("png")).expect("write");
        lines.push_str(&format!("{{\"img\": {{\"$file\": \"{name}\"}}}}\n"));
    }
    let path = dir.join("requests.jsonl");
    std::fs::write(&path, lines).expect("write requests");
    path
}

fn compile(source: &str, plan: &Path) {
    marsc()
        .args(["compile", source, "-o"])
        .arg(plan)
        .assert()
        .success();
}

fn run(plan: &Path, input: &Path, out: &Path, extra: &[&str]) {
    marsc()
        .arg("run")
        .arg(plan)
        .arg("-i")
        .arg(input)
        .arg("-o")
        .arg(out)
        .args(["--ordered", "-q"])
        .args(extra)
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

fn texts(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|t| t.as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn reads_rendered_english_and_chinese_lines() {
    if !models(&["ppocr-v4-det", "ppocr-v4-rec"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let scenes: Vec<render::Scene> = (0..6).map(|i| render::accuracy_scene(11, i)).collect();
    let input = write_requests(dir.path(), &scenes);
    let plan = dir.path().join("read.plan.yaml");
    compile("tests/ocr/read_text.mars", &plan);
    let out = dir.path().join("out.jsonl");
    run(&plan, &input, &out, &[]);
    let r = records(&out);
    assert_eq!(r.len(), scenes.len());
    let (mut errors, mut chars) = (0, 0);
    for (rec, scene) in r.iter().zip(&scenes) {
        let got = texts(&rec["ok"]["texts"]).join("\n");
        let want: Vec<&str> = scene.lines.iter().map(|l| l.text.as_str()).collect();
        let want = want.join("\n");
        errors += edit_distance(&got, &want);
        chars += want.chars().count();
        assert_eq!(
            rec["ok"]["boxes"].as_array().map(Vec::len),
            Some(scene.lines.len()),
            "one box per line: {rec}"
        );
    }
    let accuracy = 1.0 - errors as f64 / chars as f64;
    assert!(
        accuracy >= 0.95,
        "character accuracy {accuracy:.3} ({errors} errors in {chars})"
    );
}

#[test]
fn an_onnx_port_that_does_not_match_the_graph_is_refused() {
    if !models(&["ppocr-v4-det"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write_requests(dir.path(), &[render::accuracy_scene(1, 0)]);
    let plan = dir.path().join("wrong.plan.yaml");
    compile("tests/ocr/wrong_port.mars", &plan);
    // The graph's output shape is known only once it runs (PP-OCR's ONNX file leaves it
    // symbolic), so the mismatch fails the request with a record naming the port, the
    // declared type and the graph's shape; the run itself goes on.
    let records = dir.path().join("out.jsonl");
    marsc()
        .arg("run")
        .arg(&plan)
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(&records)
        .arg("-q")
        .assert()
        .success();
    let text = std::fs::read_to_string(&records).expect("records");
    assert!(
        text.contains("out port 0 is declared `Tensor<f32, [2, H, W]>`, but axis 0 of the graph's output is 1"),
        "{text}"
    );
}

#[test]
fn product_image_translate_writes_images_end_to_end() {
    // The pipeline translates with Gemma-3-270m (Gemma Terms of Use, not open source), which
    // CI may leave out: required only under MARS_REQUIRE_GEMMA=1.
    if !models(&["ppocr-v4-det", "ppocr-v4-rec"]) || !gemma_pulled() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let scenes: Vec<render::Scene> = (0..2).map(render::product_scene).collect();
    let input = write_requests(dir.path(), &scenes);
    let mut requests = std::fs::read_to_string(&input).expect("requests");
    std::fs::write(dir.path().join("bad.png"), b"\x89PNG\r\n\x1a\nbroken").expect("write");
    requests.push_str("{\"img\": {\"$file\": \"bad.png\"}}\n");
    std::fs::write(&input, requests).expect("write");
    let plan = dir.path().join("product.plan.yaml");
    compile("pipelines/product_image_translate.mars", &plan);
    let out = dir.path().join("out.jsonl");
    let files = dir.path().join("files");
    run(
        &plan,
        &input,
        &out,
        &["--files-dir", files.to_str().expect("utf-8 path")],
    );
    let r = records(&out);
    assert_eq!(r.len(), 3);
    for (rec, scene) in r.iter().zip(&scenes) {
        let chinese = texts(&rec["ok"]["chinese"]);
        let want: Vec<String> = scene.lines.iter().map(|l| l.text.clone()).collect();
        let errors = edit_distance(&chinese.join("\n"), &want.join("\n"));
        assert!(errors <= 2, "read {chinese:?}, rendered {want:?}");
        let english = texts(&rec["ok"]["english"]);
        assert_eq!(english.len(), chinese.len());
        let name = rec["ok"]["out"]["$file"]
            .as_str()
            .unwrap_or_else(|| panic!("{rec}"));
        let png = std::fs::read(out.parent().expect("dir").join(name))
            .or_else(|_| std::fs::read(files.join(Path::new(name).file_name().expect("name"))))
            .expect("the image was written");
        let img = mars_stdlib::image::decode(&png).expect("a PNG");
        assert_eq!((img.width, img.height), (scene.width, scene.height));
    }
    let msg = r[2]["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("cannot decode image"), "{}", r[2]);
}

/// The product images shipped in `pipelines/data/products/` (the sample input of
/// `pipelines/product_image_translate.mars`, `pipelines/data/products.jsonl`) are
/// `render::product_scene(0..6)` drawn with the Debian fonts. `MARS_BLESS=1` writes them
/// again; otherwise each must match its scene as rendered now, pixel for pixel up to a mean
/// difference of 2 levels (a font package's hinting may move a few edge pixels).
#[test]
fn shipped_product_samples_are_the_rendered_product_scenes() {
    let dir = root().join("pipelines/data/products");
    let bless = std::env::var("MARS_BLESS").as_deref() == Ok("1");
    let mut requests = String::new();
    for i in 0..6u64 {
        let (img, _) =
            render::render(&render::product_scene(i), Path::new(".")).expect("renders (fonts?)");
        let name = format!("product_{i}.png");
        requests.push_str(&format!(
            "{{\"img\": {{\"$file\": \"products/{name}\"}}}}\n"
        ));
        if bless {
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join(&name), encode(&img, Format::Png).expect("png"))
                .expect("write");
            continue;
        }
        let bytes =
            std::fs::read(dir.join(&name)).expect("a shipped sample (MARS_BLESS=1 writes it)");
        let shipped = mars_stdlib::image::decode(&bytes).expect("a PNG");
        assert_eq!(
            (shipped.width, shipped.height),
            (img.width, img.height),
            "{name}"
        );
        let diff: u64 = shipped
            .rgb
            .iter()
            .zip(&img.rgb)
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum();
        let mean = diff as f64 / img.rgb.len() as f64;
        assert!(
            mean < 2.0,
            "{name}: mean difference {mean:.2} from its scene"
        );
    }
    let list = root().join("pipelines/data/products.jsonl");
    if bless {
        std::fs::write(&list, &requests).expect("write");
    }
    assert_eq!(
        std::fs::read_to_string(&list).expect("products.jsonl"),
        requests
    );
}
