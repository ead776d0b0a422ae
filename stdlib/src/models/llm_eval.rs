//! Measuring a `llama` model's quality the way language-model work does, for comparing its
//! `quantize` modes (`marsc bench llm`, SPEC §4.9): perplexity over a held-out text,
//! per-token KL divergence from a reference model's distribution, and greedy agreement on
//! the support-chat questions.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{Result, Tensor, D};

use super::llama::{Llama, LlamaState};

/// A text file as one string: plain text, or JSONL (`.jsonl`) whose lines are strings or
/// objects with a string `text` (joined with spaces, as verse-per-line corpora are).
pub fn read_text(path: &Path) -> std::result::Result<String, String> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read text `{}`: {e}", path.display()))?;
    if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
        return Ok(raw);
    }
    let mut parts = Vec::new();
    for (i, line) in raw.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: not JSON: {e}", path.display(), i + 1))?;
        let t = match &v {
            serde_json::Value::String(s) => s.clone(),
            other => other["text"]
                .as_str()
                .ok_or_else(|| format!("{}:{}: no string `text`", path.display(), i + 1))?
                .to_string(),
        };
        parts.push(t);
    }
    Ok(parts.join(" "))
}

/// Log-softmax of each row of `logits: [n, vocab]`, as f32 rows.
fn log_probs(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let m = logits.max_keepdim(D::Minus1)?;
    let z = logits.broadcast_sub(&m)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    z.broadcast_sub(&lse)?.to_vec2::<f32>()
}

/// What one window of teacher-forced tokens gives: summed negative log-likelihood of each
/// next token and the count, and (against a reference) summed KL.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    pub nll: f64,
    pub kl: f64,
    pub tokens: usize,
}

impl Scores {
    pub fn add(&mut self, o: Scores) {
        self.nll += o.nll;
        self.kl += o.kl;
        self.tokens += o.tokens;
    }

    /// `exp(mean NLL)`.
    pub fn perplexity(&self) -> f64 {
        (self.nll / self.tokens.max(1) as f64).exp()
    }

    /// Mean `KL(reference ‖ model)` per predicted token, in nats.
    pub fn kl_per_token(&self) -> f64 {
        self.kl / self.tokens.max(1) as f64
    }
}

/// Teacher-forced log-probabilities of `tokens` under `model`, rows `from ..` (row `i`
/// predicts token `i + 1`).
pub fn window_log_probs(model: &Llama, tokens: &[u32], from: usize) -> Result<Vec<Vec<f32>>> {
    let logits = model.logits_all(tokens)?;
    let n = logits.dim(0)?;
    log_probs(&logits.narrow(0, from, n - 1 - from)?)
}

/// Score the predictions of rows `from ..` of a window: NLL of the actual next tokens, and
/// `Σ_v p_ref(v) (log p_ref(v) − log p(v))` where `reference` (same rows) is given.
pub fn score(
    lp: &[Vec<f32>],
    tokens: &[u32],
    from: usize,
    reference: Option<&[Vec<f32>]>,
) -> Scores {
    let mut s = Scores::default();
    for (i, row) in lp.iter().enumerate() {
        let next = tokens[from + i + 1] as usize;
        s.nll -= f64::from(row[next]);
        if let Some(r) = reference {
            s.kl += r[i]
                .iter()
                .zip(row)
                .map(|(&a, &b)| f64::from(a.exp()) * f64::from(a - b))
                .sum::<f64>();
        }
        s.tokens += 1;
    }
    s
}

