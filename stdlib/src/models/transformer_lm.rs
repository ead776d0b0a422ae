//! `transformer_lm`: a decoder-only transformer (pre-LayerNorm, learned positions, GELU MLP) with
//! per-sequence KV caches.
//!
//! A request's prompt is `<bos> tokens(text) <sep>`; the model generates until `<eos>`,
//! `max_tokens` or its position limit. The step-level API is what a continuous-batching
//! scheduler drives: [`TransformerLm::prefill`] starts sequences (one padded batch of any
//! lengths), [`TransformerLm::decode_step`] advances any set of running sequences by one token,
//! each against its own cache, so sequences can join and leave between steps. Linear layers run
//! batched over all sequences; attention runs per sequence over its own cache, so a sequence's
//! result does not depend on which others share its batch (up to float rounding in the batched
//! matmuls).

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, D};
use serde::{Deserialize, Serialize};

use super::linear::{Linear, Quantize};
use super::quant::ActStats;
use super::tokenizer::{Tokenizer, BOS, EOS, SEP};

/// Shapes, stored as JSON in the weights' metadata key `mars.config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmConfig {
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
    /// Longest sequence (prompt + generated tokens) the position table covers.
    pub max_len: usize,
}

impl LmConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Every tensor name and shape, in a fixed order.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, f, v) = (self.d_model, self.d_ff, self.vocab_size);
        let mut out = vec![
            ("tok_emb".to_string(), vec![v, d]),
            ("pos_emb".to_string(), vec![self.max_len, d]),
        ];
        for l in 0..self.n_layers {
            for (n, s) in [
                ("ln1.w", vec![d]),
                ("ln1.b", vec![d]),
                ("qkv.w", vec![3 * d, d]),
                ("qkv.b", vec![3 * d]),
                ("out.w", vec![d, d]),
                ("out.b", vec![d]),
                ("ln2.w", vec![d]),
                ("ln2.b", vec![d]),
                ("fc1.w", vec![f, d]),
                ("fc1.b", vec![f]),
                ("fc2.w", vec![d, f]),
                ("fc2.b", vec![d]),
            ] {
                out.push((format!("l{l}.{n}"), s));
            }
        }
        out.push(("lnf.w".into(), vec![d]));
        out.push(("lnf.b".into(), vec![d]));
        out.push(("head.w".into(), vec![v, d]));
        out
    }
}

struct LayerNorm {
    w: Tensor,
    b: Tensor,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(&self.w)?
            .broadcast_add(&self.b)
    }
}

struct Layer {
    ln1: LayerNorm,
    qkv: Linear,
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The model: weights (dense or quantized) and shapes.
pub struct TransformerLm {
    pub config: LmConfig,
    tok_emb: Tensor,
    pos_emb: Tensor,
    layers: Vec<Layer>,
    lnf: LayerNorm,
    head: Linear,
}

/// One layer's cache: keys and values `[heads, len, head_dim]`.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub k: Tensor,
    pub v: Tensor,
}

/// A running sequence: its tokens so far and its caches.
#[derive(Debug, Clone)]
pub struct SeqState {
    /// Prompt tokens followed by generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// One cache per layer, covering `tokens[..cached]`.
    pub caches: Vec<KvCache>,
    /// The next token's logits (from the last step), `[vocab]`.
    pub logits: Vec<f32>,
    pub finished: bool,
}

impl SeqState {
    /// Number of positions in the cache.
    pub fn cached(&self) -> usize {
        self.caches.first().map_or(0, |c| c.k.dims()[1])
    }

    /// Generated tokens (without the final `<eos>`).
    pub fn generated(&self) -> &[u32] {
        let g = &self.tokens[self.prompt_len..];
        g.strip_suffix(&[EOS]).unwrap_or(g)
    }
}

/// The prompt of a text: `<bos> tokens <sep>`.
pub fn prompt_tokens(tok: &Tokenizer, text: &str) -> Vec<u32> {
    let mut t = vec![BOS];
    t.extend(tok.encode(text));
    t.push(SEP);
    t
}

fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `log_softmax` over the last dim.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let xs = x.broadcast_sub(&m)?;
    let lse = xs.exp()?.sum_keepdim(D::Minus1)?.log()?;
    xs.broadcast_sub(&lse)
}

fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; t * t];
    for i in 0..t {
        for j in i + 1..t {
            m[i * t + j] = -1e9;
        }
    }
    Tensor::from_vec(m, (t, t), device)
}

impl TransformerLm {
    /// Build from named tensors (see [`LmConfig::tensor_shapes`]); checks every shape.
    pub fn from_tensors(
        config: LmConfig,
        tensors: &HashMap<String, Tensor>,
        q: Quantize,
    ) -> std::result::Result<TransformerLm, String> {
        if config.n_heads == 0 || !config.d_model.is_multiple_of(config.n_heads) {
            return Err(format!(
                "d_model {} is not a multiple of n_heads {}",
                config.d_model, config.n_heads
            ));
        }
        for (name, shape) in config.tensor_shapes() {
            let t = tensors
                .get(&name)
                .ok_or_else(|| format!("the weights have no tensor `{name}`"))?;
            if t.dims() != shape.as_slice() {
                return Err(format!(
                    "tensor `{name}` has shape {:?}; the config says {:?}",
                    t.dims(),
                    shape
                ));
            }
        }
        let get = |n: &str| -> std::result::Result<Tensor, String> {
            let t = tensors
                .get(n)
                .ok_or_else(|| format!("the weights have no tensor `{n}`"))?;
            t.to_dtype(DType::F32).map_err(|e| e.to_string())
        };
        let lin = |p: &str, bias: bool| -> std::result::Result<Linear, String> {
            let w = get(&format!("{p}.w"))?;
            let b = if bias {
                get(&format!("{p}.b"))?
            } else {
                Tensor::zeros(w.dim(0).map_err(|e| e.to_string())?, DType::F32, w.device())
                    .map_err(|e| e.to_string())?
            };
            let stats = if q.needs_stats() {
                let in_dim = w.dim(1).map_err(|e| e.to_string())?;
                Some(
                    ActStats::from_tensors(tensors, p, in_dim)?
                        .ok_or_else(|| format!("layer `{p}` has no calibration statistics"))?,
                )
            } else {
                None
            };
            Linear::new(w, b, q, stats.as_ref()).map_err(|e| format!("layer `{p}`: {e}"))
        };
        let ln = |p: &str| -> std::result::Result<LayerNorm, String> {
            Ok(LayerNorm {
                w: get(&format!("{p}.w"))?,
                b: get(&format!("{p}.b"))?,
            })
        };
        let mut layers = Vec::new();
        for l in 0..config.n_layers {
            layers.push(Layer {
                ln1: ln(&format!("l{l}.ln1"))?,
                qkv: lin(&format!("l{l}.qkv"), true)?,
                out: lin(&format!("l{l}.out"), true)?,
                ln2: ln(&format!("l{l}.ln2"))?,
                fc1: lin(&format!("l{l}.fc1"), true)?,
                fc2: lin(&format!("l{l}.fc2"), true)?,
            });
        }
        Ok(TransformerLm {
            tok_emb: get("tok_emb")?,
            pos_emb: get("pos_emb")?,
            layers,
            lnf: ln("lnf")?,
            head: lin("head", false)?,
            config,
        })
    }

