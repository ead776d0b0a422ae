//! The quantized linear layers of the `llama` node: the formats and kernels live in the
//! `mars-qkernels` crate (`stdlib/kernels`, plain slices; see its documentation for the
//! formats), this module runs them on candle tensors.
//!
//! Decoding (`m ≤` [`KERNEL_ROWS`]) runs the kernels: each weight row is read once for all `m`
//! rows of `x` and converted to f32 in registers (AVX2 + FMA, plain Rust elsewhere). Prefill
//! (`m >` [`KERNEL_ROWS`]) is compute-bound: the layer dequantizes its weights to f32 and runs
//! candle's f32 matmul, so it costs what f32 costs plus one pass over the weights.

use candle_core::{Device, Result, Tensor};

pub use mars_qkernels::{
    dequant_int4, fold, int4_error, int4_roundtrip, quantize_act, quantize_int4, quantize_int8,
    Format, QLinear, QWeights, KERNEL_ROWS,
};

/// `y = x Wᵀ` of a quantized layer for `x: [m, in]` (f32) → `[m, out]`.
pub fn forward(l: &QLinear, x: &Tensor) -> Result<Tensor> {
    let (m, inp) = x.dims2()?;
    if inp != l.inp {
        candle_core::bail!("a layer of {} inputs got {inp}", l.inp);
    }
    let mut xs = x.flatten_all()?.to_vec1::<f32>()?;
    l.prepare(&mut xs);
    if m > KERNEL_ROWS {
        if l.act8() {
            // The same arithmetic as the kernel: x rounded to its int8 grid.
            for row in xs.chunks_mut(inp) {
                let (p, e) = quantize_act(row);
                for (v, p) in row.iter_mut().zip(p) {
                    *v = e * f32::from(p);
                }
            }
        }
        let w = Tensor::from_vec(l.dequantize(), (l.out, l.inp), &Device::Cpu)?;
        let x = Tensor::from_vec(xs, (m, inp), &Device::Cpu)?;
        return x.matmul(&w.t()?);
    }
    Tensor::from_vec(l.kernel(&xs, m), (m, l.out), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mars_qkernels::{dot_i4_f32, dot_i8_f32, groups};

    fn weights(out: usize, inp: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..out * inp)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    fn reference(w: &[f32], x: &[f32], inp: usize) -> Vec<f32> {
        let out = w.len() / inp;
        let m = x.len() / inp;
        let mut y = vec![0f32; m * out];
        for r in 0..m {
            for o in 0..out {
                y[r * out + o] = (0..inp).map(|i| w[o * inp + i] * x[r * inp + i]).sum();
            }
        }
        y
    }

    /// The kernels (SIMD and plain) and the dequantize + matmul path give the product of `x`
    /// with the dequantized weights: up to f32 summation order (1e-4 relative).
    #[test]
    fn kernels_equal_the_dequantized_product() -> Result<()> {
        let (out, inp) = (40, 160);
        let w = weights(out, inp, 3);
        for fmt in [
            Format::Int8 { act8: false },
            Format::Int4 { group: 32 },
            Format::Int4 { group: 64 },
            Format::Int4 { group: 128 },
        ] {
            let l = QLinear::new(&w, inp, fmt, None).map_err(candle_core::Error::Msg)?;
            let deq = l.dequantize();
            for m in [1, 3, 6, KERNEL_ROWS, KERNEL_ROWS + 1] {
                let x = weights(m, inp, 9 + m as u64);
                let want = reference(&deq, &x, inp);
                let xt = Tensor::from_vec(x.clone(), (m, inp), &Device::Cpu)?;
                let got = forward(&l, &xt)?.flatten_all()?.to_vec1::<f32>()?;
                let plain = if m <= KERNEL_ROWS {
                    let mut p = l.clone();
                    p.inv_s = None;
                    Some(p.kernel_plain(&x, m))
                } else {
                    None
                };
                for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                        "{fmt:?} m={m} [{i}]: {a} vs {b}"
                    );
                    if let Some(p) = &plain {
                        assert!((a - p[i]).abs() <= 1e-4 * (1.0 + a.abs()), "plain {fmt:?}");
                    }
                }
            }
            // Quantization error itself is small against the weights' spread (0.2 wide).
            let err = w
                .iter()
                .zip(&deq)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let bound = if matches!(fmt, Format::Int8 { .. }) {
                0.1 / 127.0
            } else {
                0.2 / 15.0
            };
            assert!(err <= bound * 0.51, "{fmt:?}: max error {err}");
        }
        Ok(())
    }

    #[test]
    fn w8a8_is_the_integer_product_of_both_grids() -> Result<()> {
        let (out, inp) = (24, 96);
        let w = weights(out, inp, 5);
        let l = QLinear::new(&w, inp, Format::Int8 { act8: true }, None)
            .map_err(candle_core::Error::Msg)?;
        let x = weights(2, inp, 11);
        let mut xq = x.clone();
        for row in xq.chunks_mut(inp) {
            let (p, e) = quantize_act(row);
            for (v, p) in row.iter_mut().zip(p) {
                *v = e * f32::from(p);
            }
        }
        let want = reference(&l.dequantize(), &xq, inp);
        let got = forward(&l, &Tensor::from_vec(x, (2, inp), &Device::Cpu)?)?;
        for (a, b) in want.iter().zip(got.flatten_all()?.to_vec1::<f32>()?) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn a_q4_1_grid_survives_int4_group_32_exactly() {
        // Weights already on a 16-level grid per 32 (as in a Q4_1 GGUF) round-trip exactly.
        let inp = 64;
        let w: Vec<f32> = (0..inp)
            .map(|i| -0.3 + 0.02 * ((i * 7) % 16) as f32)
            .collect();
        let back = int4_roundtrip(&w, inp, 32);
        for (a, b) in w.iter().zip(&back) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn widths_that_do_not_fit_are_refused() {
        assert!(QLinear::new(&[0.0; 40], 20, Format::Int8 { act8: false }, None).is_err());
        assert!(QLinear::new(&[0.0; 64], 32, Format::Int4 { group: 48 }, None).is_err());
    }

    trait Plain {
        fn kernel_plain(&self, xs: &[f32], m: usize) -> Vec<f32>;
    }

    impl Plain for QLinear {
        fn kernel_plain(&self, xs: &[f32], m: usize) -> Vec<f32> {
            let (out, inp) = (self.out, self.inp);
            let mut y = vec![0f32; m * out];
            for o in 0..out {
                for r in 0..m {
                    let x = &xs[r * inp..(r + 1) * inp];
                    y[r * out + o] = match &self.w {
                        QWeights::Int8 { q, d, .. } => {
                            d[o] * dot_i8_f32(&q[o * inp..(o + 1) * inp], x, false)
                        }
                        QWeights::Int4 { q, d, lo, group } => {
                            let ng = inp.div_ceil(*group);
                            let mut v = dot_i4_f32(
                                &q[o * inp / 2..(o + 1) * inp / 2],
                                &d[o * ng..(o + 1) * ng],
                                x,
                                *group,
                                false,
                            );
                            for (g, (a, b)) in groups(inp, *group).enumerate() {
                                v += lo[o * ng + g] * x[a..b].iter().sum::<f32>();
                            }
                            v
                        }
                    };
                }
            }
            y
        }
    }
}
