//! A linear layer, dense or quantized onto candle's quantized matmul.
//!
//! Quantize modes (the `quantize` key of a model block) and what they run as:
//! `none` → f32 matmul; `int8` and `smoothquant_int8` → GGML Q8_0 (blocks of 32 weights, one
//! f16 scale each); `int4` and `awq_int4` → GGML Q4K where the input width is a multiple of 256,
//! else Q4_0 (blocks of 32). `smoothquant_int8` and `awq_int4` are weight-only here (no activation
//! smoothing, no activation-aware scales): they run exactly as `int8` / `int4`. `fp8` is refused.
//! Biases stay f32.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};

/// The weight format of a model's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantize {
    None,
    Int8,
    Int4,
}

impl Quantize {
    /// Parse a model block's `quantize` value.
    pub fn parse(s: &str) -> std::result::Result<Quantize, String> {
        match s {
            "none" => Ok(Quantize::None),
            "int8" | "smoothquant_int8" => Ok(Quantize::Int8),
            "int4" | "awq_int4" => Ok(Quantize::Int4),
            "fp8" => Err("quantize = fp8 is not supported on CPU (candle has no fp8 matmul); use int8 or int4".into()),
            other => Err(format!("unknown quantize mode `{other}`; expected none, int8 or int4")),
        }
    }
}

/// `y = x Wᵀ + b` for `x: [n, in]`.
#[derive(Debug, Clone)]
pub enum Linear {
    /// `w: [out, in]`.
    Dense {
        w: Tensor,
        b: Tensor,
    },
    Quantized {
        w: QMatMul,
        b: Tensor,
    },
}

impl Linear {
    pub fn new(w: Tensor, b: Tensor, q: Quantize) -> Result<Linear> {
        let in_dim = w.dim(1)?;
        let dtype = match q {
            Quantize::None => return Ok(Linear::Dense { w, b }),
            Quantize::Int8 => GgmlDType::Q8_0,
            Quantize::Int4 if in_dim % 256 == 0 => GgmlDType::Q4K,
            Quantize::Int4 => GgmlDType::Q4_0,
        };
        if in_dim % 32 != 0 {
            // GGML blocks are 32 wide: a layer that does not fit stays dense.
            return Ok(Linear::Dense { w, b });
        }
        let qt = QTensor::quantize(&w, dtype)?;
        Ok(Linear::Quantized {
            w: QMatMul::from_qtensor(qt)?,
            b,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense { w, b } => x.matmul(&w.t()?)?.broadcast_add(b),
            Linear::Quantized { w, b } => w.forward(x)?.broadcast_add(b),
        }
    }
}
