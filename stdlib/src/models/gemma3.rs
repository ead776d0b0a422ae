//! `arch = "gemma3"`: a Gemma 3 decoder read from a GGUF file (Gemma-3-270m), dequantized to f32
//! at load, with one KV cache per sequence (SPEC §4.9). Gemma-3-270m is under the Gemma Terms of
//! Use, which are not an open-source license.
//!
//! Where it differs from [`super::llama`]: token embeddings are multiplied by `sqrt(hidden)`;
//! every RMSNorm multiplies by the GGUF's norm weight, which already holds Gemma's `1 + w` (the
//! converter adds the 1); queries and keys are RMS-normalized per head before the rotation; the
//! rotation turns the two halves of a head (NeoX order, not adjacent pairs); five layers of six
//! attend within a sliding window (`gemma3.attention.sliding_window` positions) with rotary base
//! 10 000, every sixth attends globally with base `gemma3.rope.freq_base`; the MLP is
//! `down(gelu_tanh(gate(x)) · up(x))`; the attention and MLP outputs are normalized again before
//! they join the residual (`post_attention_norm`, `post_ffw_norm`); the head is the embedding;
//! logits are soft-capped (`c·tanh(z/c)`) when the file sets `gemma3.final_logit_softcapping`.
//!
//! [`Gemma3::extend`] is the same continuous-batching iteration as [`super::llama::Llama::extend`]
//! over the same [`LlamaState`], so the chat node and its scheduler drive either model.

use candle_core::{DType, Device, Result, Tensor, D};

use super::gguf::Gguf;
use super::kv::KvOptions;
use super::kv::KvStore;
use super::llama::{rope_tables, Cache, Llama, LlamaState};

/// Rotary base of the sliding-window layers (llama.cpp's and Hugging Face's constant; the GGUF
/// does not store it).
const LOCAL_ROPE_BASE: f64 = 10_000.0;
/// Every `GLOBAL_EVERY`-th layer (1-based) attends globally.
const GLOBAL_EVERY: usize = 6;

/// Shapes and constants, from the GGUF's `gemma3.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3Config {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub rope_global: f64,
    pub rope_local: f64,
    pub window: usize,
    pub eps: f64,
    pub context: usize,
    pub softcap: Option<f64>,
}

impl Gemma3Config {
    pub fn from_gguf(g: &Gguf) -> std::result::Result<Gemma3Config, String> {
        let arch = g.text("general.architecture")?;
        if arch != "gemma3" {
            return Err(format!(
                "{} is a `{arch}` model, not `gemma3`",
                g.path.display()
            ));
        }
        let k = |n: &str| format!("gemma3.{n}");
        let hidden = g.uint(&k("embedding_length"))?;
        let heads = g.uint(&k("attention.head_count"))?;
        let kv_heads = g.uint(&k("attention.head_count_kv")).unwrap_or(heads);
        let head_dim = g.uint(&k("attention.key_length"))?;
        let v_dim = g.uint(&k("attention.value_length")).unwrap_or(head_dim);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || head_dim % 2 != 0 {
            return Err(format!(
                "{}: {heads} heads, {kv_heads} KV heads and head width {head_dim} do not fit",
                g.path.display()
            ));
        }
        if v_dim != head_dim {
            return Err(format!(
                "{}: value width {v_dim} differs from key width {head_dim}",
                g.path.display()
            ));
        }
        Ok(Gemma3Config {
            hidden,
            layers: g.uint(&k("block_count"))?,
            heads,
            kv_heads,
            head_dim,
            ffn: g.uint(&k("feed_forward_length"))?,
            vocab: g.strings("tokenizer.ggml.tokens")?.len(),
            rope_global: g.float(&k("rope.freq_base")).unwrap_or(1_000_000.0),
            rope_local: LOCAL_ROPE_BASE,
            window: g.uint(&k("attention.sliding_window"))?,
            eps: g.float(&k("attention.layer_norm_rms_epsilon"))?,
            context: g.uint(&k("context_length"))?,
            softcap: g.float(&k("final_logit_softcapping")).ok(),
        })
    }

