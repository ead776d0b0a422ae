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

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Tensor, D};

use super::gguf::Gguf;
use super::kv::{self, KvOptions, KvStore};
use super::llm_quant::{quantize_layer, sites, LlmQuant};
use super::qlinear::{self, Format, QLinear};
use super::quant::ActStats;

/// A linear layer: f32 (`[in, out]`, one `x.matmul(w)`) or quantized.
enum Lin {
    F32(Tensor),
    Q(QLinear),
}

impl Lin {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Lin::F32(w) => x.matmul(w),
            Lin::Q(q) => qlinear::forward(q, x),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Lin::F32(w) => 4 * w.elem_count(),
            Lin::Q(q) => q.weight_bytes(),
        }
    }
}

/// Where [`Llama::extend_observed`] shows a block's layer inputs (the calibration sites).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    AttnIn,
    OIn,
    FfnIn,
    DownIn,
}

/// Called with block index, site and the input rows `[n, in]` of every pass.
pub type Observer<'a> = &'a mut dyn FnMut(usize, Site, &Tensor) -> Result<()>;

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
    q: Lin,
    k: Lin,
    v: Lin,
    o: Lin,
    ffn_norm: Tensor,
    gate: Lin,
    up: Lin,
    down: Lin,
}

/// The model: f32 weights and rotary tables.
pub struct Llama {
    pub config: LlamaConfig,
    embed: Tensor,
    /// The head (the embedding when tied): f32 `[hidden, vocab]`, or int8 per row.
    head: Lin,
    /// The mode the layers were built in.
    pub quant: LlmQuant,
    norm: Tensor,
    blocks: Vec<Block>,
    /// `[positions, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    /// Which KV head each query head reads.
    kv_of_head: Tensor,
    /// Pruning and storage of the KV cache (SPEC §4.9.2).
    pub kv: KvOptions,
}

/// One layer's cache: keys and values `[kv_heads, len, head_dim]`, f32, or (`kv = "int8"`)
/// u8 codes with the scales of keys and values, `[kv_heads, len, 1]` each.
#[derive(Debug, Clone)]
pub struct Cache {
    pub k: Tensor,
    pub v: Tensor,
    pub scales: Option<(Tensor, Tensor)>,
}

impl Cache {
    /// Keys and values in f32.
    fn f32(&self) -> Result<(Tensor, Tensor)> {
        match &self.scales {
            None => Ok((self.k.clone(), self.v.clone())),
            Some((dk, dv)) => Ok((kv::dequantize(&self.k, dk)?, kv::dequantize(&self.v, dv)?)),
        }
    }

    /// Keep positions `keep[h]` of KV head `h`.
    fn retain(&mut self, keep: &[Tensor]) -> Result<()> {
        let pick = |t: &Tensor| -> Result<Tensor> {
            let rows = keep
                .iter()
                .enumerate()
                .map(|(h, idx)| t.get(h)?.index_select(idx, 0))
                .collect::<Result<Vec<_>>>()?;
            Tensor::stack(&rows, 0)
        };
        self.k = pick(&self.k)?;
        self.v = pick(&self.v)?;
        if let Some((dk, dv)) = &self.scales {
            self.scales = Some((pick(dk)?, pick(dv)?));
        }
        Ok(())
    }

    fn bytes(&self) -> usize {
        let t = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        t(&self.k) + t(&self.v) + self.scales.as_ref().map_or(0, |(a, b)| t(a) + t(b))
    }
}

/// A sequence's caches (one per layer) and the logits of its next token.
#[derive(Debug, Clone, Default)]
pub struct LlamaState {
    pub caches: Vec<Cache>,
    pub logits: Vec<f32>,
    /// Positions pruning removed from the caches (`kv_keep`).
    pub evicted: usize,
}

impl LlamaState {
    /// Positions the caches hold (KV tokens).
    pub fn cached(&self) -> usize {
        self.caches.first().map_or(0, |c| c.k.dims()[1])
    }

