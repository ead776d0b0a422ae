//! `marsc bench llm-kv`: SmolLM2 (`arch = "llama"`) with each KV option of SPEC §4.9.2 on
//! long support-chat prompts (all FAQ passages, repeated in turned orders to `--context`
//! tokens, the question at the end), the options taking turns on every question: decode
//! tokens/s at that context, prefill time, agreement with the reference (`f32`, no pruning)
//! teacher-forced on the reference's greedy answer (top-1 per token, whole answers equal,
//! shared prefix), and the KV bytes a sequence holds, so how many fit in `--kv-mib`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use miette::{miette, IntoDiagnostic, WrapErr};

use mars_stdlib::models::chat::ChatModel;
use mars_stdlib::models::kv::KvOptions;
use mars_stdlib::models::llama::{Llama, LlamaState};
use mars_stdlib::models::llm_eval::{argmax, SUPPORT_SYSTEM};

#[derive(clap::Args)]
pub struct Args {
    /// The model (`model:NAME` from the store, or a GGUF path).
    #[arg(long, default_value = "model:smollm2-135m-instruct")]
    weights: String,
    /// KV options, comma-separated, the reference first: `STORE` or `STORE/keepX`
    /// (`f32`, `int8`; `X` the `kv_keep` share).
    #[arg(long, default_value = "f32,f32/keep0.5,int8,int8/keep0.5")]
    modes: String,
    /// The weights' `quantize` mode for every KV option: `none` (f32) or `int8` (modes that
    /// need calibration statistics are refused here).
    #[arg(long, default_value = "none")]
    quantize: String,
    /// Prompt tokens (the FAQ passages repeated up to this length, with the question).
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// Questions of `faq_questions.jsonl` (each one round: every mode in turn).
    #[arg(long, default_value_t = 8)]
    questions: usize,
    /// Tokens of each answer (the reference's greedy answer; the others teacher-forced on it).
    #[arg(long, default_value_t = 32)]
    answer_tokens: usize,
    /// KV memory per replica for the concurrency column, MiB.
    #[arg(long, default_value_t = 256.0)]
    kv_mib: f64,
    /// `pipelines/data` (the FAQ and its questions).
    #[arg(long, default_value = "pipelines/data")]
    data: PathBuf,
}

fn bad(m: impl std::fmt::Display) -> miette::Report {
    miette!(code = "mars::bench::llm_kv", "{m}")
}

fn parse_mode(s: &str) -> Result<KvOptions, String> {
    let (store, keep) = match s.split_once("/keep") {
        Some((st, k)) => (
            st,
            k.parse::<f64>()
                .map_err(|e| format!("`{s}`: kv_keep `{k}`: {e}"))?,
        ),
        None => (s, 1.0),
    };
    KvOptions::parse(keep, store).map_err(|(key, m)| format!("`{s}`: {key} {m}"))
}

struct Mode {
    kv: KvOptions,
    decode_ms: Vec<f64>,
    prefill_ms: Vec<f64>,
    /// Answer tokens whose argmax equals the reference's, and all answer tokens.
    top1: usize,
    tokens: usize,
    exact: usize,
    prefix: f64,
    /// KV bytes and positions a sequence holds at its answer's end (summed over questions).
    bytes: usize,
    positions: usize,
}

