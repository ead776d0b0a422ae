//! Activation-aware quantization: a weights file's calibration statistics, and the
//! per-input-channel scales of AWQ (`quantize = awq_int4`) and SmoothQuant
//! (`quantize = smoothquant_int8`).
//!
//! Both methods rewrite a linear layer `y = W x + b` as `y = (W·diag(s)) (x ⊙ 1/s) + b`, which is
//! exact in f32, and quantize `W·diag(s)` instead of `W`; they differ in how `s` is chosen:
//!
//! - **AWQ** protects the input channels that carry large activations: `s = a^α` with `a` the
//!   RMS of each input channel (`sqrt(act_sq_mean)`), normalised by `sqrt(max(s)·min(s))`, and
//!   `α` searched on the grid 0, 0.05, …, 1 for the least expected output error. The error is
//!   estimated from the statistics alone with the *diagonal approximation*
//!   `E‖ΔW x‖² ≈ Σ_j E[x_j²]·‖ΔW_{:,j}‖²` (cross-channel terms `E[x_j x_k]` dropped), where
//!   `ΔW = Q(W·diag(s))·diag(1/s) − W`; the original AWQ measures it on calibration batches.
//!   `α = 0` (`s = 1`, plain int4) is on the grid, so the chosen scales never have a larger
//!   estimated error than plain int4.
//! - **SmoothQuant** moves activation outliers into the weights:
//!   `s_j = max|X_j|^α / max_i|W_ij|^(1−α)`, `α = 0.5` ([`SMOOTH_ALPHA`]). It matters here because
//!   GGML's Q8_0 matmul quantizes the activations too (to Q8_0 blocks of 32, one scale each), so
//!   one large channel costs its 31 neighbours their precision.
//!
//! The statistics are per input channel of every linear layer, over all calibration tokens:
//! `<layer>.act_sq_mean` (mean of x²) and `<layer>.act_abs_max` (max |x|), f32 tensors stored
//! beside the weights (see [`calibrate_weights`], `marsc weights calibrate`). This module
//! computes statistics, scales and errors; running the layers is [`super::linear`]'s job.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};

use super::linear::Quantize;
use super::tokenizer::Tokenizer;
use super::transformer_lm::{generate, prompt_tokens, LmConfig, Sampling, SplitMix, TransformerLm};
use super::{load_lm, load_safetensors, numbers, save_safetensors};

/// Suffix of the mean-of-squares tensor of a layer's input (`l0.qkv.act_sq_mean`).
pub const SQ_MEAN: &str = "act_sq_mean";
/// Suffix of the max-|x| tensor of a layer's input (`l0.qkv.act_abs_max`).
pub const ABS_MAX: &str = "act_abs_max";
/// SmoothQuant's migration strength.
pub const SMOOTH_ALPHA: f32 = 0.5;
/// AWQ searches `α = k / AWQ_GRID` for `k = 0 ..= AWQ_GRID`.
pub const AWQ_GRID: usize = 20;

/// Per-input-channel statistics of one linear layer's input.
#[derive(Debug, Clone, PartialEq)]
pub struct ActStats {
    /// Mean of `x_j²` over the calibration tokens.
    pub sq_mean: Vec<f32>,
    /// Max of `|x_j|` over the calibration tokens.
    pub abs_max: Vec<f32>,
}

impl ActStats {
    /// The tensor names of `layer`'s statistics: mean of squares, max |x|.
    pub fn tensor_names(layer: &str) -> [String; 2] {
        [format!("{layer}.{SQ_MEAN}"), format!("{layer}.{ABS_MAX}")]
    }

