//! `arch = "llama"`: a Llama-architecture decoder (RMSNorm, rotary positions, grouped-query
//! attention, SwiGLU MLP) read from a GGUF file, dequantized to f32 at load, with one KV cache
//! per sequence (SPEC §4.9).
//!
//! [`Llama::extend`] is the continuous-batching iteration, as in `transformer_lm`: every
//! sequence of the pass contributes a chunk (a whole prompt or one new token); the linear
//! layers run as one matmul over all chunks' tokens, attention runs per sequence against its
//! own cache, the head only on each chunk's last token. A sequence's logits therefore do not
//! depend on which other sequences share its pass (up to float rounding in the batched
//! matmuls).

use candle_core::{DType, Device, Result, Tensor, D};

use super::gguf::Gguf;

/// Shapes and constants, from the GGUF's `llama.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub rope_base: f64,
    pub eps: f64,
    pub context: usize,
}

impl LlamaConfig {
    pub fn from_gguf(g: &Gguf) -> std::result::Result<LlamaConfig, String> {
        let arch = g.text("general.architecture")?;
        if arch != "llama" {
            return Err(format!(
                "{} is a `{arch}` model, not `llama`",
                g.path.display()
            ));
        }
        let hidden = g.uint("llama.embedding_length")?;
        let heads = g.uint("llama.attention.head_count")?;
        let kv_heads = g.uint("llama.attention.head_count_kv").unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(format!(
                "{}: {heads} heads, {kv_heads} KV heads and width {hidden} do not fit",
                g.path.display()
            ));
        }
        let vocab = g.strings("tokenizer.ggml.tokens")?.len();
        Ok(LlamaConfig {
            hidden,
            layers: g.uint("llama.block_count")?,
            heads,
            kv_heads,
            head_dim: hidden / heads,
            ffn: g.uint("llama.feed_forward_length")?,
            vocab,
            rope_base: g.float("llama.rope.freq_base").unwrap_or(10_000.0),
            eps: g.float("llama.attention.layer_norm_rms_epsilon")?,
            context: g.uint("llama.context_length")?,
        })
    }
}