fn fwd(e: impl std::fmt::Display) -> miette::Report {
    bad(format!("forward pass failed: {e}"))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The long prompts: `(question, prompt tokens)`.
fn prompts(model: &ChatModel, a: &Args) -> miette::Result<Vec<(String, Vec<u32>)>> {
    let read = |f: &str| {
        std::fs::read_to_string(a.data.join(f))
            .into_diagnostic()
            .wrap_err_with(|| format!("reading {f}"))
    };
    let lines = |t: String| -> miette::Result<Vec<serde_json::Value>> {
        t.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).into_diagnostic())
            .collect()
    };
    let faq: Vec<String> = lines(read("faq.jsonl")?)?
        .iter()
        .map(|v| v["text"].as_str().unwrap_or_default().to_string())
        .collect();
    if faq.is_empty() {
        return Err(bad("faq.jsonl has no passages"));
    }
    let head = "Answer the customer's question in one or two sentences, using only these facts:\n";
    let mut out = Vec::new();
    for v in lines(read("faq_questions.jsonl")?)?
        .into_iter()
        .take(a.questions)
    {
        let q = v["question"].as_str().unwrap_or_default().to_string();
        let tail = format!("\nQuestion: {q}");
        let render = |body: &str| {
            model.encode(
                &model
                    .template
                    .render(Some(SUPPORT_SYSTEM), &format!("{head}{body}{tail}")),
            )
        };
        // Passages in turned orders (each repeat starts 7 further on) until the prompt
        // reaches the context.
        let mut body = String::new();
        let mut k = 0usize;
        loop {
            let line = format!("- {}\n", faq[(k + 7 * (k / faq.len())) % faq.len()]);
            let longer = format!("{body}{line}");
            if render(&longer).map_err(bad)?.len() > a.context {
                break;
            }
            body = longer;
            k += 1;
        }
        out.push((q, render(&body).map_err(bad)?));
    }
    Ok(out)
}

