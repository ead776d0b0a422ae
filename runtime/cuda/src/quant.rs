//! Host-side weight packing for the GPU: f16 conversion, int8 per-channel and int4 per-group
//! quantization in the layouts `gemv_quant.cu` reads, and reference products that mirror the
//! kernels' arithmetic (used by the tests here, and the definition the GPU must match).

/// IEEE binary16 bits of `x`, rounded to nearest even (overflow to infinity, NaN kept).
pub fn f32_to_f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0xff {
        let nan = if mant != 0 {
            0x200 | (mant >> 13) as u16
        } else {
            0
        };
        return sign | 0x7c00 | nan;
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = mant | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let kept = m >> shift;
        let rest = m & ((1u32 << shift) - 1);
        let r = if rest > half || (rest == half && kept & 1 == 1) {
            kept + 1
        } else {
            kept
        };
        return sign | r as u16;
    }
    let mut h = ((e as u32) << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1; // a carry into the exponent is the correct rounding (up to infinity)
    }
    sign | h as u16
}

/// The value of IEEE binary16 bits.
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let negative = h & 0x8000 != 0;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let sign = if negative { 0x8000_0000u32 } else { 0 };
    match exp {
        0 => {
            let v = mant as f32 * f32::powi(2.0, -24);
            if negative {
                -v
            } else {
                v
            }
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mant << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13)),
    }
}

/// `xs` as f16 bits.
pub fn to_f16(xs: &[f32]) -> Vec<u16> {
    xs.iter().map(|&x| f32_to_f16_bits(x)).collect()
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("a weight of {len} values is not [{out}, {inp}]")]
    Shape { len: usize, out: usize, inp: usize },
    #[error(
        "int4 needs an even input width and an even group dividing it (in {inp}, group {group})"
    )]
    Group { inp: usize, group: usize },
    #[error("the weight holds a value that is not finite")]
    NotFinite,
}

/// int8 weights, one scale per output channel: W[o, i] = weights[o * inp + i] * scales[o].
#[derive(Debug, Clone, PartialEq)]
pub struct Int8PerChannel {
    pub out: usize,
    pub inp: usize,
    pub weights: Vec<i8>,
    pub scales: Vec<f32>,
}

/// int4 weights, one f16 scale per `group` inputs of an output row, two weights a byte
/// (input 2k in the low nibble of byte k, 2k + 1 in the high one), each stored as q + 8.
#[derive(Debug, Clone, PartialEq)]
pub struct Int4PerGroup {
    pub out: usize,
    pub inp: usize,
    pub group: usize,
    pub packed: Vec<u8>,
    /// f16 bits, [out, inp / group].
    pub scales: Vec<u16>,
}

fn check(w: &[f32], out: usize, inp: usize) -> Result<(), QuantError> {
    if out.checked_mul(inp) != Some(w.len()) || out == 0 || inp == 0 {
        return Err(QuantError::Shape {
            len: w.len(),
            out,
            inp,
        });
    }
    if w.iter().any(|v| !v.is_finite()) {
        return Err(QuantError::NotFinite);
    }
    Ok(())
}

/// Quantizes a row-major [out, inp] weight to int8, symmetric per output channel.
pub fn quantize_int8(w: &[f32], out: usize, inp: usize) -> Result<Int8PerChannel, QuantError> {
    check(w, out, inp)?;
    let mut weights = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(out);
    for row in w.chunks_exact(inp) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        scales.push(scale);
        for &v in row {
            let q = if scale > 0.0 {
                (v / scale).round().clamp(-127.0, 127.0)
            } else {
                0.0
            };
            weights.push(q as i8);
        }
    }
    Ok(Int8PerChannel {
        out,
        inp,
        weights,
        scales,
    })
}

