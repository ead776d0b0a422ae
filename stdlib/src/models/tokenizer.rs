//! Tokenizers stored with a model's weights (safetensors metadata key `tokenizer`).
//!
//! Three kinds: `bytes` (one token per UTF-8 byte), `chars` (one token per character of a stored
//! alphabet) and `words` (one token per word of a stored vocabulary; a word is split before each
//! `-`, so `quatre-vingt-dix` is `quatre` `-vingt` `-dix`). Every kind reserves the first
//! [`N_SPECIAL`] ids for `<pad>`, `<bos>`, `<sep>`, `<eos>`, `<unk>`.
//!
//! The metadata value is JSON: `{"kind": "words", "vocab": ["a", "b", ...]}` (vocab without
//! the special tokens; absent for `bytes`).

use serde::{Deserialize, Serialize};

pub const PAD: u32 = 0;
pub const BOS: u32 = 1;
pub const SEP: u32 = 2;
pub const EOS: u32 = 3;
pub const UNK: u32 = 4;
pub const N_SPECIAL: u32 = 5;

/// A tokenizer: text to ids and back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Tokenizer {
    Bytes,
    Chars { vocab: Vec<String> },
    Words { vocab: Vec<String> },
}

impl Tokenizer {
    /// A word tokenizer over the pieces of `texts` (sorted, so the ids are deterministic).
    pub fn words_from<'a>(texts: impl IntoIterator<Item = &'a str>) -> Tokenizer {
        let mut set = std::collections::BTreeSet::new();
        for t in texts {
            for p in word_pieces(t) {
                set.insert(p.to_string());
            }
        }
        Tokenizer::Words {
            vocab: set.into_iter().collect(),
        }
    }

    /// Number of ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        N_SPECIAL as usize
            + match self {
                Tokenizer::Bytes => 256,
                Tokenizer::Chars { vocab } | Tokenizer::Words { vocab } => vocab.len(),
            }
    }

    fn lookup(vocab: &[String], piece: &str) -> u32 {
        vocab
            .binary_search_by(|v| v.as_str().cmp(piece))
            .map_or(UNK, |i| i as u32 + N_SPECIAL)
    }

    /// Ids of `text`, without special tokens; unknown pieces become `<unk>`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            Tokenizer::Bytes => text.bytes().map(|b| u32::from(b) + N_SPECIAL).collect(),
            Tokenizer::Chars { vocab } => {
                let mut buf = [0u8; 4];
                text.chars()
                    .map(|c| Self::lookup(vocab, c.encode_utf8(&mut buf)))
                    .collect()
            }
            Tokenizer::Words { vocab } => {
                word_pieces(text).map(|p| Self::lookup(vocab, p)).collect()
            }
        }
    }

    /// Text of `ids`; special tokens are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let pieces = ids
            .iter()
            .filter(|&&i| i >= N_SPECIAL)
            .map(|&i| (i - N_SPECIAL) as usize);
        match self {
            Tokenizer::Bytes => {
                let bytes: Vec<u8> = pieces.filter_map(|i| u8::try_from(i).ok()).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Tokenizer::Chars { vocab } => pieces
                .filter_map(|i| vocab.get(i).map(String::as_str))
                .collect(),
            Tokenizer::Words { vocab } => {
                let mut out = String::new();
                for p in pieces.filter_map(|i| vocab.get(i)) {
                    if !out.is_empty() && !p.starts_with('-') {
                        out.push(' ');
                    }
                    out.push_str(p);
                }
                out
            }
        }
    }
}

/// The pieces of a text for the `words` tokenizer: whitespace-separated words, each split
/// before every `-`.
pub fn word_pieces(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace().flat_map(|w| {
        let mut pieces = Vec::new();
        let mut start = 0;
        for (i, c) in w.char_indices() {
            if c == '-' && i > start {
                pieces.push(&w[start..i]);
                start = i;
            }
        }
        pieces.push(&w[start..]);
        pieces
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_with_hyphens() {
        let t = Tokenizer::words_from(["quatre-vingt-dix sept", "trois cent"]);
        let ids = t.encode("trois cent quatre-vingt-dix");
        assert_eq!(ids.len(), 5);
        assert!(!ids.contains(&UNK));
        assert_eq!(t.decode(&ids), "trois cent quatre-vingt-dix");
        assert_eq!(t.encode("huit"), vec![UNK]);
    }

    #[test]
    fn bytes_and_chars_round_trip() {
        let b = Tokenizer::Bytes;
        assert_eq!(b.decode(&b.encode("zéro")), "zéro");
        assert_eq!(b.vocab_size(), 261);
        let c = Tokenizer::Chars {
            vocab: vec!["a".into(), "b".into(), "é".into()],
        };
        assert_eq!(c.decode(&c.encode("abé")), "abé");
        assert_eq!(c.encode("x"), vec![UNK]);
    }

    #[test]
    fn metadata_json_shape() {
        let t = Tokenizer::Words {
            vocab: vec!["un".into()],
        };
        let s = serde_json::to_string(&t).expect("serializes");
        assert_eq!(s, r#"{"kind":"words","vocab":["un"]}"#);
        assert_eq!(serde_json::from_str::<Tokenizer>(&s).expect("parses"), t);
    }
}