    /// Full causal forward over `tokens: [b, t]` (u32): logits `[b, t, vocab]` and each layer's
    /// keys and values `[b, heads, t, head_dim]`. Used for training and prefill; pad at the end
    /// (causality keeps padding from reaching earlier positions).
    pub fn forward_full(&self, tokens: &Tensor) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        self.forward_full_observed(tokens, &mut |_, _| Ok(()))
    }

    /// [`TransformerLm::forward_full`], calling `observe(layer, input)` with every linear
    /// layer's input (`[b·t, in]`) before it runs, layers named as in the weights (`l0.qkv`,
    /// `l0.out`, `l0.fc1`, `l0.fc2`, …, `head`): how calibration records activations.
    pub fn forward_full_observed(
        &self,
        tokens: &Tensor,
        observe: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let (b, t) = tokens.dims2()?;
        let (d, h, hd) = (
            self.config.d_model,
            self.config.n_heads,
            self.config.head_dim(),
        );
        let emb = self
            .tok_emb
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let mut x = emb
            .broadcast_add(&self.pos_emb.narrow(0, 0, t)?)?
            .reshape((b * t, d))?;
        let mask = causal_mask(t, tokens.device())?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut kvs = Vec::with_capacity(self.layers.len());
        for (li, layer) in self.layers.iter().enumerate() {
            let h1 = layer.ln1.forward(&x)?;
            observe(&format!("l{li}.qkv"), &h1)?;
            let qkv = layer.qkv.forward(&h1)?;
            let split = |i: usize| -> Result<Tensor> {
                qkv.narrow(1, i * d, d)?
                    .reshape((b, t, h, hd))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (split(0)?, split(1)?, split(2)?);
            let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let y = softmax_last(&att)?.matmul(&v)?;
            let y = y.transpose(1, 2)?.reshape((b * t, d))?;
            observe(&format!("l{li}.out"), &y)?;
            x = (x + layer.out.forward(&y)?)?;
            let h2 = layer.ln2.forward(&x)?;
            observe(&format!("l{li}.fc1"), &h2)?;
            let m = layer.fc1.forward(&h2)?.gelu()?;
            observe(&format!("l{li}.fc2"), &m)?;
            x = (x + layer.fc2.forward(&m)?)?;
            kvs.push((k, v));
        }
        let hf = self.lnf.forward(&x)?;
        observe("head", &hf)?;
        let logits = self.head.forward(&hf)?;
        Ok((logits.reshape((b, t, self.config.vocab_size))?, kvs))
    }

    /// Start sequences from their prompts in one padded batch: fills each sequence's caches
    /// and its next-token logits.
    pub fn prefill(&self, prompts: &[Vec<u32>]) -> Result<Vec<SeqState>> {
        let Some(t) = prompts.iter().map(Vec::len).max() else {
            return Ok(Vec::new());
        };
        let b = prompts.len();
        let mut flat = Vec::with_capacity(b * t);
        for p in prompts {
            flat.extend_from_slice(p);
            flat.extend(std::iter::repeat_n(0u32, t - p.len()));
        }
        let dev = self.tok_emb.device();
        let tokens = Tensor::from_vec(flat, (b, t), dev)?;
        let (logits, kvs) = self.forward_full(&tokens)?;
        let mut out = Vec::with_capacity(b);
        for (i, p) in prompts.iter().enumerate() {
            let n = p.len();
            let caches = kvs
                .iter()
                .map(|(k, v)| {
                    Ok(KvCache {
                        k: k.get(i)?.narrow(1, 0, n)?.contiguous()?,
                        v: v.get(i)?.narrow(1, 0, n)?.contiguous()?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let last = logits.get(i)?.get(n - 1)?.to_vec1::<f32>()?;
            out.push(SeqState {
                tokens: p.clone(),
                prompt_len: n,
                caches,
                logits: last,
                finished: false,
            });
        }
        Ok(out)
    }

    /// Append `next[i]` to sequence `seqs[i]` and run one step for all of them together:
    /// afterwards each sequence's cache covers its new token and `logits` predicts the next.
    /// The same pass as [`TransformerLm::extend`] with one-token chunks, so whole-batch
    /// generation and the continuous-batching scheduler share one kernel.
    pub fn decode_step(&self, seqs: &mut [&mut SeqState], next: &[u32]) -> Result<()> {
        if next.len() != seqs.len() {
            candle_core::bail!("{} tokens for {} sequences", next.len(), seqs.len());
        }
        let chunks: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        self.extend(seqs, &chunks)
    }
}

impl SeqState {
    /// A sequence with nothing computed yet: [`TransformerLm::extend`] fills its caches from
    /// `tokens` (prompt, or prompt plus generated tokens when recomputed).
    pub fn empty(prompt_len: usize) -> SeqState {
        SeqState {
            tokens: Vec::new(),
            prompt_len,
            caches: Vec::new(),
            logits: Vec::new(),
            finished: false,
        }
    }
}

impl TransformerLm {
    /// Append a chunk of tokens to each sequence and run them all in one forward pass:
    /// `chunks[i]` (at least one token) continues `seqs[i]` from its cached length, so a
    /// chunk may be a whole prompt (a prefill, from [`SeqState::empty`]) or one token (a
    /// decode step). Embeddings, LayerNorms, QKV, output projection and MLP run as one
    /// matmul over all the chunks' tokens; attention runs per sequence against its own cache,
    /// causally within its chunk; the head runs on each chunk's last token only. This is the
    /// continuous-batching scheduler's iteration: joining prompts beside running decode rows.
    pub fn extend(&self, seqs: &mut [&mut SeqState], chunks: &[Vec<u32>]) -> Result<()> {
        let b = seqs.len();
        if b == 0 {
            return Ok(());
        }
        if chunks.len() != b {
            candle_core::bail!("{} chunks for {b} sequences", chunks.len());
        }
        let (d, h, hd) = (
            self.config.d_model,
            self.config.n_heads,
            self.config.head_dim(),
        );
        let dev = self.tok_emb.device();
        let mut ids: Vec<u32> = Vec::new();
        let mut positions: Vec<u32> = Vec::new();
        let mut last_rows: Vec<u32> = Vec::with_capacity(b);
        for (s, c) in seqs.iter().zip(chunks) {
            let start = s.cached();
            if c.is_empty() {
                candle_core::bail!("an empty chunk");
            }
            if start + c.len() > self.config.max_len {
                candle_core::bail!(
                    "position {} is past the model's limit {}",
                    start + c.len() - 1,
                    self.config.max_len
                );
            }
            ids.extend_from_slice(c);
            positions.extend((start..start + c.len()).map(|p| p as u32));
            last_rows.push(ids.len() as u32 - 1);
        }
        let n = ids.len();
        let ids = Tensor::from_vec(ids, n, dev)?;
        let pos = Tensor::from_vec(positions, n, dev)?;
        let mut x = (self.tok_emb.index_select(&ids, 0)? + self.pos_emb.index_select(&pos, 0)?)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let fresh = Fresh::of(seqs, chunks, dev)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let qkv = layer.qkv.forward(&layer.ln1.forward(&x)?)?;
            // The sequences without a cache (prompts) attend together, padded.
            let mut fresh_rows = match &fresh {
                Some(f) => f.attend(&qkv, (d, h, hd), scale)?,
                None => Vec::new(),
            }
            .into_iter();
            let mut rows = Vec::with_capacity(b);
            let mut off = 0;
            for (i, (s, c)) in seqs.iter_mut().zip(chunks).enumerate() {
                let m = c.len();
                if fresh.as_ref().is_some_and(|f| f.member[i]) {
                    let (y, k, v) = fresh_rows
                        .next()
                        .expect("one attention result per fresh sequence");
                    s.caches.push(KvCache { k, v });
                    rows.push(y);
                    off += m;
                    continue;
                }
                let part = qkv.narrow(0, off, m)?;
                off += m;
                let split = |j: usize| -> Result<Tensor> {
                    if m == 1 {
                        return part.narrow(1, j * d, d)?.reshape((h, 1, hd));
                    }
                    part.narrow(1, j * d, d)?
                        .reshape((m, h, hd))?
                        .transpose(0, 1)?
                        .contiguous()
                };
                let q = split(0)?;
                let (k, v) = (split(1)?, split(2)?);
                if let Some(cache) = s.caches.get_mut(li) {
                    cache.k = Tensor::cat(&[&cache.k, &k], 1)?;
                    cache.v = Tensor::cat(&[&cache.v, &v], 1)?;
                } else {
                    s.caches.push(KvCache { k, v });
                }
                let cache = &s.caches[li];
                let mut att = (q.matmul(&cache.k.t()?)? * scale)?;
                if m > 1 {
                    let len = cache.k.dim(1)?;
                    att = att.broadcast_add(&chunk_mask(m, len, dev)?)?;
                }
                let y = softmax_last(&att)?.matmul(&cache.v)?;
                let y = if m == 1 {
                    y.reshape((1, d))?
                } else {
                    y.transpose(0, 1)?.reshape((m, d))?
                };
                rows.push(y);
            }
            let y = Tensor::cat(&rows, 0)?;
            x = (x + layer.out.forward(&y)?)?;
            let m = layer.fc1.forward(&layer.ln2.forward(&x)?)?.gelu()?;
            x = (x + layer.fc2.forward(&m)?)?;
        }
        let last = x.index_select(&Tensor::from_vec(last_rows, b, dev)?, 0)?;
        let logits = self
            .head
            .forward(&self.lnf.forward(&last)?)?
            .to_vec2::<f32>()?;
        for ((s, l), c) in seqs.iter_mut().zip(logits).zip(chunks) {
            s.tokens.extend_from_slice(c);
            s.logits = l;
        }
        Ok(())
    }
}

/// The sequences of an [`TransformerLm::extend`] pass that start without a cache (prompts,
/// or recomputations after preemption): their attention runs as one padded batch, as in
/// [`TransformerLm::forward_full`], instead of sequence by sequence.
struct Fresh {
    /// Which of the pass's sequences are fresh.
    member: Vec<bool>,
    /// Each fresh sequence's chunk length, in pass order.
    lens: Vec<usize>,
    /// The longest fresh chunk.
    t: usize,
    /// Rows of the pass's `[n, ·]` activations, `t` per fresh sequence, padded at the end by
    /// repeating its last row (causality keeps padding from reaching real positions).
    gather: Tensor,
    mask: Tensor,
}

impl Fresh {
    /// `None` when fewer than two sequences are fresh (one attends alone, as cheaply).
    fn of(seqs: &[&mut SeqState], chunks: &[Vec<u32>], device: &Device) -> Result<Option<Fresh>> {
        let member: Vec<bool> = seqs.iter().map(|s| s.caches.is_empty()).collect();
        if member.iter().filter(|&&f| f).count() < 2 {
            return Ok(None);
        }
        let t = chunks
            .iter()
            .zip(&member)
            .filter(|(_, &f)| f)
            .map(|(c, _)| c.len())
            .max()
            .unwrap_or(1);
        let mut lens = Vec::new();
        let mut gather = Vec::new();
        let mut off = 0u32;
        for (c, &f) in chunks.iter().zip(&member) {
            let m = c.len() as u32;
            if f {
                lens.push(c.len());
                gather.extend((0..t as u32).map(|j| off + j.min(m - 1)));
            }
            off += m;
        }
        let rows = gather.len();
        Ok(Some(Fresh {
            member,
            lens,
            t,
            gather: Tensor::from_vec(gather, rows, device)?,
            mask: causal_mask(t, device)?,
        }))
    }

    /// Each fresh sequence's attention output `[m, d]` and its keys and values
    /// `[heads, m, head_dim]`, from the layer's `qkv` `[n, 3d]`.
    fn attend(
        &self,
        qkv: &Tensor,
        (d, h, hd): (usize, usize, usize),
        scale: f64,
    ) -> Result<Vec<(Tensor, Tensor, Tensor)>> {
        let nf = self.lens.len();
        let t = self.t;
        let g = qkv.index_select(&self.gather, 0)?;
        let split = |j: usize| -> Result<Tensor> {
            g.narrow(1, j * d, d)?
                .reshape((nf, t, h, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&self.mask)?;
        let y = softmax_last(&att)?.matmul(&v)?;
        let y = y.transpose(1, 2)?.reshape((nf * t, d))?;
        self.lens
            .iter()
            .enumerate()
            .map(|(f, &m)| {
                Ok((
                    y.narrow(0, f * t, m)?,
                    k.get(f)?.narrow(1, 0, m)?.contiguous()?,
                    v.get(f)?.narrow(1, 0, m)?.contiguous()?,
                ))
            })
            .collect()
    }
}

/// The mask of a chunk of `m` new tokens at the end of `len` cached positions: row `i` sees
/// positions up to `len - m + i`.
fn chunk_mask(m: usize, len: usize, device: &Device) -> Result<Tensor> {
    let mut mask = vec![0f32; m * len];
    for i in 0..m {
        for j in len - m + i + 1..len {
            mask[i * len + j] = -1e9;
        }
    }
    Tensor::from_vec(mask, (m, len), device)
}

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy (argmax; ties go to the lowest id).
    pub temperature: f64,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p`.
    pub top_p: f64,
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Sampling {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    /// Pick a token from `logits`. `rng` is the sequence's own generator, so a sequence's
    /// samples do not depend on the others in its batch.
    pub fn pick(&self, logits: &[f32], rng: &mut SplitMix) -> u32 {
        let argmax = || {
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = i;
                }
            }
            best as u32
        };
        if self.temperature <= 0.0 || logits.is_empty() {
            return argmax();
        }
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.top_k > 0 {
            idx.truncate(self.top_k);
        }
        let m = f64::from(logits[idx[0]]);
        let mut p: Vec<f64> = idx
            .iter()
            .map(|&i| ((f64::from(logits[i]) - m) / self.temperature).exp())
            .collect();
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= z);
        let mut keep = p.len();
        let mut acc = 0.0;
        for (j, &x) in p.iter().enumerate() {
            acc += x;
            if acc >= self.top_p {
                keep = j + 1;
                break;
            }
        }
        let z: f64 = p[..keep].iter().sum();
        let mut u = rng.next_f64() * z;
        for j in 0..keep {
            u -= p[j];
            if u <= 0.0 {
                return idx[j] as u32;
            }
        }
        idx[keep - 1] as u32
    }
}

/// A small, stable pseudo-random generator (splitmix64).
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(1e-300);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Pick sequence `s`'s next token from its logits with its own generator. `Some(t)`: `t` is to
/// be decoded next (by [`TransformerLm::decode_step`]). `None`: the sequence has ended (`<eos>`,
/// `max_tokens` tokens produced, or the position limit `limit` reached); the final token is
/// pushed onto its tokens and it is marked finished. The one stopping rule of [`generate`] and
/// of the continuous-batching scheduler's steps, so both decode alike.
pub fn choose_next(
    s: &mut SeqState,
    sampling: &Sampling,
    rng: &mut SplitMix,
    max_tokens: usize,
    limit: usize,
) -> Option<u32> {
    let t = sampling.pick(&s.logits, rng);
    let produced = s.tokens.len() - s.prompt_len;
    if t == EOS || produced + 1 >= max_tokens || s.tokens.len() + 1 >= limit {
        s.tokens.push(t);
        s.finished = true;
        return None;
    }
    Some(t)
}

/// Generate for a batch of prompts: prefill together, then decode the running sequences one
/// step at a time until each has produced `<eos>`, `max_tokens` tokens or reached the model's
/// position limit. Returns each sequence's generated tokens, in prompt order.
pub fn generate(
    model: &TransformerLm,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    sampling: &Sampling,
    seeds: &[u64],
) -> Result<Vec<Vec<u32>>> {
    let mut seqs = model.prefill(prompts)?;
    let mut rngs: Vec<SplitMix> = seeds.iter().map(|&s| SplitMix(s)).collect();
    rngs.resize(seqs.len(), SplitMix(sampling.seed));
    let limit = model.config.max_len;
    loop {
        let mut next = Vec::new();
        let mut running: Vec<&mut SeqState> = Vec::new();
        for (s, rng) in seqs.iter_mut().zip(rngs.iter_mut()) {
            if s.finished {
                continue;
            }
            if let Some(t) = choose_next(s, sampling, rng, max_tokens, limit) {
                next.push(t);
                running.push(s);
            }
        }
        if running.is_empty() {
            break;
        }
        model.decode_step(&mut running, &next)?;
    }
    Ok(seqs.iter().map(|s| s.generated().to_vec()).collect())
}

/// Classic static batching, the baseline of `marsc bench continuous`: like [`generate`], but
/// every sequence of the batch is decoded at every step until the longest has finished; a
/// finished sequence is fed `<eos>` (its output fixed when it finished), so each step costs a
/// full batch, as in a padded batch on an accelerator. Returns the same outputs as
/// [`generate`].
pub fn generate_padded(
    model: &TransformerLm,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    sampling: &Sampling,
    seeds: &[u64],
) -> Result<Vec<Vec<u32>>> {
    let mut seqs = model.prefill(prompts)?;
    let mut rngs: Vec<SplitMix> = seeds.iter().map(|&s| SplitMix(s)).collect();
    rngs.resize(seqs.len(), SplitMix(sampling.seed));
    let mut outputs: Vec<Option<Vec<u32>>> = vec![None; seqs.len()];
    let limit = model.config.max_len;
    loop {
        let mut next = Vec::new();
        let mut rows: Vec<&mut SeqState> = Vec::new();
        let mut running = false;
        for ((s, rng), out) in seqs.iter_mut().zip(rngs.iter_mut()).zip(outputs.iter_mut()) {
            if out.is_none() {
                match choose_next(s, sampling, rng, max_tokens, limit) {
                    Some(t) => {
                        running = true;
                        next.push(t);
                        rows.push(s);
                        continue;
                    }
                    None => *out = Some(s.generated().to_vec()),
                }
            }
            // A padding row, while its positions last.
            if s.cached() + 1 < limit {
                next.push(EOS);
                rows.push(s);
            }
        }
        if !running {
            break;
        }
        model.decode_step(&mut rows, &next)?;
    }
    Ok(outputs.into_iter().map(Option::unwrap_or_default).collect())
}
