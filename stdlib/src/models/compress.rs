//! `std.text.compress_prompt` (SPEC §4.9.3): prompt compression in the style of LLMLingua. A
//! small causal LM (SmolLM2-135M by default) scores how much information each word of a
//! prompt's context passages carries (its tokens' surprisal, `−log p(token | what precedes)`),
//! and the least informative words are dropped until `ratio` of the context's tokens are gone.
//! The instruction and the question are kept verbatim, and so (unless `keep_digits = false`)
//! is every word with a digit in it.
//!
//! Which part of a prompt is context: its list-item lines (`- …`, `* …`, as
//! `std.vector.rag_prompt` writes passages); in a prompt without list items, every paragraph
//! but the first and the last. Everything else is kept as it is.
//!
//! Each passage is scored on its own (after a fixed `Context:` line), not in the prompt's
//! running context, so its scores do not depend on the question or on the other passages, and
//! a replica keeps them: a retrieval corpus's passages are scored once and every later prompt
//! that holds them pays only the selection ([`Compressor`]'s cache).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor, D};

use super::chat::ChatModel;
use super::llama::Llama;

/// One scored word of a passage: its byte range in the passage, its tokens and their summed
/// surprisal (nats).
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub start: usize,
    pub end: usize,
    pub tokens: usize,
    pub info: f64,
}

/// A piece of a prompt: kept verbatim, or a context passage (`lead` is its list marker, kept).
#[derive(Debug, Clone, PartialEq)]
pub enum Part<'a> {
    Keep(&'a str),
    Context { lead: &'a str, body: &'a str },
}

/// Split a prompt into kept text and context passages (see the module's doc). Joining the
/// parts' text in order gives the prompt back exactly.
pub fn split_prompt(prompt: &str) -> Vec<Part<'_>> {
    let lines: Vec<&str> = prompt.split_inclusive('\n').collect();
    let item = |l: &str| {
        let t = l.trim_start();
        (t.starts_with("- ") || t.starts_with("* ")).then(|| l.len() - t.len() + 2)
    };
    let mut parts = Vec::new();
    if lines.iter().any(|l| item(l).is_some()) {
        for l in lines {
            match item(l) {
                Some(k) => {
                    let body = l[k..].trim_end_matches('\n');
                    parts.push(Part::Context {
                        lead: &l[..k],
                        body,
                    });
                    parts.push(Part::Keep(&l[k + body.len()..]));
                }
                None => parts.push(Part::Keep(l)),
            }
        }
    } else {
        // Paragraphs: runs of lines between blank lines. The first and the last are kept.
        let mut paras: Vec<(usize, usize)> = Vec::new();
        let mut start = None;
        for (i, l) in lines.iter().enumerate() {
            match (l.trim().is_empty(), start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    paras.push((s, i));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            paras.push((s, lines.len()));
        }
        let middle = |i: usize| {
            paras.len() > 2
                && paras[1..paras.len() - 1]
                    .iter()
                    .any(|&(s, e)| i >= s && i < e)
        };
        for (i, l) in lines.iter().enumerate() {
            if middle(i) {
                let body = l.trim_end_matches('\n');
                parts.push(Part::Context { lead: "", body });
                parts.push(Part::Keep(&l[body.len()..]));
            } else {
                parts.push(Part::Keep(l));
            }
        }
    }
    parts.retain(|p| !matches!(p, Part::Keep("")));
    parts
}

/// Which words to keep: the least informative words of all passages together are dropped,
/// fewest nats per token first (a token budget is met at the least information lost; ties:
/// the later word first), until at least `ratio` of the passages' tokens are gone. Words
/// `protected` are never dropped. `keep[p][w]` is word `w` of passage `p`.
pub fn select(
    passages: &[&[Word]],
    ratio: f64,
    protected: &dyn Fn(usize, usize) -> bool,
) -> Vec<Vec<bool>> {
    let mut keep: Vec<Vec<bool>> = passages.iter().map(|p| vec![true; p.len()]).collect();
    let total: usize = passages
        .iter()
        .flat_map(|p| p.iter())
        .map(|w| w.tokens)
        .sum();
    let goal = (ratio * total as f64).round() as usize;
    let mut order: Vec<(usize, usize)> = passages
        .iter()
        .enumerate()
        .flat_map(|(p, ws)| (0..ws.len()).map(move |w| (p, w)))
        .filter(|&(p, w)| !protected(p, w))
        .collect();
    let per_token = |w: &Word| w.info / w.tokens.max(1) as f64;
    order.sort_by(|a, b| {
        let (x, y) = (&passages[a.0][a.1], &passages[b.0][b.1]);
        per_token(x).total_cmp(&per_token(y)).then(b.cmp(a))
    });
    let mut dropped = 0;
    for (p, w) in order {
        if dropped >= goal {
            break;
        }
        keep[p][w] = false;
        dropped += passages[p][w].tokens;
    }
    keep
}

/// The words of `text` (maximal runs of non-whitespace), as byte ranges.
fn word_spans(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, text.len()));
    }
    out
}