    /// The position of the next token: cached plus evicted.
    pub fn position(&self) -> usize {
        self.cached() + self.evicted
    }

    /// Bytes the caches take.
    pub fn kv_bytes(&self) -> usize {
        self.caches.iter().map(Cache::bytes).sum()
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
    /// Build from a read GGUF in f32; `positions` bounds prompt plus generated tokens (the
    /// rotary tables' length; at most the model's context).
    pub fn from_gguf(g: Gguf, positions: usize) -> std::result::Result<Llama, String> {
        Llama::from_gguf_quantized(g, positions, LlmQuant::None, None)
    }

    /// Build in a `quantize` mode; `stats` (site → statistics, see [`super::llm_quant`]) are
    /// required by `awq_int4` and `smoothquant_int8`.
    pub fn from_gguf_quantized(
        mut g: Gguf,
        positions: usize,
        quant: LlmQuant,
        stats: Option<&BTreeMap<String, ActStats>>,
    ) -> std::result::Result<Llama, String> {
        let config = LlamaConfig::from_gguf(&g)?;
        let e = |e: candle_core::Error| e.to_string();
        if quant.needs_stats() && stats.is_none() {
            return Err(format!(
                "quantize = {} needs calibration statistics (model key `calibration`; make them with `marsc weights calibrate --llama`)",
                quant.name()
            ));
        }
        let lin = |g: &mut Gguf, n: &str, site: &str| -> std::result::Result<Lin, String> {
            let t = g.take(n)?.to_dtype(DType::F32).map_err(e)?;
            let (_, inp) = t.dims2().map_err(e)?;
            if quant == LlmQuant::None || !inp.is_multiple_of(32) {
                return Ok(Lin::F32(t.t().map_err(e)?.contiguous().map_err(e)?));
            }
            let st =
                match stats {
                    Some(s) if quant.needs_stats() => Some(s.get(site).ok_or_else(|| {
                        format!("the calibration statistics have no site `{site}`")
                    })?),
                    _ => None,
                };
            if let Some(st) = st {
                if st.sq_mean.len() != inp {
                    return Err(format!(
                        "calibration site `{site}` has {} channels; `{n}` takes {inp}",
                        st.sq_mean.len()
                    ));
                }
            }
            let w = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(e)?;
            quantize_layer(&w, inp, quant, st)
                .map(Lin::Q)
                .map_err(|m| format!("`{n}`: {m}"))
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
        let head_w = match g.tensors.contains_key("output.weight") {
            true => g.take("output.weight")?,
            false => embed.clone(),
        };
        let head = if quant == LlmQuant::None || !config.hidden.is_multiple_of(32) {
            Lin::F32(head_w.t().map_err(e)?.contiguous().map_err(e)?)
        } else {
            let w = head_w
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(e)?;
            Lin::Q(QLinear::new(
                &w,
                config.hidden,
                Format::Int8 { act8: false },
                None,
            )?)
        };
        let mut blocks = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let p = |n: &str| format!("blk.{l}.{n}.weight");
            let [(a, _), (o, _), (f, _), (d, _)] = sites(l);
            blocks.push(Block {
                attn_norm: g.take(&p("attn_norm"))?,
                q: lin(&mut g, &p("attn_q"), &a)?,
                k: lin(&mut g, &p("attn_k"), &a)?,
                v: lin(&mut g, &p("attn_v"), &a)?,
                o: lin(&mut g, &p("attn_output"), &o)?,
                ffn_norm: g.take(&p("ffn_norm"))?,
                gate: lin(&mut g, &p("ffn_gate"), &f)?,
                up: lin(&mut g, &p("ffn_up"), &f)?,
                down: lin(&mut g, &p("ffn_down"), &d)?,
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
            quant,
            norm,
            blocks,
            cos,
            sin,
            kv_of_head,
            kv: KvOptions::default(),
        })
    }

    /// Bytes one cached position takes in this model's `kv` storage.
    pub fn kv_bytes_per_token(&self) -> usize {
        let c = &self.config;
        self.kv.bytes_per_token(c.layers, c.kv_heads, c.head_dim)
    }

    /// Bytes of linear-layer weights one decode step reads (blocks and head).
    pub fn weight_bytes(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down]
                    .iter()
                    .map(|l| l.bytes())
                    .sum::<usize>()
            })
            .sum();
        blocks + self.head.bytes()
    }

    /// The most positions a sequence can hold.
    pub fn positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Append `chunks[i]` (at least one token) to sequence `seqs[i]` and run all of them in
    /// one pass; afterwards each state's caches cover its chunk and `logits` predicts the next
    /// token.
    pub fn extend(&self, seqs: &mut [&mut LlamaState], chunks: &[Vec<u32>]) -> Result<()> {
        self.extend_inner(seqs, chunks, None, false).map(|_| ())
    }

    /// [`Llama::extend`], showing every block's layer inputs to `observe` (calibration).
    pub fn extend_observed(
        &self,
        seqs: &mut [&mut LlamaState],
        chunks: &[Vec<u32>],
        observe: Observer<'_>,
    ) -> Result<()> {
        self.extend_inner(seqs, chunks, Some(observe), false)
            .map(|_| ())
    }

    /// The logits of every position of `tokens` run as one fresh sequence, `[n, vocab]`
    /// (teacher forcing: for perplexity and per-token divergences).
    pub fn logits_all(&self, tokens: &[u32]) -> Result<Tensor> {
        let mut st = LlamaState::default();
        let all = self.extend_inner(&mut [&mut st], &[tokens.to_vec()], None, true)?;
        all.ok_or_else(|| candle_core::Error::Msg("no logits".into()))
    }

    fn extend_inner(
        &self,
        seqs: &mut [&mut LlamaState],
        chunks: &[Vec<u32>],
        mut observe: Option<Observer<'_>>,
        all_logits: bool,
    ) -> Result<Option<Tensor>> {
        let b = seqs.len();
        if b == 0 {
            return Ok(None);
        }
        if chunks.len() != b {
            candle_core::bail!("{} chunks for {b} sequences", chunks.len());
        }
        let c = &self.config;
        let (h, kvh, hd) = (c.heads, c.kv_heads, c.head_dim);
        let dev = &Device::Cpu;
        let mut ids = Vec::new();
        let mut spans = Vec::with_capacity(b);
        // Pruning applies to a sequence's first chunk (its prompt), once prefilled.
        let mut budgets = Vec::with_capacity(b);
        for (s, ch) in seqs.iter().zip(chunks) {
            let start = s.position();
            budgets.push(match s.caches.is_empty() && !all_logits {
                true => self.kv.budget(ch.len()),
                false => None,
            });
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
        let mut x = self
            .embed
            .index_select(&Tensor::from_vec(ids, n, dev)?, 0)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for (li, blk) in self.blocks.iter().enumerate() {
            let a = rms_norm(&x, &blk.attn_norm, c.eps)?;
            if let Some(f) = observe.as_mut() {
                f(li, Site::AttnIn, &a)?;
            }
            let q = blk.q.forward(&a)?;
            let k = blk.k.forward(&a)?;
            let v = blk.v.forward(&a)?;
            let mut rows = Vec::with_capacity(b);
            for ((s, &(off, start, m)), &budget) in seqs.iter_mut().zip(&spans).zip(&budgets) {
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
                let new = match self.kv.store {
                    KvStore::F32 => Cache {
                        k: ks,
                        v: vs,
                        scales: None,
                    },
                    KvStore::Int8 => {
                        let (k, dk) = kv::quantize(&ks)?;
                        let (v, dv) = kv::quantize(&vs)?;
                        Cache {
                            k,
                            v,
                            scales: Some((dk, dv)),
                        }
                    }
                };
                if let Some(cache) = s.caches.get_mut(li) {
                    cache.k = Tensor::cat(&[&cache.k, &new.k], 1)?;
                    cache.v = Tensor::cat(&[&cache.v, &new.v], 1)?;
                    if let (Some((dk, dv)), Some((nk, nv))) = (&mut cache.scales, &new.scales) {
                        *dk = Tensor::cat(&[&*dk, nk], 1)?;
                        *dv = Tensor::cat(&[&*dv, nv], 1)?;
                    }
                } else {
                    s.caches.push(new);
                }
                let cache = &mut s.caches[li];
                let (kf, vf) = cache.f32()?;
                let len = kf.dim(1)?;
                let kk = kf.index_select(&self.kv_of_head, 0)?;
                let vv = vf.index_select(&self.kv_of_head, 0)?;
                let mut att = (qs.matmul(&kk.t()?)? * scale)?;
                if m > 1 {
                    att = att.broadcast_add(&chunk_mask(m, len, dev)?)?;
                }
                let p = softmax_last(&att)?;
                let y = p.matmul(&vv)?;
                rows.push(y.transpose(0, 1)?.reshape((m, h * hd))?);
                if let Some(budget) = budget {
                    cache.retain(&self.kept(&p, budget)?)?;
                }
            }
            let y = Tensor::cat(&rows, 0)?;
            if let Some(f) = observe.as_mut() {
                f(li, Site::OIn, &y)?;
            }
            x = (x + blk.o.forward(&y)?)?;
            let f = rms_norm(&x, &blk.ffn_norm, c.eps)?;
            if let Some(o) = observe.as_mut() {
                o(li, Site::FfnIn, &f)?;
            }
            let g = blk.gate.forward(&f)?.silu()?;
            let u = blk.up.forward(&f)?;
            let gu = (g * u)?;
            if let Some(o) = observe.as_mut() {
                o(li, Site::DownIn, &gu)?;
            }
            x = (x + blk.down.forward(&gu)?)?;
        }
        if all_logits {
            let logits = self.head.forward(&rms_norm(&x, &self.norm, c.eps)?)?;
            if let Some(s) = seqs.first_mut() {
                let n = logits.dim(0)?;
                s.logits = logits.get(n - 1)?.to_vec1::<f32>()?;
            }
            return Ok(Some(logits));
        }
        let last: Vec<u32> = spans.iter().map(|&(o, _, m)| (o + m - 1) as u32).collect();
        let last = x.index_select(&Tensor::from_vec(last, b, dev)?, 0)?;
        let logits = self
            .head
            .forward(&rms_norm(&last, &self.norm, c.eps)?)?
            .to_vec2::<f32>()?;
        for ((s, l), (budget, &(_, _, m))) in
            seqs.iter_mut().zip(logits).zip(budgets.iter().zip(&spans))
        {
            s.logits = l;
            if let Some(b) = budget {
                s.evicted += m - b;
            }
        }
        Ok(None)
    }

    /// The positions each KV head keeps of a prefilled prompt, from its attention
    /// probabilities `p: [heads, m, m]`: the observation window's (last `WINDOW` queries')
    /// probabilities summed over its rows and the KV head's query heads, pooled, then
    /// [`kv::keep_positions`].
    fn kept(&self, p: &Tensor, budget: usize) -> Result<Vec<Tensor>> {
        let c = &self.config;
        let (_, m, len) = p.dims3()?;
        let w = kv::WINDOW.min(m);
        let scores = p
            .narrow(1, m - w, w)?
            .sum(1)?
            .reshape((c.kv_heads, c.heads / c.kv_heads, len))?
            .sum(1)?
            .to_vec2::<f32>()?;
        scores
            .iter()
            .map(|s| {
                let keep = kv::keep_positions(&kv::pool(s), kv::SINKS, kv::WINDOW, budget);
                let n = keep.len();
                Tensor::from_vec(keep, n, &Device::Cpu)
            })
            .collect()
    }
}