    /// Whether layer `l` (0-based) attends globally (else within the window).
    pub fn is_global(&self, l: usize) -> bool {
        (l + 1) % GLOBAL_EVERY == 0
    }
}

struct Block {
    global: bool,
    attn_norm: Tensor,
    /// Weights transposed to `[in, out]`, so a layer is one `x.matmul(w)`.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    q_norm: Tensor,
    k_norm: Tensor,
    post_attn_norm: Tensor,
    ffn_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
    post_ffn_norm: Tensor,
}

/// The model: f32 weights and two sets of rotary tables.
pub struct Gemma3 {
    pub config: Gemma3Config,
    /// `[vocab, hidden]`, also the head (used transposed, not copied).
    embed: Tensor,
    norm: Tensor,
    blocks: Vec<Block>,
    /// `[positions, head_dim / 2]`: global layers, then sliding-window layers.
    rope_g: (Tensor, Tensor),
    rope_l: (Tensor, Tensor),
    kv_of_head: Tensor,
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
}

fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// The mask of a chunk of `m` new tokens at the end of `len` positions: row `i` (position
/// `p = len - m + i`) sees positions `j <= p`, and with a `window`, only `p - j < window`.
/// `None` when nothing is masked.
fn mask(m: usize, len: usize, window: Option<usize>, device: &Device) -> Result<Option<Tensor>> {
    let mut v = vec![0f32; m * len];
    let mut any = false;
    for i in 0..m {
        let p = len - m + i;
        for (j, cell) in v[i * len..(i + 1) * len].iter_mut().enumerate() {
            let outside = j > p || window.is_some_and(|w| p - j >= w);
            if outside {
                *cell = f32::NEG_INFINITY;
                any = true;
            }
        }
    }
    match any {
        true => Ok(Some(Tensor::from_vec(v, (m, len), device)?)),
        false => Ok(None),
    }
}

/// Rotary embedding in NeoX order: element `i` turns with element `i + head_dim/2`.
/// `x`: `[heads, m, head_dim]`; `cos`, `sin`: `[m, head_dim / 2]`.
fn rope_halves(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, m, hd) = x.dims3()?;
    let x0 = x.narrow(2, 0, hd / 2)?;
    let x1 = x.narrow(2, hd / 2, hd / 2)?;
    let c = cos.reshape((1, m, hd / 2))?;
    let s = sin.reshape((1, m, hd / 2))?;
    let r0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
    let r1 = (x1.broadcast_mul(&c)? + x0.broadcast_mul(&s)?)?;
    Tensor::cat(&[r0, r1], 2)
}