/// What precedes every passage when it is scored: the first token of a passage is predicted
/// too, from the same start for every passage.
const SCORE_PREFIX: &str = "Context:\n";

/// The most passages a replica keeps the scores of; past it the cache starts again.
const CACHE_PASSAGES: usize = 4096;

/// The scorer and its cache of passage scores.
pub struct Compressor {
    model: ChatModel,
    ratio: f64,
    /// Never drop a word with a digit in it (LLMLingua-2's `force_reserve_digit`): prices,
    /// dates, counts and codes are what a support answer is made of.
    keep_digits: bool,
    cache: HashMap<String, Arc<Vec<Word>>>,
    /// Passages scored, and passages found in the cache.
    pub scored: u64,
    pub cached: u64,
}

impl Compressor {
    /// Load the scoring model (a llama-architecture GGUF, f32) from `path`.
    pub fn load(path: &Path, ratio: f64, keep_digits: bool) -> Result<Compressor, String> {
        check_ratio(ratio)?;
        let model = ChatModel::load(path, 2048)?;
        if model.llama.as_llama().is_none() {
            return Err("compress_prompt scores with a llama-architecture model (SmolLM2)".into());
        }
        Ok(Compressor {
            model,
            ratio,
            keep_digits,
            cache: HashMap::new(),
            scored: 0,
            cached: 0,
        })
    }

    fn llama(&self) -> &Llama {
        self.model
            .llama
            .as_llama()
            .expect("checked at load: a llama model")
    }

    /// The words of one passage with their information, from the cache or scored now.
    pub fn score(&mut self, passage: &str) -> Result<Arc<Vec<Word>>, String> {
        if let Some(w) = self.cache.get(passage) {
            self.cached += 1;
            return Ok(Arc::clone(w));
        }
        let words = Arc::new(self.score_uncached(passage)?);
        self.scored += 1;
        if self.cache.len() >= CACHE_PASSAGES {
            self.cache.clear();
        }
        self.cache.insert(passage.to_string(), Arc::clone(&words));
        Ok(words)
    }

    fn score_uncached(&self, passage: &str) -> Result<Vec<Word>, String> {
        let spans = word_spans(passage);
        if spans.is_empty() {
            return Ok(Vec::new());
        }
        let text = format!("{SCORE_PREFIX}{passage}");
        let enc = self
            .model
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| format!("tokenizing failed: {e}"))?;
        let ids = enc.get_ids().to_vec();
        let offsets = enc.get_offsets().to_vec();
        let limit = self.llama().positions();
        if ids.len() > limit {
            return Err(format!(
                "a passage of {} tokens is past the scorer's {limit} positions",
                ids.len()
            ));
        }
        let surprisal = surprisals(self.llama(), &ids).map_err(|e| e.to_string())?;
        let mut words: Vec<Word> = spans
            .iter()
            .map(|&(start, end)| Word {
                start,
                end,
                tokens: 0,
                info: 0.0,
            })
            .collect();
        let p = SCORE_PREFIX.len();
        for (i, &(s, e)) in offsets.iter().enumerate().skip(1) {
            if e <= p {
                continue;
            }
            // The token's first byte that is not whitespace, in the passage.
            let Some(piece) = text.get(s.max(p)..e) else {
                continue;
            };
            let from = piece
                .char_indices()
                .find(|(_, c)| !c.is_whitespace())
                .map(|(k, _)| s.max(p) + k - p);
            let Some(at) = from else { continue };
            let w = spans.partition_point(|&(_, end)| end <= at);
            if let Some(word) = words.get_mut(w) {
                word.tokens += 1;
                word.info += surprisal[i - 1];
            }
        }
        // A word no token started in (a token spanning two words) counts one token of none.
        for w in &mut words {
            w.tokens = w.tokens.max(1);
        }
        Ok(words)
    }

    /// The prompt with `ratio` of its context tokens dropped (see the module's doc).
    pub fn compress(&mut self, prompt: &str) -> Result<String, String> {
        if self.ratio == 0.0 {
            return Ok(prompt.to_string());
        }
        let parts = split_prompt(prompt);
        let mut scored = Vec::new();
        for p in &parts {
            if let Part::Context { body, .. } = p {
                scored.push(self.score(body)?);
            }
        }
        let refs: Vec<&[Word]> = scored.iter().map(|w| w.as_slice()).collect();
        let bodies: Vec<&str> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Context { body, .. } => Some(*body),
                Part::Keep(_) => None,
            })
            .collect();
        let digits = self.keep_digits;
        let protected = |p: usize, w: usize| {
            let word = &refs[p][w];
            digits
                && bodies[p][word.start..word.end]
                    .bytes()
                    .any(|b| b.is_ascii_digit())
        };
        let keep = select(&refs, self.ratio, &protected);
        let mut out = String::with_capacity(prompt.len());
        let mut k = 0;
        for p in &parts {
            match p {
                Part::Keep(t) => out.push_str(t),
                Part::Context { lead, body } => {
                    out.push_str(lead);
                    let kept: Vec<&str> = scored[k]
                        .iter()
                        .zip(&keep[k])
                        .filter(|(_, &keep)| keep)
                        .map(|(w, _)| &body[w.start..w.end])
                        .collect();
                    out.push_str(&kept.join(" "));
                    k += 1;
                }
            }
        }
        Ok(out)
    }

    /// Tokens of a text under the scorer's tokenizer (for reporting compression).
    pub fn tokens(&self, text: &str) -> Result<usize, String> {
        self.model.encode(text).map(|t| t.len())
    }
}