/// Prefill `prompt`, then decode `answer` (teacher-forced) or, without one, greedily for
/// `n` tokens; returns the argmax at each answer position and the state.
fn run_one(
    m: &Llama,
    prompt: &[u32],
    answer: Option<&[u32]>,
    n: usize,
    mode: &mut Mode,
) -> miette::Result<(Vec<u32>, LlamaState)> {
    let mut st = LlamaState::default();
    let t0 = Instant::now();
    m.extend(&mut [&mut st], &[prompt.to_vec()]).map_err(fwd)?;
    mode.prefill_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    let len = answer.map_or(n, <[u32]>::len);
    let mut picks = Vec::with_capacity(len);
    for i in 0..len {
        let t = argmax(&st.logits);
        picks.push(t);
        if i + 1 == len {
            break;
        }
        let feed = answer.map_or(t, |a| a[i]);
        let t0 = Instant::now();
        m.extend(&mut [&mut st], &[vec![feed]]).map_err(fwd)?;
        mode.decode_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((picks, st))
}

pub fn run(a: Args, json: Option<PathBuf>) -> miette::Result<ExitCode> {
    let kvs: Vec<KvOptions> = a
        .modes
        .split(',')
        .map(|s| parse_mode(s.trim()))
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("--modes: {e}")))?;
    if kvs.first().is_none_or(|k| !k.is_default()) {
        return Err(bad("--modes must start with f32 (the reference)"));
    }
    let path = match a.weights.strip_prefix("model:") {
        Some(_) => {
            let store = mars_stdlib::store::Store::from_env().map_err(|e| miette!("{}", e.0))?;
            store
                .resolve(&a.weights)
                .map_err(|e| miette!("{}", e.0))?
                .path
        }
        None => PathBuf::from(&a.weights),
    };
    let quant = mars_stdlib::models::llm_quant::LlmQuant::parse(&a.quantize, None)
        .map_err(|e| miette!(code = "mars::bench::llm_kv", "--quantize: {e}"))?;
    let mut model = ChatModel::load_quantized(&path, a.context + a.answer_tokens + 8, quant, None)
        .map_err(|e| miette!("{e}"))?;
    let prompts = prompts(&model, &a)?;
    let mut modes: Vec<Mode> = kvs
        .iter()
        .map(|&kv| Mode {
            kv,
            decode_ms: Vec::new(),
            prefill_ms: Vec::new(),
            top1: 0,
            tokens: 0,
            exact: 0,
            prefix: 0.0,
            bytes: 0,
            positions: 0,
        })
        .collect();
    for (qi, (q, prompt)) in prompts.iter().enumerate() {
        let mut reference: Vec<u32> = Vec::new();
        for (k, mode) in modes.iter_mut().enumerate() {
            model.llama.set_kv(mode.kv).map_err(bad)?;
            let m = model
                .llama
                .as_llama()
                .ok_or_else(|| bad("bench llm-kv runs `arch = \"llama\"` models"))?;
            let (picks, st) = match k {
                0 => run_one(m, prompt, None, a.answer_tokens, mode)?,
                _ => run_one(m, prompt, Some(&reference), 0, mode)?,
            };
            if k == 0 {
                // The reference answer ends at its first end token.
                let end = picks
                    .iter()
                    .position(|t| model.end_tokens.contains(t))
                    .map_or(picks.len(), |p| p + 1);
                reference = picks[..end].to_vec();
            }
            let same = picks.iter().zip(&reference).filter(|(a, b)| a == b).count();
            let prefix = picks
                .iter()
                .zip(&reference)
                .take_while(|(a, b)| a == b)
                .count();
            mode.top1 += same;
            mode.tokens += reference.len();
            mode.exact += usize::from(prefix == reference.len());
            mode.prefix += prefix as f64 / reference.len().max(1) as f64;
            mode.bytes += st.kv_bytes();
            mode.positions += st.position();
        }
        eprintln!(
            "question {} of {} ({} prompt tokens): {q}",
            qi + 1,
            prompts.len(),
            prompt.len()
        );
    }
    let n = prompts.len().max(1);
    let ctx = prompts.iter().map(|(_, p)| p.len()).sum::<usize>() / n;
    println!(
        "SmolLM2-135M-Instruct ({}, weights {}), {} long support prompts (mean {ctx} tokens), {} answer tokens; modes in turn on every question",
        path.display(),
        a.quantize,
        prompts.len(),
        a.answer_tokens
    );
    println!(
        "decode: median ms per token at that context; agreement teacher-forced on the reference's greedy answer; seqs: sequences of this length in {} MiB of KV",
        a.kv_mib
    );
    println!(
        "{:<22} {:>9} {:>6} {:>9} {:>6} {:>8} {:>6} {:>7} {:>10} {:>6} {:>6}",
        "mode",
        "decode/s",
        "×ref",
        "prefill",
        "×ref",
        "top-1",
        "exact",
        "prefix",
        "KV KB/seq",
        "seqs",
        "×ref"
    );
    let f = &modes[0];
    let (f_dec, f_pre) = (median(&f.decode_ms), median(&f.prefill_ms));
    let budget = a.kv_mib * 1024.0 * 1024.0;
    let f_seqs = (budget / (f.bytes as f64 / n as f64)).floor();
    let mut rows = Vec::new();
    for m in &modes {
        let dec = median(&m.decode_ms);
        let pre = median(&m.prefill_ms);
        let per_seq = m.bytes as f64 / n as f64;
        let seqs = (budget / per_seq).floor();
        let top1 = m.top1 as f64 / m.tokens.max(1) as f64;
        let prefix = m.prefix / n as f64;
        println!(
            "{:<22} {:>9.2} {:>6.2} {:>7.0}ms {:>6.2} {:>7.1}% {:>3}/{:<2} {:>7.3} {:>10.0} {:>6} {:>6.2}",
            m.kv.name(),
            1e3 / dec,
            f_dec / dec,
            pre,
            f_pre / pre,
            100.0 * top1,
            m.exact,
            n,
            prefix,
            per_seq / 1024.0,
            seqs,
            seqs / f_seqs
        );
        rows.push(serde_json::json!({
            "mode": m.kv.name(), "kv_keep": m.kv.keep,
            "decode_ms": dec, "decode_tok_s": 1e3 / dec, "decode_speedup": f_dec / dec,
            "prefill_ms": pre, "prefill_speedup": f_pre / pre,
            "top1_agreement": top1, "answer_tokens": m.tokens, "exact": m.exact,
            "questions": n, "prefix": prefix, "kv_bytes_per_seq": per_seq,
            "positions_per_seq": m.positions as f64 / n as f64,
            "seqs_in_budget": seqs, "seqs_ratio": seqs / f_seqs,
        }));
    }
    let out = serde_json::json!({
        "bench": "llm-kv", "model": path.display().to_string(), "quantize": a.quantize, "context": ctx,
        "answer_tokens": a.answer_tokens, "kv_mib": a.kv_mib, "modes": rows,
    });
    if let Some(p) = json {
        std::fs::write(
            &p,
            serde_json::to_string_pretty(&out).into_diagnostic()? + "\n",
        )
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot write {}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