impl Gemma3 {
    /// Build from a read GGUF; `positions` bounds prompt plus generated tokens (at most the
    /// model's context).
    pub fn from_gguf(mut g: Gguf, positions: usize) -> std::result::Result<Gemma3, String> {
        let config = Gemma3Config::from_gguf(&g)?;
        let e = |e: candle_core::Error| e.to_string();
        let lin = |g: &mut Gguf, n: &str| -> std::result::Result<Tensor, String> {
            let t = g.take(n)?.to_dtype(DType::F32).map_err(e)?;
            t.t().map_err(e)?.contiguous().map_err(e)
        };
        let vec = |g: &mut Gguf, n: &str, len: usize| -> std::result::Result<Tensor, String> {
            let t = g.take(n)?.to_dtype(DType::F32).map_err(e)?;
            if t.dims() != [len] {
                return Err(format!("{n} has shape {:?}, expected [{len}]", t.dims()));
            }
            Ok(t)
        };
        let embed = g
            .take("token_embd.weight")?
            .to_dtype(DType::F32)
            .map_err(e)?;
        if embed.dims() != [config.vocab, config.hidden] {
            return Err(format!(
                "token_embd.weight has shape {:?}, expected [{}, {}]",
                embed.dims(),
                config.vocab,
                config.hidden
            ));
        }
        if g.tensors.contains_key("output.weight") {
            return Err(format!(
                "{}: a separate `output.weight` head is not supported (Gemma ties it to the embedding)",
                g.path.display()
            ));
        }
        let (hd, hid) = (config.head_dim, config.hidden);
        let mut blocks = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let p = |n: &str| format!("blk.{l}.{n}.weight");
            let b = Block {
                global: config.is_global(l),
                attn_norm: vec(&mut g, &p("attn_norm"), hid)?,
                q: lin(&mut g, &p("attn_q"))?,
                k: lin(&mut g, &p("attn_k"))?,
                v: lin(&mut g, &p("attn_v"))?,
                o: lin(&mut g, &p("attn_output"))?,
                q_norm: vec(&mut g, &p("attn_q_norm"), hd)?,
                k_norm: vec(&mut g, &p("attn_k_norm"), hd)?,
                post_attn_norm: vec(&mut g, &p("post_attention_norm"), hid)?,
                ffn_norm: vec(&mut g, &p("ffn_norm"), hid)?,
                gate: lin(&mut g, &p("ffn_gate"))?,
                up: lin(&mut g, &p("ffn_up"))?,
                down: lin(&mut g, &p("ffn_down"))?,
                post_ffn_norm: vec(&mut g, &p("post_ffw_norm"), hid)?,
            };
            let want = [
                ("attn_q", &b.q, [hid, config.heads * hd]),
                ("attn_k", &b.k, [hid, config.kv_heads * hd]),
                ("attn_v", &b.v, [hid, config.kv_heads * hd]),
                ("attn_output", &b.o, [config.heads * hd, hid]),
                ("ffn_gate", &b.gate, [hid, config.ffn]),
                ("ffn_up", &b.up, [hid, config.ffn]),
                ("ffn_down", &b.down, [config.ffn, hid]),
            ];
            for (n, t, shape) in want {
                if t.dims() != shape {
                    return Err(format!(
                        "{}: blk.{l}.{n}.weight has shape {:?} (transposed), expected {shape:?}",
                        g.path.display(),
                        t.dims()
                    ));
                }
            }
            blocks.push(b);
        }
        let norm = vec(&mut g, "output_norm.weight", hid)?;
        let positions = positions.clamp(2, config.context.max(2));
        let rope_g = rope_tables(positions, hd, config.rope_global).map_err(e)?;
        let rope_l = rope_tables(positions, hd, config.rope_local).map_err(e)?;
        let group = config.heads / config.kv_heads;
        let kv_of_head: Vec<u32> = (0..config.heads).map(|h| (h / group) as u32).collect();
        let kv_of_head = Tensor::from_vec(kv_of_head, config.heads, &Device::Cpu).map_err(e)?;
        Ok(Gemma3 {
            config,
            embed,
            norm,
            blocks,
            rope_g,
            rope_l,
            kv_of_head,
        })
    }

    /// The most positions a sequence can hold.
    pub fn positions(&self) -> usize {
        self.rope_g.0.dims()[0]
    }

    /// Append `chunks[i]` (at least one token) to sequence `seqs[i]` and run all of them in one
    /// pass; afterwards each state's caches cover its chunk and `logits` predicts the next token.
    /// Every layer keeps its whole cache (a sliding-window layer masks what is out of reach).
    pub fn extend(&self, seqs: &mut [&mut LlamaState], chunks: &[Vec<u32>]) -> Result<()> {
        let b = seqs.len();
        if b == 0 {
            return Ok(());
        }
        if chunks.len() != b {
            candle_core::bail!("{} chunks for {b} sequences", chunks.len());
        }
        let c = &self.config;
        let (h, kvh, hd) = (c.heads, c.kv_heads, c.head_dim);
        let dev = &Device::Cpu;
        let mut ids = Vec::new();
        let mut spans = Vec::with_capacity(b);
        for (s, ch) in seqs.iter().zip(chunks) {
            let start = s.cached();
            if ch.is_empty() {
                candle_core::bail!("an empty chunk");
            }
            if start + ch.len() > self.positions() {
                candle_core::bail!(
                    "position {} is past the limit {}",
                    start + ch.len() - 1,
                    self.positions()
                );
            }
            if let Some(&bad) = ch.iter().find(|&&t| t as usize >= c.vocab) {
                candle_core::bail!("token {bad} is outside the vocabulary of {}", c.vocab);
            }
            spans.push((ids.len(), start, ch.len()));
            ids.extend_from_slice(ch);
        }
        let n = ids.len();
        let mut x = self
            .embed
            .index_select(&Tensor::from_vec(ids, n, dev)?, 0)?;
        x = (x * (c.hidden as f64).sqrt())?;
        let scale = 1.0 / (hd as f64).sqrt();
        for (li, blk) in self.blocks.iter().enumerate() {
            let a = rms_norm(&x, &blk.attn_norm, c.eps)?;
            let q = a.matmul(&blk.q)?;
            let k = a.matmul(&blk.k)?;
            let v = a.matmul(&blk.v)?;
            let (cos_t, sin_t) = if blk.global {
                &self.rope_g
            } else {
                &self.rope_l
            };
            let window = (!blk.global).then_some(c.window);
            let mut rows = Vec::with_capacity(b);
            for (s, &(off, start, m)) in seqs.iter_mut().zip(&spans) {
                let heads = |t: &Tensor, nh: usize| -> Result<Tensor> {
                    t.narrow(0, off, m)?
                        .reshape((m, nh, hd))?
                        .transpose(0, 1)?
                        .contiguous()
                };
                let cos = cos_t.narrow(0, start, m)?;
                let sin = sin_t.narrow(0, start, m)?;
                let qs = rms_norm(&heads(&q, h)?, &blk.q_norm, c.eps)?;
                let ks = rms_norm(&heads(&k, kvh)?, &blk.k_norm, c.eps)?;
                let qs = rope_halves(&qs, &cos, &sin)?;
                let ks = rope_halves(&ks, &cos, &sin)?;
                let vs = heads(&v, kvh)?;
                let flat = |t: &Tensor| -> Result<Vec<f32>> {
                    t.transpose(0, 1)?
                        .contiguous()?
                        .flatten_all()?
                        .to_vec1::<f32>()
                };
                if s.caches.len() <= li {
                    s.caches.push(Cache::new(KvStore::F32, kvh, hd));
                }
                let cache = &mut s.caches[li];
                cache.push(&flat(&ks)?, &flat(&vs)?, m);
                let len = cache.len();
                // A window layer decoding one token reads only the window's end of its cache.
                let from = match window {
                    Some(w) if m == 1 && len > w => len - w,
                    _ => 0,
                };
                if m == 1 {
                    let q1 = qs.flatten_all()?.to_vec1::<f32>()?;
                    let y = cache.attend(&q1, h / kvh, scale as f32, from);
                    rows.push(Tensor::from_vec(y, (1, h * hd), dev)?);
                    continue;
                }
                let (kk, vv) = cache.tensors(from)?;
                let kk = kk.index_select(&self.kv_of_head, 0)?;
                let vv = vv.index_select(&self.kv_of_head, 0)?;
                let mut att = (qs.matmul(&kk.t()?)? * scale)?;
                if let Some(mk) = mask(m, len - from, window, dev)? {
                    att = att.broadcast_add(&mk)?;
                }
                let y = softmax_last(&att)?.matmul(&vv)?;
                rows.push(y.transpose(0, 1)?.reshape((m, h * hd))?);
            }
            let y = Tensor::cat(&rows, 0)?.matmul(&blk.o)?;
            x = (x + rms_norm(&y, &blk.post_attn_norm, c.eps)?)?;
            let f = rms_norm(&x, &blk.ffn_norm, c.eps)?;
            let g = f.matmul(&blk.gate)?.gelu()?;
            let u = f.matmul(&blk.up)?;
            let mlp = (g * u)?.matmul(&blk.down)?;
            x = (x + rms_norm(&mlp, &blk.post_ffn_norm, c.eps)?)?;
        }
        let last: Vec<u32> = spans.iter().map(|&(o, _, m)| (o + m - 1) as u32).collect();
        let last = x.index_select(&Tensor::from_vec(last, b, dev)?, 0)?;
        let mut logits = rms_norm(&last, &self.norm, c.eps)?.matmul(&self.embed.t()?)?;
        if let Some(cap) = c.softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        for (s, l) in seqs.iter_mut().zip(logits.to_vec2::<f32>()?) {
            s.logits = l;
        }
        Ok(())
    }
}