struct Block {
    attn_norm: Tensor,
    /// Weights transposed to `[in, out]`, so a layer is one `x.matmul(w)`.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    ffn_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// The model: f32 weights and rotary tables.
pub struct Llama {
    pub config: LlamaConfig,
    embed: Tensor,
    /// The head, `[hidden, vocab]` (the embedding, transposed, when tied).
    head: Tensor,
    norm: Tensor,
    blocks: Vec<Block>,
    /// `[positions, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    /// Which KV head each query head reads.
    kv_of_head: Tensor,
}

/// One layer's cache: keys and values `[kv_heads, len, head_dim]`.
#[derive(Debug, Clone)]
pub struct Cache {
    pub k: Tensor,
    pub v: Tensor,
}

/// A sequence's caches (one per layer) and the logits of its next token.
#[derive(Debug, Clone, Default)]
pub struct LlamaState {
    pub caches: Vec<Cache>,
    pub logits: Vec<f32>,
}

impl LlamaState {
    pub fn cached(&self) -> usize {
        self.caches.first().map_or(0, |c| c.k.dims()[1])
    }
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

/// The mask of a chunk of `m` new tokens at the end of `len` positions: row `i` sees positions
/// up to `len - m + i`.
fn chunk_mask(m: usize, len: usize, device: &Device) -> Result<Tensor> {
    let mut mask = vec![0f32; m * len];
    for i in 0..m {
        for j in len - m + i + 1..len {
            mask[i * len + j] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(mask, (m, len), device)
}

/// Rotary embedding on adjacent pairs (`x[2i]`, `x[2i+1]`): llama.cpp's "normal" mode, which
/// GGUF files of Llama models are converted for. `x`: `[heads, m, head_dim]`; `cos`, `sin`:
/// `[m, head_dim / 2]`.
fn rope_pairs(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (h, m, hd) = x.dims3()?;
    let x = x.reshape((h, m, hd / 2, 2))?;
    let x0 = x.narrow(3, 0, 1)?;
    let x1 = x.narrow(3, 1, 1)?;
    let c = cos.reshape((1, m, hd / 2, 1))?;
    let s = sin.reshape((1, m, hd / 2, 1))?;
    let r0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
    let r1 = (x0.broadcast_mul(&s)? + x1.broadcast_mul(&c)?)?;
    Tensor::cat(&[r0, r1], 3)?.reshape((h, m, hd))
}

/// `[positions, dim/2]` cos and sin tables of rotary frequencies `base^(-2i/dim)`.
pub fn rope_tables(positions: usize, dim: usize, base: f64) -> Result<(Tensor, Tensor)> {
    let half = dim / 2;
    let mut c = Vec::with_capacity(positions * half);
    let mut s = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for i in 0..half {
            let f = 1.0 / base.powf(2.0 * i as f64 / dim as f64);
            let a = p as f64 * f;
            c.push(a.cos() as f32);
            s.push(a.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(c, (positions, half), &Device::Cpu)?,
        Tensor::from_vec(s, (positions, half), &Device::Cpu)?,
    ))
}

impl Llama {
    /// Build from a read GGUF; `positions` bounds prompt plus generated tokens (the rotary
    /// tables' length; at most the model's context).
    pub fn from_gguf(mut g: Gguf, positions: usize) -> std::result::Result<Llama, String> {
        let config = LlamaConfig::from_gguf(&g)?;
        let e = |e: candle_core::Error| e.to_string();
        let lin = |g: &mut Gguf, n: &str| -> std::result::Result<Tensor, String> {
            let t = g.take(n)?.to_dtype(DType::F32).map_err(e)?;
            t.t().map_err(e)?.contiguous().map_err(e)
        };
        let embed = g.take("token_embd.weight")?;
        if embed.dims() != [config.vocab, config.hidden] {
            return Err(format!(
                "token_embd.weight has shape {:?}, expected [{}, {}]",
                embed.dims(),
                config.vocab,
                config.hidden
            ));
        }
        let head = match g.tensors.contains_key("output.weight") {
            true => lin(&mut g, "output.weight")?,
            false => embed.t().map_err(e)?.contiguous().map_err(e)?,
        };
        let mut blocks = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let p = |n: &str| format!("blk.{l}.{n}.weight");
            blocks.push(Block {
                attn_norm: g.take(&p("attn_norm"))?,
                q: lin(&mut g, &p("attn_q"))?,
                k: lin(&mut g, &p("attn_k"))?,
                v: lin(&mut g, &p("attn_v"))?,
                o: lin(&mut g, &p("attn_output"))?,
                ffn_norm: g.take(&p("ffn_norm"))?,
                gate: lin(&mut g, &p("ffn_gate"))?,
                up: lin(&mut g, &p("ffn_up"))?,
                down: lin(&mut g, &p("ffn_down"))?,
            });
        }
        let norm = g.take("output_norm.weight")?;
        let positions = positions.clamp(2, config.context.max(2));
        let (cos, sin) = rope_tables(positions, config.head_dim, config.rope_base).map_err(e)?;
        let group = config.heads / config.kv_heads;
        let kv_of_head: Vec<u32> = (0..config.heads).map(|h| (h / group) as u32).collect();
        let kv_of_head = Tensor::from_vec(kv_of_head, config.heads, &Device::Cpu).map_err(e)?;
        Ok(Llama {
            config,
            embed,
            head,
            norm,
            blocks,
            cos,
            sin,
            kv_of_head,
        })
    }

    /// The most positions a sequence can hold.
    pub fn positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Append `chunks[i]` (at least one token) to sequence `seqs[i]` and run all of them in
    /// one pass; afterwards each state's caches cover its chunk and `logits` predicts the next
    /// token.
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
            spans.push((ids.len(), start, ch.len()));
            ids.extend_from_slice(ch);
        }
        let n = ids.len();
        let mut x = self.embed.index_select(&Tensor::from_vec(ids, n, dev)?, 0)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for (li, blk) in self.blocks.iter().enumerate() {
            let a = rms_norm(&x, &blk.attn_norm, c.eps)?;
            let q = a.matmul(&blk.q)?;
            let k = a.matmul(&blk.k)?;
            let v = a.matmul(&blk.v)?;
            let mut rows = Vec::with_capacity(b);
            for (s, &(off, start, m)) in seqs.iter_mut().zip(&spans) {
                let heads = |t: &Tensor, nh: usize| -> Result<Tensor> {
                    t.narrow(0, off, m)?
                        .reshape((m, nh, hd))?
                        .transpose(0, 1)?
                        .contiguous()
                };
                let cos = self.cos.narrow(0, start, m)?;
                let sin = self.sin.narrow(0, start, m)?;
                let qs = rope_pairs(&heads(&q, h)?, &cos, &sin)?;
                let ks = rope_pairs(&heads(&k, kvh)?, &cos, &sin)?;
                let vs = heads(&v, kvh)?;
                if let Some(cache) = s.caches.get_mut(li) {
                    cache.k = Tensor::cat(&[&cache.k, &ks], 1)?;
                    cache.v = Tensor::cat(&[&cache.v, &vs], 1)?;
                } else {
                    s.caches.push(Cache { k: ks, v: vs });
                }
                let cache = &s.caches[li];
                let len = cache.k.dim(1)?;
                let kk = cache.k.index_select(&self.kv_of_head, 0)?;
                let vv = cache.v.index_select(&self.kv_of_head, 0)?;
                let mut att = (qs.matmul(&kk.t()?)? * scale)?;
                if m > 1 {
                    att = att.broadcast_add(&chunk_mask(m, len, dev)?)?;
                }
                let y = softmax_last(&att)?.matmul(&vv)?;
                rows.push(y.transpose(0, 1)?.reshape((m, h * hd))?);
            }
            let y = Tensor::cat(&rows, 0)?;
            x = (x + y.matmul(&blk.o)?)?;
            let f = rms_norm(&x, &blk.ffn_norm, c.eps)?;
            let g = f.matmul(&blk.gate)?.silu()?;
            let u = f.matmul(&blk.up)?;
            x = (x + (g * u)?.matmul(&blk.down)?)?;
        }
        let last: Vec<u32> = spans.iter().map(|&(o, _, m)| (o + m - 1) as u32).collect();
        let last = x.index_select(&Tensor::from_vec(last, b, dev)?, 0)?;
        let logits = rms_norm(&last, &self.norm, c.eps)?
            .matmul(&self.head)?
            .to_vec2::<f32>()?;
        for (s, l) in seqs.iter_mut().zip(logits) {
            s.logits = l;
        }
        Ok(())
    }
}
