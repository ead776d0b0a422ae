//! What the GPU executor runs: a decoder-only transformer described by [`DecoderConfig`]
//! (llama: RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases; transformer_lm:
//! LayerNorm, learned positions, GELU, biases), and its weights on the host in the layout the
//! executor uploads ([`HostWeights`]): f32, row-major, every linear layer `[out, in]`, q/k/v
//! fused into one `[q + 2·kv, d]` matrix and a gated MLP's gate/up into one `[2·ff, d]`.

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Norm {
    /// RMSNorm; `weight_offset` is added to every weight (1 for gemma's `w - 1` storage).
    Rms {
        eps: f32,
        weight_offset: f32,
    },
    Layer {
        eps: f32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Positions {
    Rope {
        theta: f32,
    },
    /// A learned table of `max_positions` rows added to the token embeddings.
    Learned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mlp {
    /// down(silu(gate(x)) · up(x))
    SiluGated,
    /// down(gelu_tanh(gate(x)) · up(x))
    GeluTanhGated,
    /// down(gelu_tanh(up(x) + b))
    GeluTanh,
}

/// How linear-layer weights live on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// f16, multiplied by cuBLAS with f32 accumulation.
    F16,
    /// int8, one scale per output channel (dequantizing GEMV).
    Int8,
    /// int4, one scale per `group` inputs (dequantizing GEMV).
    Int4 { group: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub vocab: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub max_positions: usize,
    pub norm: Norm,
    pub positions: Positions,
    pub mlp: Mlp,
    /// Linear layers carry biases (transformer_lm).
    pub biases: bool,
    /// Token embeddings are multiplied by this (1; gemma: sqrt(d_model)).
    pub embedding_scale: f32,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("model config: {0}")]
    Config(String),
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{0}` is missing")]
    Missing(String),
}

/// One f32 host tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<HostTensor, ModelError> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(ModelError::Config(format!(
                "a tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(HostTensor { shape, data })
    }

    /// Matrices stacked along their output rows (`[a, d] + [b, d] → [a + b, d]`): fuses
    /// q/k/v or gate/up so one matmul computes them all.
    pub fn fuse_rows(parts: &[&HostTensor]) -> Result<HostTensor, ModelError> {
        let cols = parts
            .first()
            .map(|p| p.shape.get(1).copied().unwrap_or(0))
            .unwrap_or(0);
        if parts
            .iter()
            .any(|p| p.shape.len() != 2 || p.shape[1] != cols)
        {
            return Err(ModelError::Config(format!(
                "cannot fuse matrices of shapes {:?}",
                parts.iter().map(|p| p.shape.clone()).collect::<Vec<_>>()
            )));
        }
        let rows = parts.iter().map(|p| p.shape[0]).sum();
        let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        Ok(HostTensor {
            shape: vec![rows, cols],
            data,
        })
    }
}

/// A linear layer: weight `[out, in]` and, where the model has biases, `[out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostLinear {
    pub weight: HostTensor,
    pub bias: Option<HostTensor>,
}

/// A norm's weight (and LayerNorm's bias), `[d]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostNorm {
    pub weight: HostTensor,
    pub bias: Option<HostTensor>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostLayer {
    pub attn_norm: HostNorm,
    /// Fused q, k, v: `[n_heads·hd + 2·n_kv_heads·hd, d]`.
    pub qkv: HostLinear,
    /// `[d, n_heads·hd]`.
    pub out: HostLinear,
    pub mlp_norm: HostNorm,
    /// Fused gate and up `[2·ff, d]` for a gated MLP; up `[ff, d]` otherwise.
    pub up: HostLinear,
    /// `[d, ff]`.
    pub down: HostLinear,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostWeights {
    /// `[vocab, d]`.
    pub token_embedding: HostTensor,
    /// `[max_positions, d]`, for learned positions.
    pub position_embedding: Option<HostTensor>,
    pub layers: Vec<HostLayer>,
    pub final_norm: HostNorm,
    /// `[vocab, d]`; `None`: tied to the token embedding.
    pub head: Option<HostLinear>,
}

impl DecoderConfig {
    pub fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    /// Columns of the fused QKV output.
    pub fn qkv_width(&self) -> usize {
        self.q_width() + 2 * self.kv_width()
    }
    /// Rows of the up projection (gate and up fused for a gated MLP).
    pub fn up_width(&self) -> usize {
        match self.mlp {
            Mlp::SiluGated | Mlp::GeluTanhGated => 2 * self.d_ff,
            Mlp::GeluTanh => self.d_ff,
        }
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if [
            self.vocab,
            self.d_model,
            self.n_layers,
            self.n_heads,
            self.n_kv_heads,
            self.head_dim,
            self.d_ff,
            self.max_positions,
        ]
        .contains(&0)
        {
            return bad("every size must be positive".into());
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return bad(format!(
                "{} query heads do not share {} KV heads evenly",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim > crate::launch::MAX_HEAD_DIM as usize {
            return bad(format!(
                "head size {} exceeds the attention kernels' {}",
                self.head_dim,
                crate::launch::MAX_HEAD_DIM
            ));
        }
        if matches!(self.positions, Positions::Rope { .. }) && self.head_dim % 2 != 0 {
            return bad(format!(
                "RoPE needs an even head size, not {}",
                self.head_dim
            ));
        }
        if u32::try_from(self.vocab.max(self.qkv_width()).max(self.up_width())).is_err() {
            return bad("a dimension does not fit in 32 bits".into());
        }
        Ok(())
    }

    /// Bytes of the linear weights on the GPU in `format` (embeddings and the head stay f16,
    /// norms f32).
    pub fn weight_bytes(&self, format: WeightFormat) -> u64 {
        let d = self.d_model as u64;
        let per_layer_params = (self.qkv_width() as u64 + self.q_width() as u64) * d
            + (self.up_width() as u64 + self.d_ff as u64) * d;
        let linear = self.n_layers as u64
            * match format {
                WeightFormat::F16 => 2 * per_layer_params,
                WeightFormat::Int8 => {
                    per_layer_params
                        + 4 * (self.qkv_width() + self.d_model + self.up_width() + self.d_model)
                            as u64
                }
                WeightFormat::Int4 { group } => {
                    per_layer_params / 2 + 2 * per_layer_params / group.max(1) as u64
                }
            };
        let embeddings = 2 * (self.vocab as u64) * d * 2; // token table + head
        linear + embeddings
    }

    /// Activation scratch of a replica running up to `max_tokens` tokens per step, in bytes
    /// (the buffers [`crate::executor`] allocates).
    pub fn scratch_bytes(&self, max_tokens: usize) -> u64 {
        let t = max_tokens as u64;
        let f32s = t
            * (self.d_model as u64 * 2
                + self.qkv_width() as u64
                + self.up_width() as u64
                + self.vocab as u64);
        let f16s = t * (self.d_model as u64 + self.q_width() as u64 + self.d_ff as u64);
        4 * f32s + 2 * f16s + 16 * t
    }

    /// Checks every tensor's shape against the config, naming the first that differs.
    pub fn check_weights(&self, w: &HostWeights) -> Result<(), ModelError> {
        self.validate()?;
        let d = self.d_model;
        let expect = |name: &str, t: &HostTensor, shape: &[usize]| {
            if t.shape == shape {
                Ok(())
            } else {
                Err(ModelError::Shape {
                    name: name.to_string(),
                    expected: shape.to_vec(),
                    found: t.shape.clone(),
                })
            }
        };
        let linear = |name: &str, l: &HostLinear, out: usize, inp: usize| {
            expect(&format!("{name}.weight"), &l.weight, &[out, inp])?;
            match (&l.bias, self.biases) {
                (Some(b), true) => expect(&format!("{name}.bias"), b, &[out]),
                (None, false) => Ok(()),
                (None, true) => Err(ModelError::Missing(format!("{name}.bias"))),
                (Some(_), false) => Err(ModelError::Config(format!(
                    "{name} has a bias the config does not expect"
                ))),
            }
        };
        let norm = |name: &str, n: &HostNorm| {
            expect(&format!("{name}.weight"), &n.weight, &[d])?;
            match (&n.bias, self.norm) {
                (Some(b), Norm::Layer { .. }) => expect(&format!("{name}.bias"), b, &[d]),
                (None, Norm::Layer { .. }) => Err(ModelError::Missing(format!("{name}.bias"))),
                _ => Ok(()),
            }
        };
        expect("token_embedding", &w.token_embedding, &[self.vocab, d])?;
        match (&w.position_embedding, self.positions) {
            (Some(p), Positions::Learned) => {
                expect("position_embedding", p, &[self.max_positions, d])?
            }
            (None, Positions::Learned) => {
                return Err(ModelError::Missing("position_embedding".into()))
            }
            _ => {}
        }
        if w.layers.len() != self.n_layers {
            return Err(ModelError::Config(format!(
                "{} layers in the weights, {} in the config",
                w.layers.len(),
                self.n_layers
            )));
        }
        for (i, l) in w.layers.iter().enumerate() {
            norm(&format!("layers.{i}.attn_norm"), &l.attn_norm)?;
            linear(&format!("layers.{i}.qkv"), &l.qkv, self.qkv_width(), d)?;
            linear(&format!("layers.{i}.out"), &l.out, d, self.q_width())?;
            norm(&format!("layers.{i}.mlp_norm"), &l.mlp_norm)?;
            linear(&format!("layers.{i}.up"), &l.up, self.up_width(), d)?;
            linear(&format!("layers.{i}.down"), &l.down, d, self.d_ff)?;
        }
        norm("final_norm", &w.final_norm)?;
        if let Some(h) = &w.head {
            expect("head.weight", &h.weight, &[self.vocab, d])?;
        }
        Ok(())
    }
}

/// The cuBLAS call of a linear layer `Y[tokens, out] = X[tokens, in] · W[out, in]ᵀ` with
/// row-major X, W, Y: cuBLAS is column-major, so it computes `Yᵀ = W · Xᵀ` — W read
/// transposed (`transa = T`, lda = in), X as is (`transb = N`, ldb = in), Y with ldc = out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearGemm {
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldc: i32,
}

impl LinearGemm {
    pub fn new(tokens: usize, inp: usize, out: usize) -> Result<LinearGemm, ModelError> {
        let c = |v: usize| {
            i32::try_from(v)
                .map_err(|_| ModelError::Config(format!("matmul size {v} exceeds cuBLAS's int")))
        };
        Ok(LinearGemm {
            m: c(out)?,
            n: c(tokens)?,
            k: c(inp)?,
            lda: c(inp)?,
            ldb: c(inp)?,
            ldc: c(out)?,
        })
    }

    /// The product on the CPU, indexing exactly as cuBLAS does with these parameters
    /// (column-major, A transposed): the definition the GPU call must agree with.
    pub fn reference(&self, w: &[f32], x: &[f32]) -> Vec<f32> {
        let (m, n, k) = (self.m as usize, self.n as usize, self.k as usize);
        let (lda, ldb, ldc) = (self.lda as usize, self.ldb as usize, self.ldc as usize);
        let mut c = vec![0.0f32; ldc * n];
        for j in 0..n {
            for i in 0..m {
                // op(A)[i, l] = A[l, i] (A column-major, lda) ; B[l, j] column-major, ldb.
                c[i + j * ldc] = (0..k).map(|l| w[l + i * lda] * x[l + j * ldb]).sum();
            }
        }
        c
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn tiny_llama() -> DecoderConfig {
        DecoderConfig {
            vocab: 11,
            d_model: 8,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 2,
            d_ff: 6,
            max_positions: 32,
            norm: Norm::Rms {
                eps: 1e-5,
                weight_offset: 0.0,
            },
            positions: Positions::Rope { theta: 10_000.0 },
            mlp: Mlp::SiluGated,
            biases: false,
            embedding_scale: 1.0,
        }
    }

    fn filled(shape: &[usize]) -> HostTensor {
        let n = shape.iter().product();
        HostTensor::new(shape.to_vec(), (0..n).map(|i| i as f32 * 0.01).collect()).expect("shape")
    }

    pub fn tiny_weights(c: &DecoderConfig) -> HostWeights {
        let lin = |out, inp| HostLinear {
            weight: filled(&[out, inp]),
            bias: c.biases.then(|| filled(&[out])),
        };
        let norm = || HostNorm {
            weight: filled(&[c.d_model]),
            bias: matches!(c.norm, Norm::Layer { .. }).then(|| filled(&[c.d_model])),
        };
        HostWeights {
            token_embedding: filled(&[c.vocab, c.d_model]),
            position_embedding: matches!(c.positions, Positions::Learned)
                .then(|| filled(&[c.max_positions, c.d_model])),
            layers: (0..c.n_layers)
                .map(|_| HostLayer {
                    attn_norm: norm(),
                    qkv: lin(c.qkv_width(), c.d_model),
                    out: lin(c.d_model, c.q_width()),
                    mlp_norm: norm(),
                    up: lin(c.up_width(), c.d_model),
                    down: lin(c.d_model, c.d_ff),
                })
                .collect(),
            final_norm: norm(),
            head: None,
        }
    }

    #[test]
    fn fused_widths_follow_the_heads() {
        let c = tiny_llama();
        assert_eq!(
            (c.q_width(), c.kv_width(), c.qkv_width(), c.up_width()),
            (8, 4, 16, 12)
        );
        c.validate().expect("valid");
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let mut c = tiny_llama();
        c.n_kv_heads = 3;
        assert!(c
            .validate()
            .expect_err("uneven")
            .to_string()
            .contains("evenly"));
        let mut c = tiny_llama();
        c.head_dim = 512;
        assert!(c
            .validate()
            .expect_err("too big")
            .to_string()
            .contains("exceeds"));
        let mut c = tiny_llama();
        c.head_dim = 3;
        assert!(c.validate().expect_err("odd").to_string().contains("even"));
    }

    #[test]
    fn weights_are_checked_tensor_by_tensor() {
        let c = tiny_llama();
        let mut w = tiny_weights(&c);
        c.check_weights(&w).expect("matches");
        w.layers[1].down.weight = filled(&[c.d_model, c.d_ff + 1]);
        let e = c.check_weights(&w).expect_err("wrong shape");
        assert_eq!(
            e,
            ModelError::Shape {
                name: "layers.1.down.weight".into(),
                expected: vec![8, 6],
                found: vec![8, 7]
            }
        );
        let mut lm = tiny_llama();
        lm.norm = Norm::Layer { eps: 1e-5 };
        lm.positions = Positions::Learned;
        lm.mlp = Mlp::GeluTanh;
        lm.biases = true;
        let mut w = tiny_weights(&lm);
        lm.check_weights(&w).expect("transformer_lm layout matches");
        w.layers[0].qkv.bias = None;
        assert_eq!(
            lm.check_weights(&w),
            Err(ModelError::Missing("layers.0.qkv.bias".into()))
        );
    }

    #[test]
    fn fusing_stacks_output_rows() {
        let q = HostTensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).expect("shape");
        let k = HostTensor::new(vec![1, 2], vec![5.0, 6.0]).expect("shape");
        let f = HostTensor::fuse_rows(&[&q, &k]).expect("fuses");
        assert_eq!(f.shape, vec![3, 2]);
        assert_eq!(f.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let bad = HostTensor::new(vec![1, 3], vec![0.0; 3]).expect("shape");
        assert!(HostTensor::fuse_rows(&[&q, &bad]).is_err());
    }

    #[test]
    fn the_gemm_parameters_compute_a_row_major_linear_layer() {
        let (tokens, inp, out) = (3, 4, 5);
        let w: Vec<f32> = (0..out * inp).map(|i| (i as f32 * 0.37).sin()).collect();
        let x: Vec<f32> = (0..tokens * inp).map(|i| (i as f32 * 0.11).cos()).collect();
        let g = LinearGemm::new(tokens, inp, out).expect("fits");
        let y = g.reference(&w, &x);
        for t in 0..tokens {
            for o in 0..out {
                let direct: f32 = (0..inp).map(|i| x[t * inp + i] * w[o * inp + i]).sum();
                assert!((y[t * out + o] - direct).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn quantized_weights_take_less_memory() {
        let c = tiny_llama();
        let f16 = c.weight_bytes(WeightFormat::F16);
        let i8 = c.weight_bytes(WeightFormat::Int8);
        let i4 = c.weight_bytes(WeightFormat::Int4 { group: 2 });
        assert!(f16 > i8 && i8 > i4, "{f16} {i8} {i4}");
        assert!(c.scratch_bytes(4) > c.scratch_bytes(1));
    }
}