    /// `layer`'s statistics among a weights file's tensors: `None` when it has neither
    /// tensor; an error when only one is there or a shape is not `[in_dim]`.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        layer: &str,
        in_dim: usize,
    ) -> std::result::Result<Option<ActStats>, String> {
        let [sq, mx] = Self::tensor_names(layer);
        let read = |name: &str| -> std::result::Result<Option<Vec<f32>>, String> {
            let Some(t) = tensors.get(name) else {
                return Ok(None);
            };
            if t.dims() != [in_dim] {
                return Err(format!(
                    "tensor `{name}` has shape {:?}; layer `{layer}` takes {in_dim} inputs",
                    t.dims()
                ));
            }
            let v = t
                .to_dtype(DType::F32)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| format!("tensor `{name}`: {e}"))?;
            if v.iter().any(|x| !x.is_finite() || *x < 0.0) {
                return Err(format!("tensor `{name}` has negative or non-finite values"));
            }
            Ok(Some(v))
        };
        match (read(&sq)?, read(&mx)?) {
            (None, None) => Ok(None),
            (Some(sq_mean), Some(abs_max)) => Ok(Some(ActStats { sq_mean, abs_max })),
            _ => Err(format!(
                "layer `{layer}` has only one of `{sq}` and `{mx}`; recalibrate the file"
            )),
        }
    }

    /// Add `layer`'s statistics to `tensors` (replacing any there).
    pub fn insert_into(&self, layer: &str, tensors: &mut HashMap<String, Tensor>) -> Result<()> {
        let [sq, mx] = Self::tensor_names(layer);
        let n = self.sq_mean.len();
        tensors.insert(sq, Tensor::from_vec(self.sq_mean.clone(), n, &Device::Cpu)?);
        tensors.insert(mx, Tensor::from_vec(self.abs_max.clone(), n, &Device::Cpu)?);
        Ok(())
    }

    /// Each channel's RMS, `sqrt(E[x_j²])`: AWQ's activation magnitude.
    pub fn magnitude(&self) -> Vec<f32> {
        self.sq_mean.iter().map(|v| v.sqrt()).collect()
    }
}

/// The linear layers of a `transformer_lm`, by name (`l0.qkv`, …, `head`): every 2-D `.w`.
pub fn linear_layers(config: &LmConfig) -> Vec<String> {
    config
        .tensor_shapes()
        .into_iter()
        .filter(|(n, s)| s.len() == 2 && n.ends_with(".w"))
        .map(|(n, _)| n.trim_end_matches(".w").to_string())
        .collect()
}

/// The first linear layer of `config` whose statistics are missing from `tensors`.
pub fn missing_stats(tensors: &HashMap<String, Tensor>, config: &LmConfig) -> Option<String> {
    linear_layers(config).into_iter().find(|l| {
        ActStats::tensor_names(l)
            .iter()
            .any(|n| !tensors.contains_key(n))
    })
}

/// Accumulates per-channel statistics of layer inputs, layer by layer.
#[derive(Debug, Default)]
pub struct StatsRecorder {
    layers: BTreeMap<String, Accumulator>,
}

#[derive(Debug)]
struct Accumulator {
    sum_sq: Vec<f64>,
    abs_max: Vec<f32>,
    rows: u64,
}

impl StatsRecorder {
    /// Record `x: [n, in]`, `n` tokens of `layer`'s input.
    pub fn record(&mut self, layer: &str, x: &Tensor) -> Result<()> {
        let rows = x.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let width = x.dim(1)?;
        let acc = self
            .layers
            .entry(layer.to_string())
            .or_insert_with(|| Accumulator {
                sum_sq: vec![0.0; width],
                abs_max: vec![0.0; width],
                rows: 0,
            });
        if acc.sum_sq.len() != width {
            candle_core::bail!(
                "layer `{layer}` input width changed from {} to {width}",
                acc.sum_sq.len()
            );
        }
        for row in rows {
            for (j, v) in row.into_iter().enumerate() {
                acc.sum_sq[j] += f64::from(v) * f64::from(v);
                acc.abs_max[j] = acc.abs_max[j].max(v.abs());
            }
            acc.rows += 1;
        }
        Ok(())
    }

    /// The statistics of every recorded layer.
    pub fn finish(self) -> BTreeMap<String, ActStats> {
        self.layers
            .into_iter()
            .map(|(name, a)| {
                let n = a.rows.max(1) as f64;
                let sq_mean = a.sum_sq.iter().map(|s| (s / n) as f32).collect();
                (
                    name,
                    ActStats {
                        sq_mean,
                        abs_max: a.abs_max,
                    },
                )
            })
            .collect()
    }
}

