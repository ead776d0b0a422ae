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
use super::kv::{self, KvOptions};
pub use super::kv_cache::Cache;
use super::llm_quant::{quantize_layer, sites, LlmQuant};
use super::qlinear::{self, Format, QLinear, KERNEL_ROWS};
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

    /// `y = x W` of `m` rows of `x` laid out flat: the quantized kernels straight on the
    /// slice when they run (decoding), else through [`Lin::forward`].
    fn rows(&self, xs: &[f32], m: usize) -> Result<Vec<f32>> {
        match self {
            Lin::Q(q) if m <= KERNEL_ROWS => {
                if xs.len() != m * q.inp {
                    candle_core::bail!(
                        "a layer of {} inputs got {} values for {m} rows",
                        q.inp,
                        xs.len()
                    );
                }
                let mut xs = xs.to_vec();
                q.prepare(&mut xs);
                Ok(q.kernel(&xs, m))
            }
            _ => self
                .forward(&Tensor::from_slice(
                    xs,
                    (m, xs.len() / m.max(1)),
                    &Device::Cpu,
                )?)?
                .flatten_all()?
                .to_vec1::<f32>(),
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
    attn_norm: Vec<f32>,
    q: Lin,
    k: Lin,
    v: Lin,
    o: Lin,
    ffn_norm: Vec<f32>,
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
    norm: Vec<f32>,
    blocks: Vec<Block>,
    /// `[positions, head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Pruning and storage of the KV cache (SPEC §4.9.2).
    pub kv: KvOptions,
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
        self.caches.first().map_or(0, Cache::len)
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

/// RMSNorm of each row of `x` (rows of `w.len()`), times `w`.
fn rms_rows(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let d = w.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = (ms + eps as f32).sqrt();
        out.extend(row.iter().zip(w).map(|(v, w)| v / r * w));
    }
    out
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
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

/// Rotary embedding on adjacent pairs (`x[2i]`, `x[2i+1]`) of every head of one position:
/// llama.cpp's "normal" mode, which GGUF files of Llama models are converted for. `x`:
/// `[heads, head_dim]`; `cos`, `sin`: the position's `[head_dim / 2]`.
fn rope_pairs(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    for head in x.chunks_mut(head_dim) {
        for (i, pair) in head.chunks_exact_mut(2).enumerate() {
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0 * cos[i] - x1 * sin[i];
            pair[1] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

/// A prompt chunk's attention (`m > 1` new positions at the end of the cache) with candle's
/// batched matmuls: `q` is `[m, heads, head_dim]`, the result goes to `out` in the same layout.
/// Query heads are grouped by their KV head (`[kv_heads, group · m, head_dim]`), so the cache
/// is not expanded. Returns the probabilities `[heads, m, len]` (for pruning).
fn attend_chunk(
    q: &[f32],
    m: usize,
    heads: usize,
    cache: &Cache,
    scale: f64,
    out: &mut [f32],
) -> Result<Tensor> {
    let dev = &Device::Cpu;
    let kvh = cache.heads();
    let (group, hd) = (heads / kvh, q.len() / (m * heads));
    let qt = Tensor::from_slice(q, (m, heads, hd), dev)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((kvh, group * m, hd))?;
    let (kk, vv) = cache.tensors(0)?;
    let len = kk.dim(1)?;
    let att = (qt.matmul(&kk.t()?)? * scale)?
        .reshape((kvh, group, m, len))?
        .broadcast_add(&chunk_mask(m, len, dev)?)?;
    let p = softmax_last(&att)?;
    let y = p
        .reshape((kvh, group * m, len))?
        .matmul(&vv)?
        .reshape((heads, m, hd))?
        .transpose(0, 1)?
        .contiguous()?;
    out.copy_from_slice(&y.flatten_all()?.to_vec1::<f32>()?);
    p.reshape((heads, m, len))
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
        let vec = |t: Tensor| -> std::result::Result<Vec<f32>, String> {
            t.to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(e)
        };
        let mut blocks = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let p = |n: &str| format!("blk.{l}.{n}.weight");
            let [(a, _), (o, _), (f, _), (d, _)] = sites(l);
            blocks.push(Block {
                attn_norm: vec(g.take(&p("attn_norm"))?)?,
                q: lin(&mut g, &p("attn_q"), &a)?,
                k: lin(&mut g, &p("attn_k"), &a)?,
                v: lin(&mut g, &p("attn_v"), &a)?,
                o: lin(&mut g, &p("attn_output"), &o)?,
                ffn_norm: vec(g.take(&p("ffn_norm"))?)?,
                gate: lin(&mut g, &p("ffn_gate"), &f)?,
                up: lin(&mut g, &p("ffn_up"), &f)?,
                down: lin(&mut g, &p("ffn_down"), &d)?,
            });
        }
        let norm = vec(g.take("output_norm.weight")?)?;
        let positions = positions.clamp(2, config.context.max(2));
        let (cos, sin) = rope_tables(positions, config.head_dim, config.rope_base).map_err(e)?;
        let (cos, sin) = (vec(cos)?, vec(sin)?);
        Ok(Llama {
            config,
            embed,
            head,
            quant,
            norm,
            blocks,
            cos,
            sin,
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
        self.cos.len() / (self.config.head_dim / 2)
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
            .index_select(&Tensor::from_vec(ids, n, dev)?, 0)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let rows = |v: &[f32]| -> Result<Tensor> { Tensor::from_slice(v, (n, v.len() / n), dev) };
        let scale = 1.0 / (hd as f64).sqrt();
        let group = h / kvh;
        let half = hd / 2;
        let (qw, kw) = (h * hd, kvh * hd);
        for (li, blk) in self.blocks.iter().enumerate() {
            let a = rms_rows(&x, &blk.attn_norm, c.eps);
            if let Some(f) = observe.as_mut() {
                f(li, Site::AttnIn, &rows(&a)?)?;
            }
            let mut q = blk.q.rows(&a, n)?;
            let mut k = blk.k.rows(&a, n)?;
            let v = blk.v.rows(&a, n)?;
            let mut y = vec![0f32; n * qw];
            for ((s, &(off, start, m)), &budget) in seqs.iter_mut().zip(&spans).zip(&budgets) {
                for t in 0..m {
                    let (p, r) = ((start + t) * half, off + t);
                    let (cos, sin) = (&self.cos[p..p + half], &self.sin[p..p + half]);
                    rope_pairs(&mut q[r * qw..(r + 1) * qw], hd, cos, sin);
                    rope_pairs(&mut k[r * kw..(r + 1) * kw], hd, cos, sin);
                }
                if s.caches.len() <= li {
                    s.caches.push(Cache::new(self.kv.store, kvh, hd));
                }
                let cache = &mut s.caches[li];
                cache.push(
                    &k[off * kw..(off + m) * kw],
                    &v[off * kw..(off + m) * kw],
                    m,
                );
                let (qs, out) = (
                    &q[off * qw..(off + m) * qw],
                    &mut y[off * qw..(off + m) * qw],
                );
                if m == 1 {
                    out.copy_from_slice(&cache.attend(qs, group, scale as f32, 0));
                    continue;
                }
                let p = attend_chunk(qs, m, h, cache, scale, out)?;
                if let Some(budget) = budget {
                    cache.retain(&self.kept(&p, budget)?);
                }
            }
            if let Some(f) = observe.as_mut() {
                f(li, Site::OIn, &rows(&y)?)?;
            }
            add_into(&mut x, &blk.o.rows(&y, n)?);
            let f = rms_rows(&x, &blk.ffn_norm, c.eps);
            if let Some(o) = observe.as_mut() {
                o(li, Site::FfnIn, &rows(&f)?)?;
            }
            let g = blk.gate.rows(&f, n)?;
            let u = blk.up.rows(&f, n)?;
            let gu: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            if let Some(o) = observe.as_mut() {
                o(li, Site::DownIn, &rows(&gu)?)?;
            }
            add_into(&mut x, &blk.down.rows(&gu, n)?);
        }
        if all_logits {
            let logits = self
                .head
                .forward(&rows(&rms_rows(&x, &self.norm, c.eps))?)?;
            if let Some(s) = seqs.first_mut() {
                let n = logits.dim(0)?;
                s.logits = logits.get(n - 1)?.to_vec1::<f32>()?;
            }
            return Ok(Some(logits));
        }
        let d = c.hidden;
        let last: Vec<f32> = spans
            .iter()
            .flat_map(|&(o, _, m)| &x[(o + m - 1) * d..(o + m) * d])
            .copied()
            .collect();
        let logits = self.head.rows(&rms_rows(&last, &self.norm, c.eps), b)?;
        for ((s, l), (budget, &(_, _, m))) in seqs
            .iter_mut()
            .zip(logits.chunks(c.vocab))
            .zip(budgets.iter().zip(&spans))
        {
            s.logits = l.to_vec();
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
    fn kept(&self, p: &Tensor, budget: usize) -> Result<Vec<Vec<u32>>> {
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
                Ok(kv::keep_positions(
                    &kv::pool(s),
                    kv::SINKS,
                    kv::WINDOW,
                    budget,
                ))
            })
            .collect()
    }
}