/// A GGUF decoder the chat node runs: Llama or Gemma 3, by `general.architecture`.
pub enum Decoder {
    Llama(Llama),
    Gemma3(Gemma3),
}

impl Decoder {
    /// The Llama decoder, when this is one (quantization and its benchmarks are Llama's).
    pub fn as_llama(&self) -> Option<&Llama> {
        match self {
            Decoder::Llama(l) => Some(l),
            Decoder::Gemma3(_) => None,
        }
    }

    pub fn positions(&self) -> usize {
        match self {
            Decoder::Llama(m) => m.positions(),
            Decoder::Gemma3(m) => m.positions(),
        }
    }

    pub fn extend(&self, seqs: &mut [&mut LlamaState], chunks: &[Vec<u32>]) -> Result<()> {
        match self {
            Decoder::Llama(m) => m.extend(seqs, chunks),
            Decoder::Gemma3(m) => m.extend(seqs, chunks),
        }
    }

    /// Set the KV options (`kv_keep`, `kv`; SPEC §4.9.2): Llama's only.
    pub fn set_kv(&mut self, kv: KvOptions) -> std::result::Result<(), String> {
        match self {
            Decoder::Llama(m) => {
                m.kv = kv;
                Ok(())
            }
            Decoder::Gemma3(_) if kv.is_default() => Ok(()),
            Decoder::Gemma3(_) => Err(
                "`kv_keep` and `kv` are implemented for `arch = \"llama\"` only, not for gemma3"
                    .into(),
            ),
        }
    }