/// `ratio` must be in [0, 1).
pub fn check_ratio(ratio: f64) -> Result<f64, String> {
    if (0.0..1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!(
            "ratio {ratio} must be in [0, 1) (the share of the context's tokens dropped)"
        ))
    }
}

/// `−log p(ids[i + 1] | ids[..=i])` for every `i`, teacher-forced in one pass.
fn surprisals(model: &Llama, ids: &[u32]) -> candle_core::Result<Vec<f64>> {
    if ids.len() < 2 {
        return Ok(Vec::new());
    }
    let logits = model.logits_all(ids)?.to_dtype(DType::F32)?;
    let n = logits.dim(0)?;
    let rows = logits.narrow(0, 0, n - 1)?;
    let m = rows.max_keepdim(D::Minus1)?;
    let lse = rows
        .broadcast_sub(&m)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        .broadcast_add(&m)?;
    let next = Tensor::new(&ids[1..], rows.device())?.unsqueeze(1)?;
    let picked = rows.gather(&next, 1)?;
    let s = lse.sub(&picked)?.squeeze(1)?.to_vec1::<f32>()?;
    Ok(s.into_iter().map(f64::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(info: f64, tokens: usize) -> Word {
        Word {
            start: 0,
            end: 0,
            tokens,
            info,
        }
    }

    #[test]
    fn a_rag_prompt_splits_into_kept_lines_and_passages_and_joins_back_exactly() {
        let p = "Answer using these facts:\n- Shipping is free.\n  * Returns take 30 days.\n\nQuestion: Is it free?";
        let parts = split_prompt(p);
        let text: String = parts
            .iter()
            .map(|x| match x {
                Part::Keep(t) => t.to_string(),
                Part::Context { lead, body } => format!("{lead}{body}"),
            })
            .collect();
        assert_eq!(text, p);
        let bodies: Vec<&str> = parts
            .iter()
            .filter_map(|x| match x {
                Part::Context { body, .. } => Some(*body),
                _ => None,
            })
            .collect();
        assert_eq!(bodies, ["Shipping is free.", "Returns take 30 days."]);
        assert_eq!(parts[0], Part::Keep("Answer using these facts:\n"));
        assert_eq!(parts.last(), Some(&Part::Keep("Question: Is it free?")));
    }

    #[test]
    fn without_list_items_the_middle_paragraphs_are_context() {
        let p = "Read this.\n\nFirst fact here.\nSecond line.\n\nAnother.\n\nWhat is it?\n";
        let bodies: Vec<&str> = split_prompt(p)
            .into_iter()
            .filter_map(|x| match x {
                Part::Context { body, .. } => Some(body),
                _ => None,
            })
            .collect();
        assert_eq!(bodies, ["First fact here.", "Second line.", "Another."]);
        // One or two paragraphs: nothing is context.
        assert!(split_prompt("Only an instruction.\n\nAnd a question?")
            .iter()
            .all(|x| matches!(x, Part::Keep(_))));
    }

    #[test]
    fn selection_drops_the_least_informative_words_until_the_ratio_is_met() {
        let a = [w(5.0, 1), w(0.5, 1), w(9.0, 2)];
        let b = [w(0.1, 1), w(3.0, 1)];
        let none = |_: usize, _: usize| false;
        // 6 tokens; 0.4 → 2.4 → 2 tokens: the 0.1 and the 0.5 words.
        let keep = select(&[&a, &b], 0.4, &none);
        assert_eq!(keep, vec![vec![true, false, true], vec![false, true]]);
        assert_eq!(
            select(&[&a, &b], 0.0, &none),
            vec![vec![true; 3], vec![true; 2]]
        );
        // 0.6 → 3.6 → 4 tokens, by nats per token: 0.1, 0.5, 3.0, then the two-token
        // word of 9 nats (4.5 a token) before the one-token word of 5.
        let keep = select(&[&a, &b], 0.6, &none);
        assert_eq!(keep, vec![vec![true, false, false], vec![false, false]]);
        // A protected word stays whatever it carries; the next ones go instead.
        let keep = select(&[&a, &b], 0.4, &|p, w| (p, w) == (1, 0));
        assert_eq!(keep, vec![vec![true, false, true], vec![true, false]]);
        assert!(check_ratio(1.0).is_err() && check_ratio(-0.1).is_err());
        assert_eq!(check_ratio(0.4), Ok(0.4));
    }

    #[test]
    fn word_spans_are_runs_of_non_whitespace() {
        assert_eq!(word_spans("  a bc\td "), vec![(2, 3), (4, 6), (7, 8)]);
        assert!(word_spans(" \n").is_empty());
    }
}
