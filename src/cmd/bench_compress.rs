//! `marsc bench compress` (SPEC §4.9.3): `std.text.compress_prompt` on long support-chat
//! prompts. Each question of `faq_questions.jsonl` gets a prompt of `--passages` passages of
//! `faq_long.jsonl` (its expected passage first, then the ones after it, as retrieval would
//! rank them), written as `rag_prompt` writes it; SmolLM2 answers it greedily as it is and
//! compressed. Measured: time to first token (for the compressed prompt: compression plus
//! prefill), the prompt's tokens, and whether each answer states the expected passage's fact
//! (any of its `facts`, matched exactly, case aside); the answers agree on a question when both
//! state it or neither does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use miette::{miette, IntoDiagnostic};

use mars_stdlib::models::chat::ChatModel;
use mars_stdlib::models::compress::Compressor;
use mars_stdlib::models::llama::{Llama, LlamaState};
use mars_stdlib::models::llm_eval::{argmax, SUPPORT_SYSTEM};

#[derive(clap::Args)]
pub struct Args {
    /// The generator and the scorer (`model:NAME` from the store, or a GGUF path).
    #[arg(long, default_value = "model:smollm2-135m-instruct")]
    weights: String,
    /// The share of the context's tokens `compress_prompt` drops.
    #[arg(long, default_value_t = 0.4)]
    ratio: f64,
    /// Let the compressor drop words with digits too (`keep_digits = false`).
    #[arg(long)]
    drop_digits: bool,
    /// Passages in each prompt.
    #[arg(long, default_value_t = 14)]
    passages: usize,
    /// Questions (spread over the 56).
    #[arg(long, default_value_t = 16)]
    questions: usize,
    /// Tokens of each greedy answer.
    #[arg(long, default_value_t = 32)]
    answer_tokens: usize,
    /// `pipelines/data` (faq_long.jsonl and faq_questions.jsonl).
    #[arg(long, default_value = "pipelines/data")]
    data: PathBuf,
}

struct Passage {
    id: String,
    text: String,
    facts: Vec<String>,
}