/// Quantizes a row-major [out, inp] weight to int4, symmetric per group of `group` inputs.
pub fn quantize_int4(
    w: &[f32],
    out: usize,
    inp: usize,
    group: usize,
) -> Result<Int4PerGroup, QuantError> {
    check(w, out, inp)?;
    if inp % 2 != 0 || group == 0 || group % 2 != 0 || inp % group != 0 {
        return Err(QuantError::Group { inp, group });
    }
    let mut packed = Vec::with_capacity(w.len() / 2);
    let mut scales = Vec::with_capacity(out * inp / group);
    for row in w.chunks_exact(inp) {
        let mut qs = Vec::with_capacity(inp);
        for g in row.chunks_exact(group) {
            let max = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // Quantize against the scale as the GPU will see it (rounded to f16).
            let s16 = f32_to_f16_bits(max / 7.0);
            scales.push(s16);
            let s = f16_bits_to_f32(s16);
            for &v in g {
                let q = if s > 0.0 {
                    (v / s).round().clamp(-8.0, 7.0) as i32
                } else {
                    0
                };
                qs.push((q + 8) as u8);
            }
        }
        for pair in qs.chunks_exact(2) {
            packed.push(pair[0] | (pair[1] << 4));
        }
    }
    Ok(Int4PerGroup {
        out,
        inp,
        group,
        packed,
        scales,
    })
}

impl Int8PerChannel {
    pub fn dequantize(&self) -> Vec<f32> {
        self.weights
            .chunks_exact(self.inp)
            .zip(&self.scales)
            .flat_map(|(row, &s)| row.iter().map(move |&q| f32::from(q) * s))
            .collect()
    }
}

impl Int4PerGroup {
    /// The stored q + 8 of weight (o, i), in 0..15.
    pub fn nibble(&self, o: usize, i: usize) -> u8 {
        let byte = self.packed[o * self.inp / 2 + i / 2];
        if i % 2 == 0 {
            byte & 15
        } else {
            byte >> 4
        }
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let groups = self.inp / self.group;
        let mut w = Vec::with_capacity(self.out * self.inp);
        for o in 0..self.out {
            for i in 0..self.inp {
                let s = f16_bits_to_f32(self.scales[o * groups + i / self.group]);
                w.push((i32::from(self.nibble(o, i)) - 8) as f32 * s);
            }
        }
        w
    }
}

