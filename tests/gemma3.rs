//! Gemma-3-270m (`arch = "gemma3"`) against an independent reference, and through `marsc run`.
//! Gemma-3-270m is under the Gemma Terms of Use, which are NOT an open-source license.
//!
//! The reference (`tests/llm/gemma3_reference.json`) was made by
//! `tests/llm/make_gemma3_reference.py`: numpy reading the GGUF with the `gguf` package, prompts
//! tokenized by a SentencePiece-BPE encoder written in that script after llama.cpp's. These
//! tests need the model in the store (`marsc models pull gemma-3-270m`, 253 MB); without it
//! they say so and pass, unless `MARS_REQUIRE_GEMMA=1`, where a missing model fails them
//! (`MARS_REQUIRE_MODELS=1` alone does not require Gemma: CI may leave it out).

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use mars_stdlib::models::chat::{greedy, ChatModel};

#[path = "support/models.rs"]
mod models;

const MODEL: &str = "gemma-3-270m";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The stored model's file, or `None` (test skipped) when it is not pulled.
fn model_path() -> Option<PathBuf> {
    models::stored_model(MODEL, "MARS_REQUIRE_GEMMA")
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("tests/llm/gemma3_reference.json"))
        .expect("reference file");
    serde_json::from_str(&text).expect("reference JSON")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn gemma3_tokens_and_greedy_decoding_equal_the_numpy_reference() {
    let Some(path) = model_path() else { return };
    let model = ChatModel::load(&path, 512).expect("load");
    let r = reference();
    for case in r["tokenize"].as_array().expect("tokenize") {
        let text = case["text"].as_str().expect("text");
        let got = model
            .tokenizer
            .encode(text, false)
            .expect("encode")
            .get_ids()
            .to_vec();
        assert_eq!(got, ids(&case["ids"]), "pieces of {text:?}");
    }
    let max_new = r["max_new_tokens"].as_u64().expect("max") as usize;
    let cases = r["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10);
    for case in cases {
        let prompt = case["prompt"].as_str().expect("prompt");
        let got_prompt = model.encode(prompt).expect("encode");
        assert_eq!(
            got_prompt,
            ids(&case["prompt_ids"]),
            "prompt ids of {prompt:?}"
        );
        let got = greedy(&model, &got_prompt, max_new).expect("generate");
        assert_eq!(
            got,
            ids(&case["generated"]),
            "greedy tokens of {prompt:?}: got {:?}",
            model.decode(&got)
        );
        assert_eq!(model.decode(&got), case["text"].as_str().expect("text"));
    }
}

fn marsc(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("marsc").expect("marsc is built");
    c.current_dir(dir);
    c
}

/// The Gemma few-shot translator of the image pipeline under continuous batching through
/// `marsc run`: every answer equals the reference's greedy translation.
#[test]
fn gemma3_translates_under_continuous_batching_through_marsc_run() {
    if model_path().is_none() {
        return;
    }
    let r = reference();
    let dir = tempfile::tempdir().expect("tempdir");
    // The reference's few-shot prompts end with "Chinese: {zh}\nEnglish:".
    let mut requests = String::new();
    let mut want = Vec::new();
    for case in r["cases"].as_array().expect("cases") {
        let prompt = case["prompt"].as_str().expect("prompt");
        let Some(rest) = prompt
            .rsplit("\nChinese: ")
            .next()
            .filter(|_| prompt.ends_with("\nEnglish:"))
        else {
            continue;
        };
        let zh = rest.trim_end_matches("\nEnglish:");
        requests.push_str(&serde_json::json!({ "zh": zh }).to_string());
        requests.push('\n');
        let text = case["text"].as_str().expect("text");
        want.push(text.split('\n').next().unwrap_or("").trim().to_string());
    }
    assert!(want.len() >= 5, "few-shot cases in the reference");
    let prefix = {
        let p = r["cases"][0]["prompt"].as_str().expect("prompt");
        p[..p.rfind("Chinese: ").expect("marker")].to_string()
    };
    let template = format!("{prefix}Chinese: {{message}}\nEnglish:");
    let src = format!(
        "model Gemma {{\n  arch = \"gemma3\"\n  weights = \"model:{MODEL}\"\n  max_tokens = 16\n  \
         max_positions = 256\n  prompt = {}\n  stop = \"\\n\"\n  in zh: Text\n  out en: Text\n}}\n\n\
         pipeline translate(zh: Text) -> (en: Text) {{\n  en = Gemma(zh) @batch(continuous, max = 8)\n}}\n",
        serde_json::to_string(&template).expect("quoted")
    );
    std::fs::write(dir.path().join("t.mars"), src).expect("write");
    std::fs::write(dir.path().join("in.jsonl"), requests).expect("write");
    marsc(dir.path())
        .args(["compile", "t.mars", "-o", "t.plan.yaml"])
        .assert()
        .success();
    marsc(dir.path())
        .args([
            "run",
            "t.plan.yaml",
            "-i",
            "in.jsonl",
            "-o",
            "out.jsonl",
            "--ordered",
            "-q",
        ])
        .assert()
        .success();
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("output");
    let got: Vec<String> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("record");
            v["ok"]["en"]
                .as_str()
                .unwrap_or_else(|| panic!("an error record: {l}"))
                .to_string()
        })
        .collect();
    assert_eq!(got, want);
}