/// `n` English number phrases for calibration, from a fixed `seed`: digit counts uniform, and
/// only numbers of the training split, so held-out evaluations stay unseen.
pub fn calibration_phrases(n: usize, seed: u64) -> Vec<String> {
    let mut rng = SplitMix(seed ^ 0xCA11_B8A7);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let x = numbers::sample(rng.next_u64(), rng.next_u64());
        if !numbers::held_out(x) {
            out.push(numbers::english(x));
        }
    }
    out
}

/// Run the f32 `model` over calibration `phrases` and record every linear layer's input.
///
/// Each phrase is decoded greedily first; the statistics then cover what the layers see when
/// serving it: the prompt `<bos> tokens <sep>` and the generated tokens fed back (the final
/// `<eos>` is never fed). Sequences run in batches of equal length, so no padding is recorded.
pub fn calibrate(
    model: &TransformerLm,
    tok: &Tokenizer,
    phrases: &[String],
) -> std::result::Result<(BTreeMap<String, ActStats>, usize), String> {
    let limit = model.config.max_len;
    let mut prompts = Vec::with_capacity(phrases.len());
    for (i, p) in phrases.iter().enumerate() {
        let t = prompt_tokens(tok, p);
        if t.len() >= limit {
            return Err(format!(
                "calibration phrase {} (`{p}`) is {} tokens; the model takes at most {}",
                i + 1,
                t.len(),
                limit - 1
            ));
        }
        prompts.push(t);
    }
    let mut by_len: BTreeMap<usize, Vec<Vec<u32>>> = BTreeMap::new();
    for chunk in prompts.chunks(64) {
        let seeds = vec![0; chunk.len()];
        let outs = generate(model, chunk, limit, &Sampling::greedy(), &seeds)
            .map_err(|e| format!("calibration decoding failed: {e}"))?;
        for (p, g) in chunk.iter().zip(outs) {
            let mut seq = p.clone();
            seq.extend(g);
            seq.truncate(limit);
            by_len.entry(seq.len()).or_default().push(seq);
        }
    }
    let mut rec = StatsRecorder::default();
    let mut tokens = 0;
    for (len, seqs) in by_len {
        for batch in seqs.chunks(64) {
            let flat: Vec<u32> = batch.concat();
            let t = Tensor::from_vec(flat, (batch.len(), len), &Device::Cpu)
                .map_err(|e| e.to_string())?;
            model
                .forward_full_observed(&t, &mut |layer, x| rec.record(layer, x))
                .map_err(|e| format!("calibration forward failed: {e}"))?;
            tokens += batch.len() * len;
        }
    }
    Ok((rec.finish(), tokens))
}

/// What [`calibrate_weights`] did.
#[derive(Debug, Clone)]
pub struct Calibration {
    pub phrases: usize,
    pub tokens: usize,
    pub layers: usize,
}

/// Read a `transformer_lm` weights file, calibrate it on `phrases` (see [`calibrate`]) and write
/// it to `out` (which may be the same file) with the statistics added, replacing any there:
/// the other tensors and the metadata are kept, plus `mars.calibration` (`{"phrases",
/// "tokens", "source"}`). Tensors and header are written in sorted order, so the same inputs
/// give the same bytes.
pub fn calibrate_weights(
    input: &Path,
    phrases: &[String],
    source: &str,
    out: &Path,
) -> std::result::Result<Calibration, String> {
    if phrases.is_empty() {
        return Err("no calibration phrases".into());
    }
    let mut w = load_safetensors(input)?;
    let (model, tok, _) =
        load_lm(input, Quantize::None).map_err(|e| format!("`{}`: {e}", input.display()))?;
    let (stats, tokens) = calibrate(&model, &tok, phrases)?;
    for layer in linear_layers(&model.config) {
        let s = stats
            .get(&layer)
            .ok_or_else(|| format!("calibration recorded nothing for layer `{layer}`"))?;
        s.insert_into(&layer, &mut w.tensors)
            .map_err(|e| e.to_string())?;
    }
    let mut meta: HashMap<String, String> = w.metadata.into_iter().collect();
    meta.insert(
        "mars.calibration".into(),
        serde_json::json!({ "phrases": phrases.len(), "tokens": tokens, "source": source })
            .to_string(),
    );
    save_safetensors(out, &w.tensors, meta)
        .map_err(|e| format!("cannot write `{}`: {e}", out.display()))?;
    Ok(Calibration {
        phrases: phrases.len(),
        tokens,
        layers: stats.len(),
    })
}

