//! GGUF files (llama.cpp's format): metadata, tensors dequantized at load, and the tokenizer
//! and chat template a GGUF carries (SPEC §4.9).
//!
//! Tensors are dequantized to f32 when the file is read: candle's quantized Q4_1 matmul gives
//! wrong tokens for SmolLM2 (see `shared/design/models.md`), and the dequantized weights give
//! the reference tokens.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use candle_core::{Device, Tensor};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

/// A GGUF file read whole: metadata and every tensor as f32.
pub struct Gguf {
    pub metadata: HashMap<String, GgufValue>,
    pub tensors: HashMap<String, Tensor>,
    pub path: std::path::PathBuf,
}

impl Gguf {
    pub fn read(path: &Path) -> Result<Gguf, String> {
        let shown = path.display();
        let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open {shown}: {e}"))?;
        let ct = Content::read(&mut f).map_err(|e| format!("{shown} is not a GGUF file: {e}"))?;
        let mut tensors = HashMap::new();
        for name in ct.tensor_infos.keys() {
            let q = ct
                .tensor(&mut f, name, &Device::Cpu)
                .map_err(|e| format!("{shown}: tensor `{name}`: {e}"))?;
            let t = q
                .dequantize(&Device::Cpu)
                .map_err(|e| format!("{shown}: dequantizing `{name}`: {e}"))?;
            tensors.insert(name.clone(), t);
        }
        Ok(Gguf {
            metadata: ct.metadata,
            tensors,
            path: path.to_path_buf(),
        })
    }

    fn meta(&self, key: &str) -> Result<&GgufValue, String> {
        self.metadata
            .get(key)
            .ok_or_else(|| format!("{}: no metadata key `{key}`", self.path.display()))
    }

    pub fn text(&self, key: &str) -> Result<String, String> {
        self.meta(key)?
            .to_string()
            .cloned()
            .map_err(|e| format!("{}: `{key}`: {e}", self.path.display()))
    }

    pub fn uint(&self, key: &str) -> Result<usize, String> {
        let v = self.meta(key)?;
        let n = match v {
            GgufValue::U8(x) => u64::from(*x),
            GgufValue::U16(x) => u64::from(*x),
            GgufValue::U32(x) => u64::from(*x),
            GgufValue::U64(x) => *x,
            GgufValue::I32(x) if *x >= 0 => *x as u64,
            GgufValue::I64(x) if *x >= 0 => *x as u64,
            other => {
                return Err(format!(
                    "{}: `{key}` is not a count: {other:?}",
                    self.path.display()
                ))
            }
        };
        Ok(n as usize)
    }

    pub fn float(&self, key: &str) -> Result<f64, String> {
        match self.meta(key)? {
            GgufValue::F32(x) => Ok(f64::from(*x)),
            GgufValue::F64(x) => Ok(*x),
            other => Err(format!(
                "{}: `{key}` is not a number: {other:?}",
                self.path.display()
            )),
        }
    }

    pub fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        let arr = self
            .meta(key)?
            .to_vec()
            .map_err(|e| format!("{}: `{key}`: {e}", self.path.display()))?;
        arr.iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|e| format!("{}: `{key}`: {e}", self.path.display()))
            })
            .collect()
    }

    pub fn ints(&self, key: &str) -> Result<Vec<i64>, String> {
        let arr = self
            .meta(key)?
            .to_vec()
            .map_err(|e| format!("{}: `{key}`: {e}", self.path.display()))?;
        arr.iter()
            .map(|v| match v {
                GgufValue::I32(x) => Ok(i64::from(*x)),
                GgufValue::U32(x) => Ok(i64::from(*x)),
                GgufValue::I8(x) => Ok(i64::from(*x)),
                GgufValue::U8(x) => Ok(i64::from(*x)),
                other => Err(format!("{}: `{key}`: {other:?}", self.path.display())),
            })
            .collect()
    }

    /// Take a tensor out (each is used once when building a model).
    pub fn take(&mut self, name: &str) -> Result<Tensor, String> {
        self.tensors
            .remove(name)
            .ok_or_else(|| format!("{}: no tensor `{name}`", self.path.display()))
    }
}

/// The tokenizer of a GGUF whose `tokenizer.ggml.model` is `gpt2` (byte-level BPE, as in
/// SmolLM2): vocabulary and merges from the file, digits split one by one, then byte-level
/// (`tokenizer.ggml.pre` `smollm`, the pre-tokenizer of SmolLM2's `tokenizer.json`). Control
/// and user-defined tokens (`token_type` 3 and 4) are special: they match whole in the text
/// (so a chat template's `<|im_start|>` is one token) and decoding skips them.
pub fn bpe_tokenizer(g: &Gguf) -> Result<Tokenizer, String> {
    let model = g.text("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(format!(
            "{}: tokenizer model `{model}` is not byte-level BPE (`gpt2`)",
            g.path.display()
        ));
    }
    let tokens = g.strings("tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = g
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("{}: bad merge `{m}`", g.path.display()))
        })
        .collect::<Result<_, _>>()?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| format!("{}: BPE: {e}", g.path.display()))?;
    let mut tok = Tokenizer::new(bpe);
    let pre = Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ]);
    tok.with_pre_tokenizer(Some(pre));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let types = g.ints("tokenizer.ggml.token_type")?;
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| format!("{}: special tokens: {e}", g.path.display()))?;
    Ok(tok)
}

/// How a chat model's prompt is written around the user's message.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatTemplate {
    /// ChatML (`<|im_start|>role\n…<|im_end|>\n`), as SmolLM2's template writes it.
    ChatMl,
    /// Gemma's turns (`<start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n`).
    Gemma,
    /// The text as it is (`raw = true`, or a model without a template).
    Raw,
}

impl ChatTemplate {
    /// Recognize the file's `tokenizer.chat_template` (a Jinja text: matched by the markers it
    /// writes, not run). Returns the template and the default system message it contains.
    pub fn of(g: &Gguf) -> (ChatTemplate, Option<String>) {
        let Ok(t) = g.text("tokenizer.chat_template") else {
            return (ChatTemplate::Raw, None);
        };
        if t.contains("<|im_start|>") {
            let marker = "<|im_start|>system\n";
            let system = t.find(marker).and_then(|i| {
                let rest = &t[i + marker.len()..];
                rest.find("<|im_end|>").map(|j| rest[..j].to_string())
            });
            (ChatTemplate::ChatMl, system)
        } else if t.contains("<start_of_turn>") {
            (ChatTemplate::Gemma, None)
        } else {
            (ChatTemplate::Raw, None)
        }
    }

    /// The prompt text for one user message (and an optional system message).
    pub fn render(&self, system: Option<&str>, user: &str) -> String {
        match self {
            ChatTemplate::ChatMl => {
                let mut s = String::new();
                if let Some(sys) = system {
                    s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                s.push_str(&format!(
                    "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
                ));
                s
            }
            ChatTemplate::Gemma => {
                let u = match system {
                    Some(sys) => format!("{sys}\n\n{user}"),
                    None => user.to_string(),
                };
                format!("<start_of_turn>user\n{u}<end_of_turn>\n<start_of_turn>model\n")
            }
            ChatTemplate::Raw => user.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_puts_the_message_between_the_markers() {
        let p = ChatTemplate::ChatMl.render(Some("Be brief."), "Hi?");
        assert_eq!(
            p,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(ChatTemplate::Raw.render(Some("x"), "Hi?"), "Hi?");
    }
}
