//! SmolLM2-135M-Instruct (`arch = "llama"`) against an independent reference, and under
//! continuous batching end to end.
//!
//! The reference (`tests/llm/smollm2_reference.json`) was made by `tests/llm/make_reference.py`:
//! numpy reading the GGUF with the `gguf` package, prompts tokenized by the `tokenizers` PyPI
//! package. These tests need the model in the store (`marsc models pull
//! smollm2-135m-instruct`); without it they say so and pass, unless `MARS_REQUIRE_MODELS=1`
//! (set by `.ci/run`, which pulls it), where a missing model fails them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use mars_stdlib::models::chat::{greedy, ChatModel};
use mars_stdlib::store::Store;

#[path = "support/models.rs"]
mod models;

const MODEL: &str = "smollm2-135m-instruct";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The stored model's file, or `None` (test skipped) when it is not pulled.
fn model_path() -> Option<PathBuf> {
    models::stored_model(MODEL, "MARS_REQUIRE_MODELS")
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("tests/llm/smollm2_reference.json"))
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
fn smollm2_greedy_tokens_equal_the_numpy_reference() {
    let Some(path) = model_path() else { return };
    let model = ChatModel::load(&path, 512).expect("load");
    let r = reference();
    let system = r["system"].as_str().expect("system");
    let max_new = r["max_new_tokens"].as_u64().expect("max") as usize;
    let cases = r["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10);
    for case in cases {
        let prompt = case["prompt"].as_str().expect("prompt");
        let text = model.template.render(Some(system), prompt);
        let got_prompt = model.encode(&text).expect("encode");
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

/// Answers by request id of a one-node chat pipeline under `annotation`.
fn answers(dir: &Path, name: &str, annotation: &str, input: &Path) -> BTreeMap<u64, String> {
    let src = format!(
        "model Chat {{\n  arch = \"llama\"\n  weights = \"model:{MODEL}\"\n  max_tokens = 24\n  \
         max_positions = 512\n  in question: Text\n  out answer: Text\n}}\n\n\
         pipeline chat(question: Text) -> (answer: Text) {{\n  answer = Chat(question) {annotation}\n}}\n"
    );
    let mars = dir.join(format!("{name}.mars"));
    std::fs::write(&mars, src).expect("write");
    let plan = dir.join(format!("{name}.plan.yaml"));
    marsc(dir)
        .args(["compile", &format!("{name}.mars"), "-o"])
        .arg(&plan)
        .assert()
        .success();
    let out = dir.join(format!("{name}.out.jsonl"));
    marsc(dir)
        .arg("run")
        .arg(&plan)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(&out)
        .arg("--quiet")
        .assert()
        .success();
    std::fs::read_to_string(&out)
        .expect("output")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("record");
            let id = v["id"].as_u64().expect("id");
            let a = v["ok"]["answer"]
                .as_str()
                .unwrap_or_else(|| panic!("an error record: {l}"))
                .to_string();
            (id, a)
        })
        .collect()
}

#[test]
fn continuous_batching_gives_the_answers_of_one_at_a_time_decoding() {
    if model_path().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let r = reference();
    let input = dir.path().join("q.jsonl");
    let lines: Vec<String> = r["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .take(8)
        .map(|c| serde_json::json!({ "question": c["prompt"] }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").expect("input");
    let one = answers(dir.path(), "one", "@batch(none)", &input);
    let cont = answers(dir.path(), "cont", "@batch(continuous, max = 8)", &input);
    assert_eq!(one.len(), 8);
    assert_eq!(one, cont);
    // And both are the reference's answers (greedy, the reference's system message is the
    // template's default).
    for (i, c) in r["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .take(8)
        .enumerate()
    {
        assert_eq!(
            one[&(i as u64 + 1)],
            c["text"].as_str().expect("text").trim(),
            "{}",
            c["prompt"]
        );
    }
}

fn embedder_present() -> bool {
    let store = Store::from_env().expect("manifest");
    match store.resolve("model:all-minilm-l6-v2") {
        Ok(_) => true,
        Err(e) if std::env::var("MARS_REQUIRE_MODELS").as_deref() == Ok("1") => {
            panic!("MARS_REQUIRE_MODELS=1 but: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED (model not pulled): {e}");
            false
        }
    }
}

/// Top-1 retrieval over the FAQ on the 56 paraphrased questions of
/// `pipelines/data/faq_questions.jsonl`, through the library (measured: 52 of 56).
#[test]
fn retrieval_finds_the_right_faq_passage_for_most_paraphrases() {
    if !embedder_present() {
        return;
    }
    use mars_stdlib::models::bert::Bert;
    use mars_stdlib::vector::{read_corpus, Index};
    let store = Store::from_env().expect("manifest");
    let w = store
        .resolve("model:all-minilm-l6-v2")
        .expect("pulled")
        .path;
    let bert = Bert::load(&w, 256).expect("load");
    let data = root().join("pipelines/data");
    let passages = read_corpus(&data.join("faq.jsonl"), "text").expect("corpus");
    let ids = read_corpus(&data.join("faq.jsonl"), "id").expect("ids");
    let index = Index::build(&bert, passages).expect("index");
    let questions = std::fs::read_to_string(data.join("faq_questions.jsonl")).expect("questions");
    let (mut hits, mut n) = (0, 0);
    for line in questions.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let q = bert
            .embed(v["question"].as_str().expect("q"))
            .expect("embed");
        let best = index.top_k(&q, 3).expect("top");
        assert_eq!(best.len(), 3);
        n += 1;
        if ids[best[0]] == v["expect"].as_str().expect("expect") {
            hits += 1;
        }
    }
    assert!(n >= 50);
    assert!(hits * 100 >= n * 85, "top-1 {hits}/{n}");
}

/// `pipelines/support_chat.mars` end to end through `marsc compile` and `marsc run`: every
/// request answered, with its three FAQ passages, and the battery question's answer uses the
/// battery passage.
#[test]
fn support_chat_answers_from_the_faq_end_to_end() {
    if model_path().is_none() || !embedder_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pipelines = root().join("pipelines");
    let plan = dir.path().join("support_chat.plan.yaml");
    marsc(&pipelines)
        .args([
            "compile",
            "support_chat.mars",
            "--target",
            "targets/local.yaml",
            "-o",
        ])
        .arg(&plan)
        .assert()
        .success();
    let out = dir.path().join("out.jsonl");
    marsc(&pipelines)
        .arg("run")
        .arg(&plan)
        .args([
            "--input",
            "data/support_requests.jsonl",
            "--ordered",
            "--quiet",
            "--output",
        ])
        .arg(&out)
        .assert()
        .success();
    let text = std::fs::read_to_string(&out).expect("output");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    assert_eq!(records.len(), 8);
    for r in &records {
        let ok = &r["ok"];
        assert!(!ok["answer"].as_str().expect("answer").is_empty(), "{r}");
        assert_eq!(ok["sources"].as_array().expect("sources").len(), 3, "{r}");
    }
    let battery = &records[0]["ok"];
    assert!(
        battery["sources"][0]
            .as_str()
            .expect("source")
            .contains("12 hours"),
        "{battery}"
    );
    assert!(
        battery["answer"].as_str().expect("answer").contains("12"),
        "{battery}"
    );
}

/// `std.text.compress_prompt` with the real scorer: the instruction and the question stay
/// verbatim, about `ratio` of the passages' tokens go, `ratio = 0` changes nothing, and the
/// passages' facts (numbers: high surprisal) survive.
#[test]
fn compress_prompt_drops_the_least_informative_context_words_and_keeps_the_question() {
    use mars_stdlib::models::compress::Compressor;
    let Some(path) = model_path() else { return };
    let faq = std::fs::read_to_string(root().join("pipelines/data/faq_long.jsonl")).expect("faq");
    let passages: Vec<String> = faq
        .lines()
        .take(4)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["text"].as_str().expect("text").to_string()
        })
        .collect();
    let mut prompt = format!("{}\n", mars_stdlib::vector::DEFAULT_INSTRUCTION);
    for p in &passages {
        prompt.push_str(&format!("- {p}\n"));
    }
    prompt.push_str("\nQuestion: How long does standard shipping take?");
    let mut none = Compressor::load(&path, 0.0, true).expect("load");
    assert_eq!(none.compress(&prompt).expect("compress"), prompt);
    let mut c = Compressor::load(&path, 0.4, true).expect("load");
    let short = c.compress(&prompt).expect("compress");
    let lines: Vec<&str> = short.lines().collect();
    assert_eq!(lines[0], mars_stdlib::vector::DEFAULT_INSTRUCTION);
    assert_eq!(
        lines.last(),
        Some(&"Question: How long does standard shipping take?")
    );
    assert_eq!(
        lines.len(),
        prompt.lines().count(),
        "one line per passage still"
    );
    // Tokens of the passages before and after: at least 40% of them are gone, and not much
    // more (a dropped word takes all of its tokens).
    let context_tokens = |text: &str| -> usize {
        text.lines()
            .filter_map(|l| l.strip_prefix("- "))
            .map(|l| c.tokens(l).expect("tokens"))
            .sum()
    };
    let (before, after) = (context_tokens(&prompt), context_tokens(&short));
    let dropped = 1.0 - after as f64 / before as f64;
    assert!(
        (0.35..0.5).contains(&dropped),
        "{dropped:.3} of {before} context tokens dropped:\n{short}"
    );
    // Every kept word is a word of its passage, in order.
    for (orig, kept) in passages.iter().zip(lines[1..].iter()) {
        let kept = kept.strip_prefix("- ").expect("a passage line");
        let mut words = orig.split_whitespace();
        for w in kept.split_whitespace() {
            assert!(words.any(|o| o == w), "`{w}` is not next in `{orig}`");
        }
    }
    // The facts of the shipping passage survive: words with digits are kept.
    for fact in ["3", "5", "1", "2"] {
        assert!(
            lines[1]
                .split_whitespace()
                .any(|w| w.trim_matches(|c: char| !c.is_ascii_digit()) == fact),
            "{fact} lost: {}",
            lines[1]
        );
    }
    // Scores are kept per passage: the same prompt again scores nothing.
    let scored = c.scored;
    assert_eq!(c.compress(&prompt).expect("again"), short);
    assert_eq!(c.scored, scored);
    assert!(c.cached >= passages.len() as u64);
}

/// `pipelines/support_chat_long.mars` compiles and runs end to end: the compressed prompt keeps
/// the question, is shorter than the full one would be, and the answer is there.
#[test]
fn support_chat_long_compresses_its_prompt_before_the_generator() {
    if model_path().is_none() || !embedder_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pipelines = root().join("pipelines");
    let plan = dir.path().join("support_chat_long.plan.yaml");
    marsc(&pipelines)
        .args([
            "compile",
            "support_chat_long.mars",
            "--target",
            "targets/local.yaml",
            "-o",
        ])
        .arg(&plan)
        .assert()
        .success();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"question\": \"How long does the battery last?\"}\n",
    )
    .expect("writes");
    let out = dir.path().join("out.jsonl");
    marsc(&pipelines)
        .arg("run")
        .arg(&plan)
        .arg("--input")
        .arg(&input)
        .args(["--quiet", "--output"])
        .arg(&out)
        .assert()
        .success();
    let text = std::fs::read_to_string(&out).expect("output");
    let r: serde_json::Value = serde_json::from_str(text.trim()).expect("record");
    let ok = &r["ok"];
    let prompt = ok["prompt"].as_str().expect("prompt");
    assert!(
        prompt.ends_with("\nQuestion: How long does the battery last?"),
        "{prompt}"
    );
    assert_eq!(
        prompt.lines().filter(|l| l.starts_with("- ")).count(),
        14,
        "{prompt}"
    );
    // Each passage line is a passage of the corpus with words left out, in order; together
    // they keep well under 80% of their passages' words.
    let corpus: Vec<String> = std::fs::read_to_string(pipelines.join("data/faq_long.jsonl"))
        .expect("faq")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["text"].as_str().expect("text").to_string()
        })
        .collect();
    let subsequence = |kept: &str, of: &str| {
        let mut words = of.split_whitespace();
        kept.split_whitespace().all(|w| words.any(|o| o == w))
    };
    let (mut kept, mut source) = (0, 0);
    for line in prompt.lines().filter_map(|l| l.strip_prefix("- ")) {
        let from = corpus
            .iter()
            .find(|p| subsequence(line, p))
            .unwrap_or_else(|| panic!("`{line}` is no passage with words left out"));
        kept += line.split_whitespace().count();
        source += from.split_whitespace().count();
    }
    assert!(
        kept * 10 < source * 8,
        "{kept} of {source} words kept: {prompt}"
    );
    assert!(!ok["answer"].as_str().expect("answer").is_empty(), "{r}");
}
