//! The tokenizer of a GGUF whose `tokenizer.ggml.model` is `llama` (SentencePiece BPE, as in
//! Gemma 3), built from the file's pieces and scores (SPEC §4.9).
//!
//! SentencePiece BPE encodes by merging, over and over, the adjacent pair of pieces whose joined
//! piece has the best score (llama.cpp's `spm` tokenizer). That is a BPE whose merge ranks are the
//! joined pieces' scores, so it is built as a `tokenizers` BPE: one merge `(a, b)` for every split
//! of a normal piece into two normal pieces, ranked by the joined piece's score (best first, then
//! by id). A Unigram model over the same scores splits words differently from how the model was
//! trained (see `shared/design/models.md`) and the model then writes garbage.
//!
//! Around the BPE: spaces become `▁` (U+2581; no space is prepended, `add_space_prefix` is false
//! for Gemma), a character that is no piece falls back to its UTF-8 bytes (`<0xXX>` pieces).
//! Control pieces (`token_type` 3: `<bos>`, `<start_of_turn>`…) are special tokens: they match
//! whole in the text and decoding skips them. User-defined pieces (type 4: `\n`, runs of
//! newlines and of spaces) match whole in the text too, but decode as text.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value as GgufValue;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf::Gguf;

const NORMAL: i64 = 1;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The merges of a SentencePiece BPE vocabulary: every split of a normal piece into two normal
/// pieces, best joined score first (ties: lower id first).
pub fn merges_by_score(tokens: &[String], scores: &[f32], types: &[i64]) -> Vec<(String, String)> {
    let normal: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types.get(*i) == Some(&NORMAL))
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut ranked: Vec<(f32, usize, usize)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if types.get(i) != Some(&NORMAL) {
            continue;
        }
        for (cut, _) in t.char_indices().skip(1) {
            if normal.contains_key(&t[..cut]) && normal.contains_key(&t[cut..]) {
                ranked.push((scores[i], i, cut));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, i, cut)| (tokens[i][..cut].to_string(), tokens[i][cut..].to_string()))
        .collect()
}

fn floats(g: &Gguf, key: &str) -> Result<Vec<f32>, String> {
    let shown = g.path.display();
    let v = g
        .metadata
        .get(key)
        .ok_or_else(|| format!("{shown}: no metadata key `{key}`"))?;
    let arr = v.to_vec().map_err(|e| format!("{shown}: `{key}`: {e}"))?;
    arr.iter()
        .map(|x| match x {
            GgufValue::F32(f) => Ok(*f),
            GgufValue::F64(f) => Ok(*f as f32),
            other => Err(format!("{shown}: `{key}` holds {other:?}, not a score")),
        })
        .collect()
}

/// A boolean metadata value (`None`: absent or not a boolean).
pub fn flag(g: &Gguf, key: &str) -> Option<bool> {
    match g.metadata.get(key) {
        Some(GgufValue::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// Build the tokenizer of a SentencePiece-BPE GGUF.
pub fn spm_tokenizer(g: &Gguf) -> Result<Tokenizer, String> {
    let shown = g.path.display();
    let model = g.text("tokenizer.ggml.model")?;
    if model != "llama" {
        return Err(format!(
            "{shown}: tokenizer model `{model}` is not SentencePiece BPE (`llama`)"
        ));
    }
    let tokens = g.strings("tokenizer.ggml.tokens")?;
    let scores = floats(g, "tokenizer.ggml.scores")?;
    let types = g.ints("tokenizer.ggml.token_type")?;
    if scores.len() != tokens.len() || types.len() != tokens.len() {
        return Err(format!(
            "{shown}: {} tokens, {} scores and {} token types",
            tokens.len(),
            scores.len(),
            types.len()
        ));
    }
    if flag(g, "tokenizer.ggml.add_space_prefix") == Some(true) {
        return Err(format!(
            "{shown}: `tokenizer.ggml.add_space_prefix = true` is not supported (Gemma's is false)"
        ));
    }
    let merges = merges_by_score(&tokens, &scores, &types);
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    if vocab.len() != tokens.len() {
        return Err(format!("{shown}: the vocabulary repeats a piece"));
    }
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Ok(unk) = g.uint("tokenizer.ggml.unknown_token_id") {
        if let Some(u) = tokens.get(unk) {
            builder = builder.unk_token(u.clone());
        }
    }
    let bpe = builder
        .build()
        .map_err(|e| format!("{shown}: SentencePiece BPE: {e}"))?;
    let mut tok = Tokenizer::new(bpe);
    let space = Replace::new(" ", "\u{2581}").map_err(|e| e.to_string())?;
    tok.with_normalizer(Some(space))
        .map_err(|e| format!("{shown}: normalizer: {e}"))?;
    let unspace = Replace::new("\u{2581}", " ").map_err(|e| e.to_string())?;
    tok.with_decoder(Some(DecoderSequence::new(vec![
        unspace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])));
    let added = |ty: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == ty)
            .map(|(s, _)| AddedToken::from(s.clone(), special).normalized(false))
            .collect()
    };
    tok.add_special_tokens(added(CONTROL, true))
        .map_err(|e| format!("{shown}: control tokens: {e}"))?;
    tok.add_tokens(added(USER_DEFINED, false))
        .map_err(|e| format!("{shown}: user-defined tokens: {e}"))?;
    Ok(tok)
}

/// The tokenizer and the token every prompt starts with: `tokenizer.ggml.bos_token_id` unless
/// `tokenizer.ggml.add_bos_token` is false (SentencePiece models start with it by default).
pub fn spm_tokenizer_and_bos(g: &Gguf) -> Result<(Tokenizer, Option<u32>), String> {
    let tok = spm_tokenizer(g)?;
    let bos = match flag(g, "tokenizer.ggml.add_bos_token") {
        Some(false) => None,
        _ => Some(g.uint("tokenizer.ggml.bos_token_id")? as u32),
    };
    Ok((tok, bos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_joined_pieces_scores() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc", "<ctl>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // `bc` scores better than `ab`: its merge comes first; `abc` splits two ways.
        let scores = [-1.0, -2.0, -3.0, -20.0, -10.0, -30.0, 0.0];
        let types = [1, 1, 1, 1, 1, 1, 3];
        let m = merges_by_score(&tokens, &scores, &types);
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            m,
            vec![s("b", "c"), s("a", "b"), s("a", "bc"), s("ab", "c")]
        );
    }

    #[test]
    fn the_bpe_merges_the_best_scoring_pair_first() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [-1.0, -2.0, -3.0, -20.0, -10.0, -30.0];
        let types = [1, 1, 1, 1, 1, 1];
        let merges = merges_by_score(&tokens, &scores, &types);
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .expect("bpe");
        let tok = Tokenizer::new(bpe);
        let ids = tok
            .encode("abca", false)
            .expect("encode")
            .get_ids()
            .to_vec();
        // b+c first (score -10), then a+bc (-30): "abc" "a".
        assert_eq!(ids, vec![5, 0]);
    }
}