/// y[r, o] = Σ_i W[o, i] · f16(x[r, i]) for a dequantized row-major W [out, inp]: what the
/// GEMV kernels compute (their inputs are f16).
pub fn gemv_reference(w: &[f32], out: usize, inp: usize, x: &[f32]) -> Vec<f32> {
    let rows = x.len() / inp;
    let mut y = vec![0.0f32; rows * out];
    for r in 0..rows {
        let xr: Vec<f32> = x[r * inp..(r + 1) * inp]
            .iter()
            .map(|&v| f16_bits_to_f32(f32_to_f16_bits(v)))
            .collect();
        for o in 0..out {
            y[r * out + o] = w[o * inp..(o + 1) * inp]
                .iter()
                .zip(&xr)
                .map(|(a, b)| a * b)
                .sum();
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn f16_conversion_matches_known_values_and_rounds_to_even() {
        assert_eq!(f32_to_f16_bits(1.0), 0x3c00);
        assert_eq!(f32_to_f16_bits(-2.0), 0xc000);
        assert_eq!(f32_to_f16_bits(65504.0), 0x7bff);
        assert_eq!(f32_to_f16_bits(65520.0), 0x7c00); // rounds up to infinity
        assert_eq!(f32_to_f16_bits(1.0 / 3.0), 0x3555);
        assert_eq!(f32_to_f16_bits(1.0 + f32::powi(2.0, -11)), 0x3c00); // tie, to even
        assert_eq!(f32_to_f16_bits(1.0 + 3.0 * f32::powi(2.0, -11)), 0x3c02); // tie, to even
        assert_eq!(f32_to_f16_bits(f32::powi(2.0, -24)), 0x0001); // smallest subnormal
        assert_eq!(f32_to_f16_bits(f32::powi(2.0, -25)), 0x0000); // tie, to even (zero)
        assert_eq!(f32_to_f16_bits(f32::powi(2.0, -14)), 0x0400); // smallest normal
        assert!(f16_bits_to_f32(f32_to_f16_bits(f32::NAN)).is_nan());
        assert_eq!(f16_bits_to_f32(0xfc00), f32::NEG_INFINITY);
    }

    #[test]
    fn every_f16_value_survives_a_round_trip_through_f32() {
        for h in 0..=u16::MAX {
            let v = f16_bits_to_f32(h);
            if v.is_nan() {
                continue;
            }
            assert_eq!(f32_to_f16_bits(v), h, "{h:#06x} -> {v}");
        }
    }

    #[test]
    fn int8_keeps_every_weight_within_half_a_step() {
        let (out, inp) = (5, 64);
        let w = values(out * inp, 1);
        let q = quantize_int8(&w, out, inp).expect("quantizes");
        let d = q.dequantize();
        for o in 0..out {
            let s = q.scales[o];
            for i in 0..inp {
                assert!((d[o * inp + i] - w[o * inp + i]).abs() <= s / 2.0 + 1e-7);
            }
        }
        assert!(
            q.weights.iter().any(|&v| v == 127 || v == -127),
            "the largest maps to ±127"
        );
    }

    #[test]
    fn int4_nibbles_are_low_for_even_inputs_and_high_for_odd() {
        // One row, one group: 7 · s and -7 · s with s = 1 → q + 8 = 15 and 1.
        let w = [7.0, -7.0, 0.0, 3.0];
        let q = quantize_int4(&w, 1, 4, 4).expect("quantizes");
        assert_eq!(f16_bits_to_f32(q.scales[0]), 1.0);
        assert_eq!(q.packed, vec![15 | (1 << 4), 8 | (11 << 4)]);
        assert_eq!(q.dequantize(), w.to_vec());
    }

    #[test]
    fn int4_keeps_every_weight_within_half_a_step_of_its_group() {
        let (out, inp, group) = (3, 128, 32);
        let w = values(out * inp, 2);
        let q = quantize_int4(&w, out, inp, group).expect("quantizes");
        let d = q.dequantize();
        assert_eq!(q.packed.len(), out * inp / 2);
        assert_eq!(q.scales.len(), out * inp / group);
        for o in 0..out {
            for i in 0..inp {
                let s = f16_bits_to_f32(q.scales[o * (inp / group) + i / group]);
                assert!(
                    (d[o * inp + i] - w[o * inp + i]).abs() <= s / 2.0 + 1e-6,
                    "({o}, {i})"
                );
            }
        }
    }

    #[test]
    fn quantized_products_stay_close_to_the_f32_product() {
        let (out, inp) = (16, 256);
        let w = values(out * inp, 3);
        let x = values(2 * inp, 4);
        let exact = gemv_reference(&w, out, inp, &x);
        let i8y = gemv_reference(
            &quantize_int8(&w, out, inp).expect("q").dequantize(),
            out,
            inp,
            &x,
        );
        let i4y = gemv_reference(
            &quantize_int4(&w, out, inp, 32).expect("q").dequantize(),
            out,
            inp,
            &x,
        );
        let rel = |y: &[f32]| {
            let num: f32 = y.iter().zip(&exact).map(|(a, b)| (a - b) * (a - b)).sum();
            let den: f32 = exact.iter().map(|b| b * b).sum();
            (num / den).sqrt()
        };
        assert!(rel(&i8y) < 0.01, "int8 {}", rel(&i8y));
        assert!(rel(&i4y) < 0.15, "int4 {}", rel(&i4y));
        assert!(rel(&i4y) > rel(&i8y));
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(matches!(
            quantize_int8(&[1.0; 6], 4, 2),
            Err(QuantError::Shape { .. })
        ));
        assert!(matches!(
            quantize_int4(&[1.0; 6], 2, 3, 2),
            Err(QuantError::Group { .. })
        ));
        assert!(matches!(
            quantize_int4(&[1.0; 8], 1, 8, 3),
            Err(QuantError::Group { .. })
        ));
        assert_eq!(
            quantize_int8(&[f32::NAN, 1.0], 1, 2),
            Err(QuantError::NotFinite)
        );
    }
}
