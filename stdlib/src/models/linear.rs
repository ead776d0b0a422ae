//! A linear layer, dense or quantized onto candle's quantized matmul.
//!
//! Quantize modes (the `quantize` key of a model block) and what they run as:
//!
//! - `none`: f32 matmul.
//! - `int8`: GGML Q8_0, blocks of 32 weights with one f16 scale each. GGML's Q8_0 matmul also
//!   quantizes the activations to Q8_0 blocks per call, so this is W8A8 with per-32-block scales.
//! - `int4`: GGML Q4K where the input width is a multiple of 256, else Q4_0 (blocks of 32). The
//!   activations are quantized too (Q8K / Q8_0 blocks).
//! - `smoothquant_int8`: SmoothQuant, `y = Q8_0(W·diag(s)) (x ⊙ 1/s) + b` with
//!   `s_j = max|X_j|^½ / max|W_:,j|^½`, moving activation outliers into the weights before both
//!   are quantized.
//! - `awq_int4`: AWQ, `y = Q(W·diag(s)) (x ⊙ 1/s) + b` with `s = a^α` from each input channel's
//!   RMS `a` and `α` searched per layer; `Q` is the GGML type `int4` picks.
//!
//! The last two need the calibration statistics of [`super::quant`] in the weights file
//! (`marsc weights calibrate`); [`Linear::new`] refuses to build them without. `1/s` is a
//! broadcast multiply on the layer's input. A layer whose input width is not a multiple of 32
//! stays dense in every mode; biases stay f32. `fp8` is refused.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};

use super::quant::{self, ActStats};

/// The weight format of a model's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantize {
    None,
    Int8,
    Int4,
    SmoothQuantInt8,
    AwqInt4,
}

impl Quantize {
    /// Parse a model block's `quantize` value.
    pub fn parse(s: &str) -> std::result::Result<Quantize, String> {
        match s {
            "none" => Ok(Quantize::None),
            "int8" => Ok(Quantize::Int8),
            "int4" => Ok(Quantize::Int4),
            "smoothquant_int8" => Ok(Quantize::SmoothQuantInt8),
            "awq_int4" => Ok(Quantize::AwqInt4),
            "fp8" => Err("quantize = fp8 is not supported on CPU (candle has no fp8 matmul); use int8 or int4".into()),
            other => Err(format!(
                "unknown quantize mode `{other}`; expected none, int8, int4, smoothquant_int8 or awq_int4"
            )),
        }
    }

    /// The mode's name as a model block writes it.
    pub fn name(self) -> &'static str {
        match self {
            Quantize::None => "none",
            Quantize::Int8 => "int8",
            Quantize::Int4 => "int4",
            Quantize::SmoothQuantInt8 => "smoothquant_int8",
            Quantize::AwqInt4 => "awq_int4",
        }
    }

    /// Every mode, in the order tables list them.
    pub const ALL: [Quantize; 5] = [
        Quantize::None,
        Quantize::Int8,
        Quantize::SmoothQuantInt8,
        Quantize::Int4,
        Quantize::AwqInt4,
    ];

    /// Whether the mode needs calibration statistics in the weights file.
    pub fn needs_stats(self) -> bool {
        matches!(self, Quantize::SmoothQuantInt8 | Quantize::AwqInt4)
    }

    /// The GGML type a layer of `in_dim` inputs is quantized to (`None`: it stays dense).
    pub fn ggml_type(self, in_dim: usize) -> Option<GgmlDType> {
        if !in_dim.is_multiple_of(32) {
            // GGML blocks are 32 wide: a layer that does not fit stays dense.
            return None;
        }
        match self {
            Quantize::None => None,
            Quantize::Int8 | Quantize::SmoothQuantInt8 => Some(GgmlDType::Q8_0),
            Quantize::Int4 | Quantize::AwqInt4 if in_dim.is_multiple_of(256) => {
                Some(GgmlDType::Q4K)
            }
            Quantize::Int4 | Quantize::AwqInt4 => Some(GgmlDType::Q4_0),
        }
    }
}

/// `y = x Wᵀ + b` for `x: [n, in]`.
#[derive(Debug, Clone)]
pub enum Linear {
    /// `w: [out, in]`.
    Dense { w: Tensor, b: Tensor },
    /// `w` holds `Q(W·diag(s))`; `inv_s` (`[1, in]`) is `1/s`, absent when `s = 1`.
    Quantized {
        w: QMatMul,
        inv_s: Option<Tensor>,
        b: Tensor,
    },
}

impl Linear {
    /// Build a layer from `w: [out, in]` and `b: [out]` in mode `q`. `stats` are the layer's
    /// input statistics, required by `smoothquant_int8` and `awq_int4` (ignored otherwise).
    pub fn new(w: Tensor, b: Tensor, q: Quantize, stats: Option<&ActStats>) -> Result<Linear> {
        let in_dim = w.dim(1)?;
        let Some(dtype) = q.ggml_type(in_dim) else {
            return Ok(Linear::Dense { w, b });
        };
        let scales = match (q, stats) {
            (Quantize::None | Quantize::Int8 | Quantize::Int4, _) => None,
            (Quantize::SmoothQuantInt8 | Quantize::AwqInt4, None) => candle_core::bail!(
                "quantize = {} needs the layer's calibration statistics",
                q.name()
            ),
            (Quantize::SmoothQuantInt8, Some(s)) => {
                Some(quant::smooth_scales(&w, s, quant::SMOOTH_ALPHA)?)
            }
            (Quantize::AwqInt4, Some(s)) => {
                let found = quant::awq_search(&w, s, dtype)?;
                // α = 0 is plain int4: skip the no-op multiply.
                (found.alpha > 0.0).then_some(found.scales)
            }
        };
        let (w, inv_s) = match scales {
            None => (w, None),
            Some(s) => {
                let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
                let inv = Tensor::from_vec(inv, (1, in_dim), w.device())?;
                (quant::scale_columns(&w, &s)?, Some(inv))
            }
        };
        let qt = QTensor::quantize(&w, dtype)?;
        Ok(Linear::Quantized {
            w: QMatMul::from_qtensor(qt)?,
            inv_s,
            b,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense { w, b } => x.matmul(&w.t()?)?.broadcast_add(b),
            Linear::Quantized { w, inv_s: None, b } => w.forward(x)?.broadcast_add(b),
            Linear::Quantized {
                w,
                inv_s: Some(inv),
                b,
            } => w.forward(&x.broadcast_mul(inv)?)?.broadcast_add(b),
        }
    }
}