fn read_jsonl(path: &Path) -> miette::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)
        .into_diagnostic()
        .map_err(|e| miette!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| miette!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// Greedy answer of one prompt: the time to its first token (prefill and the first pick) and
/// its tokens.
fn answer(
    model: &Llama,
    prompt: &[u32],
    max_tokens: usize,
    end: &BTreeSet<u32>,
) -> miette::Result<(f64, Vec<u32>)> {
    let t0 = Instant::now();
    let mut st = LlamaState::default();
    model
        .extend(&mut [&mut st], &[prompt.to_vec()])
        .map_err(forward)?;
    let mut t = argmax(&st.logits);
    let ttft = t0.elapsed().as_secs_f64();
    let mut out = Vec::new();
    while !end.contains(&t) && out.len() < max_tokens {
        out.push(t);
        if st.position() + 1 >= model.positions() {
            break;
        }
        model.extend(&mut [&mut st], &[vec![t]]).map_err(forward)?;
        t = argmax(&st.logits);
    }
    Ok((ttft, out))
}

fn forward(e: impl std::fmt::Display) -> miette::Report {
    miette!(code = "mars::bench::compress", "forward pass failed: {e}")
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: Args, json: Option<PathBuf>) -> miette::Result<ExitCode> {
    let faq: Vec<Passage> = read_jsonl(&a.data.join("faq_long.jsonl"))?
        .into_iter()
        .map(|v| Passage {
            id: v["id"].as_str().unwrap_or_default().to_string(),
            text: v["text"].as_str().unwrap_or_default().to_string(),
            facts: v["facts"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let questions = read_jsonl(&a.data.join("faq_questions.jsonl"))?;
    if faq.is_empty() || questions.is_empty() || a.questions == 0 || a.passages == 0 {
        return Err(miette!(
            code = "mars::bench::compress",
            "no passages or questions (or --questions / --passages 0)"
        ));
    }
    let path = match a.weights.strip_prefix("model:") {
        Some(_) => {
            mars_stdlib::store::Store::from_env()
                .and_then(|s| s.resolve(&a.weights))
                .map_err(|e| miette!("{}", e.0))?
                .path
        }
        None => PathBuf::from(&a.weights),
    };
    let generator = ChatModel::load(&path, 2048).map_err(|e| miette!("{e}"))?;
    let llama = generator
        .llama
        .as_llama()
        .ok_or_else(|| miette!("bench compress runs `arch = \"llama\"` models"))?;
    let mut compressor =
        Compressor::load(&path, a.ratio, !a.drop_digits).map_err(|e| miette!("{e}"))?;
    let step = (questions.len() / a.questions.min(questions.len())).max(1);
    let picked: Vec<&serde_json::Value> =
        questions.iter().step_by(step).take(a.questions).collect();
    println!(
        "compress_prompt ratio {} on support-chat prompts of {} long FAQ passages; {} questions; SmolLM2 ({}) answers {} greedy tokens; f32, batch 1",
        a.ratio,
        a.passages,
        picked.len(),
        path.display(),
        a.answer_tokens
    );
    println!(
        "{:<52} {:>6} {:>6} {:>8} {:>8} {:>8}  fact: full / compressed",
        "question", "tok", "tok c", "ttft s", "comp s", "ttft c s"
    );
    let mut rows = Vec::new();
    let (mut agree, mut full_facts, mut comp_facts, mut same) = (0, 0, 0, 0);
    let (mut ttft_full, mut ttft_comp, mut comp_cost) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tok_full, mut tok_comp) = (0usize, 0usize);
    for q in picked {
        let question = q["question"].as_str().unwrap_or_default();
        let want = q["expect"].as_str().unwrap_or_default();
        let at = faq
            .iter()
            .position(|p| p.id == want)
            .ok_or_else(|| miette!("question `{question}` expects unknown passage `{want}`"))?;
        let mut prompt = format!("{}\n", mars_stdlib::vector::DEFAULT_INSTRUCTION);
        for k in 0..a.passages.min(faq.len()) {
            prompt.push_str(&format!("- {}\n", faq[(at + k) % faq.len()].text));
        }
        prompt.push_str(&format!("\nQuestion: {question}"));
        let render = |p: &str| {
            generator
                .encode(&generator.template.render(Some(SUPPORT_SYSTEM), p))
                .map_err(|e| miette!("{e}"))
        };
        let full = render(&prompt)?;
        let (t_full, ans_full) = answer(llama, &full, a.answer_tokens, &generator.end_tokens)?;
        let c0 = Instant::now();
        let compressed = compressor.compress(&prompt).map_err(|e| miette!("{e}"))?;
        let c_s = c0.elapsed().as_secs_f64();
        if !compressed.ends_with(&format!("\nQuestion: {question}")) {
            return Err(miette!("compression changed the question: {compressed}"));
        }
        let comp = render(&compressed)?;
        let (t_comp, ans_comp) = answer(llama, &comp, a.answer_tokens, &generator.end_tokens)?;
        let (text_full, text_comp) = (generator.decode(&ans_full), generator.decode(&ans_comp));
        let states = |t: &str| {
            let t = t.to_lowercase();
            faq[at].facts.iter().any(|f| t.contains(&f.to_lowercase()))
        };
        let (f_full, f_comp) = (states(&text_full), states(&text_comp));
        agree += usize::from(f_full == f_comp);
        full_facts += usize::from(f_full);
        comp_facts += usize::from(f_comp);
        same += usize::from(ans_full == ans_comp);
        tok_full += full.len();
        tok_comp += comp.len();
        ttft_full.push(t_full);
        ttft_comp.push(c_s + t_comp);
        comp_cost.push(c_s);
        println!(
            "{:<52} {:>6} {:>6} {:>8.2} {:>8.3} {:>8.2}  {} / {}",
            question.chars().take(52).collect::<String>(),
            full.len(),
            comp.len(),
            t_full,
            c_s,
            c_s + t_comp,
            if f_full { "yes" } else { "no" },
            if f_comp { "yes" } else { "no" },
        );
        rows.push(serde_json::json!({
            "question": question, "expect": want, "tokens": full.len(), "tokens_compressed": comp.len(),
            "ttft_s": t_full, "compress_s": c_s, "ttft_compressed_s": c_s + t_comp,
            "answer": text_full, "answer_compressed": text_comp,
            "fact": f_full, "fact_compressed": f_comp, "compressed_prompt": compressed,
        }));
    }
    let n = rows.len();
    let (mf, mc, mcost) = (
        median(&mut ttft_full),
        median(&mut ttft_comp),
        median(&mut comp_cost),
    );
    println!(
        "prompt tokens {} → {} ({:.1}% fewer); median time to first token {:.2} s → {:.2} s ({:.2}× faster; compression {:.3} s of it, median; {} passages scored, {} from the cache)",
        tok_full / n,
        tok_comp / n,
        100.0 * (1.0 - tok_comp as f64 / tok_full as f64),
        mf,
        mc,
        mf / mc.max(1e-9),
        mcost,
        compressor.scored,
        compressor.cached
    );
    println!(
        "fact agreement {agree}/{n} ({:.0}%): full prompts state the fact {full_facts}/{n}, compressed {comp_facts}/{n}; identical answers {same}/{n}",
        100.0 * agree as f64 / n as f64
    );
    if let Some(p) = json {
        let out = serde_json::json!({
            "ratio": a.ratio, "passages": a.passages, "questions": n,
            "tokens_mean": tok_full / n, "tokens_compressed_mean": tok_comp / n,
            "ttft_median_s": mf, "ttft_compressed_median_s": mc, "speedup": mf / mc.max(1e-9),
            "compress_median_s": mcost, "scored": compressor.scored, "cached": compressor.cached,
            "fact_agreement": agree, "fact_full": full_facts, "fact_compressed": comp_facts,
            "identical": same, "rows": rows,
        });
        std::fs::write(
            &p,
            serde_json::to_string_pretty(&out).into_diagnostic()? + "\n",
        )
        .into_diagnostic()?;
    }
    Ok(ExitCode::SUCCESS)
}