/// `W·diag(s)`: column `j` of `w: [out, in]` times `s_j`.
pub fn scale_columns(w: &Tensor, s: &[f32]) -> Result<Tensor> {
    let s = Tensor::from_vec(s.to_vec(), (1, s.len()), w.device())?;
    w.broadcast_mul(&s)
}

/// AWQ's scales for one `α`: `a^α` normalised by `sqrt(max·min)` (a channel RMS below 1e-4
/// counts as 1e-4). At `α = 0` every scale is exactly 1.
pub fn awq_scales(magnitude: &[f32], alpha: f32) -> Vec<f32> {
    let s: Vec<f32> = magnitude.iter().map(|&a| a.max(1e-4).powf(alpha)).collect();
    let max = s.iter().copied().fold(f32::MIN, f32::max);
    let min = s.iter().copied().fold(f32::MAX, f32::min);
    let norm = (max * min).sqrt();
    s.into_iter().map(|x| x / norm).collect()
}

/// The estimated output error of quantizing `W·diag(s)` to `dtype` and feeding `x/s`, under the
/// diagonal approximation: `Σ_j E[x_j²] · Σ_i (Q(W·diag(s))_ij / s_j − W_ij)²`.
pub fn weighted_error(w: &Tensor, s: &[f32], sq_mean: &[f32], dtype: GgmlDType) -> Result<f64> {
    let (_, in_dim) = w.dims2()?;
    if s.len() != in_dim || sq_mean.len() != in_dim {
        candle_core::bail!(
            "{} scales and {} statistics for a layer of {in_dim} inputs",
            s.len(),
            sq_mean.len()
        );
    }
    let q = QTensor::quantize(&scale_columns(w, s)?, dtype)?.dequantize(&Device::Cpu)?;
    let q = q.flatten_all()?.to_vec1::<f32>()?;
    let w = w.flatten_all()?.to_vec1::<f32>()?;
    let mut err = 0.0f64;
    for (k, (&wq, &w)) in q.iter().zip(&w).enumerate() {
        let j = k % in_dim;
        let d = f64::from(wq / s[j] - w);
        err += f64::from(sq_mean[j]) * d * d;
    }
    Ok(err)
}

/// The result of AWQ's search for one layer.
#[derive(Debug, Clone)]
pub struct AwqSearch {
    /// The chosen `α` (the smallest among equal errors).
    pub alpha: f32,
    /// The chosen per-input-channel scales.
    pub scales: Vec<f32>,
    /// The estimated output error with those scales ([`weighted_error`]).
    pub error: f64,
    /// The same estimate for plain quantization (`s = 1`).
    pub plain_error: f64,
    /// `Σ_j E[x_j²]·‖W_{:,j}‖²`, the expected `‖W x‖²` under the same approximation: divide an
    /// error by it for a relative error.
    pub reference: f64,
}