    /// Bytes one cached position takes.
    pub fn kv_bytes_per_token(&self) -> usize {
        match self {
            Decoder::Llama(m) => m.kv_bytes_per_token(),
            Decoder::Gemma3(m) => {
                let c = &m.config;
                KvOptions::default().bytes_per_token(c.layers, c.kv_heads, c.head_dim)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_mask_hides_the_future_and_what_is_too_far_back() {
        let m = mask(2, 5, Some(3), &Device::Cpu).unwrap().unwrap();
        let v = m.to_vec2::<f32>().unwrap();
        let seen = |row: &Vec<f32>| row.iter().map(|x| x.is_finite()).collect::<Vec<_>>();
        // Row 0 is position 3: sees 1..=3; row 1 is position 4: sees 2..=4.
        assert_eq!(seen(&v[0]), [false, true, true, true, false]);
        assert_eq!(seen(&v[1]), [false, false, true, true, true]);
        assert!(mask(1, 5, None, &Device::Cpu).unwrap().is_none());
        assert!(mask(1, 3, Some(3), &Device::Cpu).unwrap().is_none());
    }

    #[test]
    fn neox_rotation_turns_element_i_with_element_i_plus_half() {
        // One head, one position, head_dim 4: pairs (0, 2) and (1, 3).
        let x = Tensor::new(&[[[1f32, 2.0, 3.0, 4.0]]], &Device::Cpu).unwrap();
        let (a, b) = (0.5f32, 0.25f32);
        let cos = Tensor::new(&[[a.cos(), b.cos()]], &Device::Cpu).unwrap();
        let sin = Tensor::new(&[[a.sin(), b.sin()]], &Device::Cpu).unwrap();
        let r = rope_halves(&x, &cos, &sin).unwrap();
        let r: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
        let want = [
            a.cos() - 3.0 * a.sin(),
            2.0 * b.cos() - 4.0 * b.sin(),
            3.0 * a.cos() + a.sin(),
            4.0 * b.cos() + 2.0 * b.sin(),
        ];
        for (g, w) in r.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{r:?} vs {want:?}");
        }
    }
}