/// Greedy answers of `prompts`, decoded together (prompts prefilled in one pass, then one
/// token of every unfinished sequence a pass), each until an end token or `max_tokens`.
/// Greedy picks the lowest id among equal maxima.
pub fn greedy_batch(
    model: &Llama,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    end: &BTreeSet<u32>,
) -> Result<Vec<Vec<u32>>> {
    let mut states: Vec<LlamaState> = prompts.iter().map(|_| LlamaState::default()).collect();
    {
        let mut refs: Vec<&mut LlamaState> = states.iter_mut().collect();
        model.extend(&mut refs, prompts)?;
    }
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut live: Vec<usize> = (0..prompts.len()).collect();
    while !live.is_empty() {
        let mut next = Vec::new();
        for &i in &live {
            let t = argmax(&states[i].logits);
            let full = states[i].position() + 1 >= model.positions();
            if end.contains(&t) {
                continue;
            }
            out[i].push(t);
            if out[i].len() < max_tokens && !full {
                next.push((i, t));
            }
        }
        if next.is_empty() {
            break;
        }
        let chunks: Vec<Vec<u32>> = next.iter().map(|&(_, t)| vec![t]).collect();
        let ids: BTreeSet<usize> = next.iter().map(|&(i, _)| i).collect();
        let mut refs: Vec<&mut LlamaState> = states
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| ids.contains(i))
            .map(|(_, s)| s)
            .collect();
        model.extend(&mut refs, &chunks)?;
        live = next.into_iter().map(|(i, _)| i).collect();
    }
    Ok(out)
}

/// The index of the largest value, the lowest among equals.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// The support-chat prompts of `pipelines/data`: each paraphrased question of
/// `faq_questions.jsonl` with its expected FAQ passage and the two passages after it in
/// `faq.jsonl` (cyclically), written as `vector.rag_prompt` writes them. Returns
/// `(question, prompt text)`.
pub fn support_prompts(data: &Path) -> std::result::Result<Vec<(String, String)>, String> {
    let read = |f: &str| {
        std::fs::read_to_string(data.join(f)).map_err(|e| format!("cannot read {f}: {e}"))
    };
    let mut faq: Vec<(String, String)> = Vec::new();
    for line in read("faq.jsonl")?.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        faq.push((
            v["id"].as_str().unwrap_or_default().to_string(),
            v["text"].as_str().unwrap_or_default().to_string(),
        ));
    }
    let mut out = Vec::new();
    for line in read("faq_questions.jsonl")?
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let q = v["question"].as_str().unwrap_or_default().to_string();
        let want = v["expect"].as_str().unwrap_or_default();
        let at = faq
            .iter()
            .position(|(id, _)| id == want)
            .ok_or_else(|| format!("question `{q}` expects unknown passage `{want}`"))?;
        let mut s = String::from(
            "Answer the customer's question in one or two sentences, using only these facts:\n",
        );
        for k in 0..3 {
            s.push_str(&format!("- {}\n", faq[(at + k) % faq.len()].1));
        }
        s.push_str(&format!("\nQuestion: {q}"));
        out.push((q, s));
    }
    Ok(out)
}

/// The system message of `pipelines/support_chat.mars`.
pub const SUPPORT_SYSTEM: &str = "You are the customer support assistant of the Lumo lamp shop. Answer briefly and only from the facts given.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_give_perplexity_and_kl() {
        // Two rows over a vocabulary of 2: uniform, and certain of token 1.
        let ln_half = 0.5f32.ln();
        let lp = vec![vec![ln_half, ln_half], vec![-30.0, 0.0]];
        let s = score(&lp, &[0, 1, 1], 0, Some(&lp));
        assert!((s.perplexity() - 2f64.sqrt()).abs() < 1e-4, "{s:?}");
        assert!(s.kl.abs() < 1e-9);
        let other = vec![vec![0.0, -30.0], vec![-30.0, 0.0]];
        let s = score(&other, &[0, 1, 1], 0, Some(&lp));
        // Row 0: KL(uniform ‖ (1, e⁻³⁰)) = ½(ln ½ − 0) + ½(ln ½ + 30) = ln ½ + 15; row 1: 0.
        assert!((s.kl - (f64::from(ln_half) + 15.0)).abs() < 1e-3, "{s:?}");
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }
}