/// AWQ for one layer `w: [out, in]`: search `α` on the grid for the least
/// [`weighted_error`] of quantizing to `dtype`.
pub fn awq_search(w: &Tensor, stats: &ActStats, dtype: GgmlDType) -> Result<AwqSearch> {
    let magnitude = stats.magnitude();
    let mut best: Option<AwqSearch> = None;
    let mut plain_error = f64::NAN;
    for k in 0..=AWQ_GRID {
        let alpha = k as f32 / AWQ_GRID as f32;
        let scales = awq_scales(&magnitude, alpha);
        let error = weighted_error(w, &scales, &stats.sq_mean, dtype)?;
        if k == 0 {
            plain_error = error;
        }
        if best.as_ref().is_none_or(|b| error < b.error) {
            best = Some(AwqSearch {
                alpha,
                scales,
                error,
                plain_error: 0.0,
                reference: 0.0,
            });
        }
    }
    let w2 = w.sqr()?.sum(0)?.to_vec1::<f32>()?;
    let reference = w2
        .iter()
        .zip(&stats.sq_mean)
        .map(|(&c, &m)| f64::from(c) * f64::from(m))
        .sum();
    let mut best = best.expect("the grid has at least one point");
    best.plain_error = plain_error;
    best.reference = reference;
    Ok(best)
}

/// SmoothQuant's scales for `w: [out, in]`: `s_j = max|X_j|^α / max_i|W_ij|^(1−α)`, both maxima
/// and the result clamped below at 1e-5 (as the reference implementation does).
pub fn smooth_scales(w: &Tensor, stats: &ActStats, alpha: f32) -> Result<Vec<f32>> {
    let wmax = w.abs()?.max(0)?.to_vec1::<f32>()?;
    if wmax.len() != stats.abs_max.len() {
        candle_core::bail!(
            "{} activation maxima for a layer of {} inputs",
            stats.abs_max.len(),
            wmax.len()
        );
    }
    Ok(stats
        .abs_max
        .iter()
        .zip(&wmax)
        .map(|(&a, &w)| (a.max(1e-5).powf(alpha) / w.max(1e-5).powf(1.0 - alpha)).max(1e-5))
        .collect())
}

/// Teacher-forced logits of `model` over `seqs` (`(tokens, prompt_len)`: a prompt followed by
/// its expected continuation): one row per position from the prompt's last on, each
/// predicting the next token. For comparing a quantized model's predictions with f32's.
pub fn teacher_forced_logits(
    model: &TransformerLm,
    seqs: &[(Vec<u32>, usize)],
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::new();
    for (t, p) in seqs {
        if *p == 0 || *p > t.len() {
            candle_core::bail!("prompt length {p} for a sequence of {} tokens", t.len());
        }
        let ids = Tensor::from_vec(t.clone(), (1, t.len()), &Device::Cpu)?;
        let (logits, _) = model.forward_full(&ids)?;
        let rows = logits.squeeze(0)?.to_vec2::<f32>()?;
        out.extend(rows.into_iter().skip(p - 1));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awq_scales_are_one_at_alpha_zero_and_normalised() {
        let m = [0.5f32, 2.0, 8.0, 0.0];
        assert!(awq_scales(&m, 0.0).iter().all(|&s| s == 1.0));
        let s = awq_scales(&m, 1.0);
        let max = s.iter().copied().fold(f32::MIN, f32::max);
        let min = s.iter().copied().fold(f32::MAX, f32::min);
        assert!((max * min - 1.0).abs() < 1e-4, "{s:?}");
        assert!(s[2] > s[1] && s[1] > s[0] && s[0] > s[3]);
    }

    #[test]
    fn recorder_means_squares_and_takes_max_abs() -> Result<()> {
        let mut r = StatsRecorder::default();
        r.record(
            "l",
            &Tensor::new(&[[1f32, -2.0], [3.0, 0.0]], &Device::Cpu)?,
        )?;
        r.record("l", &Tensor::new(&[[-1f32, 4.0]], &Device::Cpu)?)?;
        let s = r.finish().remove("l").expect("recorded");
        assert_eq!(s.sq_mean, vec![11.0 / 3.0, 20.0 / 3.0]);
        assert_eq!(s.abs_max, vec![3.0, 4.0]);
        assert!(r_width_change().is_err());
        Ok(())
    }

    fn r_width_change() -> Result<()> {
        let mut r = StatsRecorder::default();
        r.record("l", &Tensor::zeros((1, 2), DType::F32, &Device::Cpu)?)?;
        r.record("l", &Tensor::zeros((1, 3), DType::F32, &Device::Cpu)?)
    }
}
