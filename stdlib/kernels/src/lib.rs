//! Weight-quantized linear layers of the `llama` node (`quantize = int8 | int4 | awq_int4 |
//! smoothquant_int8`; SPEC §4.9), with their own CPU kernels.
//!
//! A layer computes `y = x Wᵀ` for `x: [m, in]` and `W: [out, in]`. Formats:
//!
//! - **int8** (per output channel, symmetric): `q_oi = round(W_oi / d_o)` in `[-127, 127]`,
//!   `d_o = max_i |W_oi| / 127`; `y_o = d_o · Σ_i q_oi x_i` with `x` kept in f32 (weight-only).
//! - **int4** (per group of `g` inputs, asymmetric — the form of GGUF's Q4_1): in each group
//!   `q = round((W − lo) / d)` in `[0, 15]`, `d = (hi − lo) / 15`, so
//!   `y_o = Σ_groups (d · Σ q_i x_i + lo · Σ x_i)`; `Σ x_i` per group is computed once per row of
//!   `x`. Two values a byte: of each 32 values, byte `j` holds `q_j` (low nibble) and `q_{j+16}`.
//! - **w8a8** (`smoothquant_int8`): int8 weights as above and each row of `x` quantized to int8
//!   too (`x_i ≈ e · p_i`, `e = max |x| / 127`), an integer dot product, `y_o = d_o e Σ q_oi p_i`.
//!
//! AWQ and SmoothQuant fold per-input-channel scales `s` into the weights before quantizing
//! (`W' = W·diag(s)`) and multiply the input by `1/s` (`QLinear::inv_s`; the scales are chosen in `mars_stdlib::models::llm_quant`).
//!
//! Decoding (`m ≤` [`KERNEL_ROWS`]) runs the kernels here: each weight row is read once for all
//! `m` rows of `x`, converted to f32 in registers (AVX2 + FMA where the CPU has them, plain
//! Rust otherwise), rows split over rayon's threads. A batch is memory-bound on the weights, so
//! fewer bytes a weight is what makes it faster. Prefill (`m >` [`KERNEL_ROWS`]) is
//! compute-bound: the layer dequantizes its weights to f32 and runs candle's f32 matmul, so it
//! costs what f32 costs plus one pass over the weights.

use rayon::prelude::*;

/// Rows of `x` up to which the quantized kernels run; above, dequantize + f32 matmul.
pub const KERNEL_ROWS: usize = 64;
/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 32;
/// Rows of `x` from which a kernel widens each weight row to f32 once (into a buffer that stays
/// in L1) and dots it with every row of `x`, four at a time, instead of converting the codes
/// again for each row.
const WIDEN_FROM: usize = 2;
/// Weights × rows from which a kernel splits its output rows over rayon's threads.
const PAR_MIN: usize = 1 << 18;

/// `f(t)` for every task `t < tasks`, over rayon's threads when `par`.
fn for_tasks(tasks: usize, par: bool, f: impl Fn(usize) + Sync + Send) {
    match par {
        true => (0..tasks).into_par_iter().for_each(f),
        false => (0..tasks).for_each(f),
    }
}

/// The stored weights of one layer.
#[derive(Debug, Clone)]
pub enum QWeights {
    /// `q: [out, in]`, `d: [out]`; `act8`: activations are quantized too (W8A8).
    Int8 { q: Vec<i8>, d: Vec<f32>, act8: bool },
    /// `q: [out, in / 2]` packed nibbles; `d`, `lo`: `[out, groups]`.
    Int4 {
        q: Vec<u8>,
        d: Vec<f32>,
        lo: Vec<f32>,
        group: usize,
    },
}

/// A quantized linear layer, `y = (x ⊙ inv_s) Wᵀ` with `W` stored in [`QWeights`].
#[derive(Debug, Clone)]
pub struct QLinear {
    pub out: usize,
    pub inp: usize,
    pub w: QWeights,
    /// `1/s` of AWQ / SmoothQuant (`[in]`), multiplied into `x` first.
    pub inv_s: Option<Vec<f32>>,
}

/// Whether this CPU runs the AVX2 kernels.
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::env::var("MARS_NO_SIMD").is_err()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Per-row symmetric int8 of `w: [out, in]` (row-major): `(q, d)`.
pub fn quantize_int8(w: &[f32], inp: usize) -> (Vec<i8>, Vec<f32>) {
    let out = w.len() / inp;
    let mut q = vec![0i8; w.len()];
    let mut d = vec![0f32; out];
    q.par_chunks_mut(inp)
        .zip(d.par_iter_mut())
        .zip(w.par_chunks(inp))
        .for_each(|((q, d), w)| {
            let m = w.iter().fold(0f32, |a, v| a.max(v.abs()));
            *d = m / 127.0;
            let inv = if m > 0.0 { 127.0 / m } else { 0.0 };
            for (q, v) in q.iter_mut().zip(w) {
                *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
        });
    (q, d)
}

/// The group boundaries of a row of `inp` values: groups of `group`, the last one shorter
/// when `group` does not divide `inp` (both multiples of 32).
pub fn groups(inp: usize, group: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..inp.div_ceil(group)).map(move |g| (g * group, ((g + 1) * group).min(inp)))
}

/// Asymmetric int4 of one row in groups: fills packed `q` (`in / 2` bytes) and `d`, `lo`.
fn quantize_row_int4(w: &[f32], group: usize, q: &mut [u8], d: &mut [f32], lo: &mut [f32]) {
    let mut codes = vec![0u8; w.len()];
    for (g, (a, b)) in groups(w.len(), group).enumerate() {
        let seg = &w[a..b];
        let mn = seg.iter().copied().fold(f32::INFINITY, f32::min);
        let mx = seg.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let step = (mx - mn) / 15.0;
        let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
        d[g] = step;
        lo[g] = mn;
        for (c, v) in codes[a..b].iter_mut().zip(seg) {
            *c = ((v - mn) * inv).round().clamp(0.0, 15.0) as u8;
        }
    }
    for (chunk, bytes) in codes.chunks(32).zip(q.chunks_mut(16)) {
        for j in 0..16 {
            bytes[j] = chunk[j] | (chunk[j + 16] << 4);
        }
    }
}

/// Grouped asymmetric int4 of `w: [out, in]`: `(packed q, d, lo)`.
pub fn quantize_int4(w: &[f32], inp: usize, group: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let out = w.len() / inp;
    let ng = inp.div_ceil(group);
    let mut q = vec![0u8; w.len() / 2];
    let mut d = vec![0f32; out * ng];
    let mut lo = vec![0f32; out * ng];
    q.par_chunks_mut(inp / 2)
        .zip(d.par_chunks_mut(ng).zip(lo.par_chunks_mut(ng)))
        .zip(w.par_chunks(inp))
        .for_each(|((q, (d, lo)), w)| quantize_row_int4(w, group, q, d, lo));
    (q, d, lo)
}

/// What int4 makes of `w: [out, in]` (quantize then dequantize): for error estimates.
pub fn int4_roundtrip(w: &[f32], inp: usize, group: usize) -> Vec<f32> {
    let (q, d, lo) = quantize_int4(w, inp, group);
    let mut out = vec![0f32; w.len()];
    dequant_int4(&q, &d, &lo, inp, group, &mut out);
    out
}

pub fn dequant_int4(q: &[u8], d: &[f32], lo: &[f32], inp: usize, group: usize, out: &mut [f32]) {
    out.par_chunks_mut(inp)
        .enumerate()
        .for_each(|(o, row)| dequant_row_int4(q, d, lo, inp, group, o, row));
}

/// Row `o` of packed int4 weights (`[out, in]`) in f32, into `row` (`[in]`).
fn dequant_row_int4(
    q: &[u8],
    d: &[f32],
    lo: &[f32],
    inp: usize,
    group: usize,
    o: usize,
    row: &mut [f32],
) {
    let ng = inp.div_ceil(group);
    let qr = &q[o * inp / 2..(o + 1) * inp / 2];
    for (g, (a, b)) in groups(inp, group).enumerate() {
        let (dg, lg) = (d[o * ng + g], lo[o * ng + g]);
        for c in (a..b).step_by(32) {
            let bytes = &qr[c / 2..c / 2 + 16];
            for j in 0..16 {
                row[c + j] = lg + dg * f32::from(bytes[j] & 15);
                row[c + j + 16] = lg + dg * f32::from(bytes[j] >> 4);
            }
        }
    }
}

impl QLinear {
    /// Quantize `w: [out, in]` (f32, row-major). `inv_s`: AWQ / SmoothQuant's `1/s` when `w`
    /// already holds `W·diag(s)`. `inp` must be a multiple of 32 (and of nothing else: a
    /// `group` that does not divide it leaves a shorter last group).
    pub fn new(
        w: &[f32],
        inp: usize,
        fmt: Format,
        inv_s: Option<Vec<f32>>,
    ) -> Result<QLinear, String> {
        if inp == 0 || !inp.is_multiple_of(32) || !w.len().is_multiple_of(inp) {
            return Err(format!(
                "a quantized layer needs an input width that is a multiple of 32, got {inp}"
            ));
        }
        let out = w.len() / inp;
        let w = match fmt {
            Format::Int8 { act8 } => {
                let (q, d) = quantize_int8(w, inp);
                QWeights::Int8 { q, d, act8 }
            }
            Format::Int4 { group } => {
                if group == 0 || !group.is_multiple_of(32) {
                    return Err(format!("int4 group must be a multiple of 32, got {group}"));
                }
                let (q, d, lo) = quantize_int4(w, inp, group);
                QWeights::Int4 { q, d, lo, group }
            }
        };
        Ok(QLinear { out, inp, w, inv_s })
    }

    /// Bytes of weights (codes and scales) a forward pass reads.
    pub fn weight_bytes(&self) -> usize {
        match &self.w {
            QWeights::Int8 { q, d, .. } => q.len() + 4 * d.len(),
            QWeights::Int4 { q, d, lo, .. } => q.len() + 4 * (d.len() + lo.len()),
        }
    }

    /// The weights as f32 `[out, in]` (of `W·diag(s)` when AWQ / SmoothQuant scaled them).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.out * self.inp];
        match &self.w {
            QWeights::Int8 { q, d, .. } => {
                out.par_chunks_mut(self.inp)
                    .zip(q.par_chunks(self.inp))
                    .zip(d.par_iter())
                    .for_each(|((o, q), &d)| {
                        for (o, &q) in o.iter_mut().zip(q) {
                            *o = d * f32::from(q);
                        }
                    });
            }
            QWeights::Int4 { q, d, lo, group } => {
                dequant_int4(q, d, lo, self.inp, *group, &mut out)
            }
        }
        out
    }

    /// Multiply `xs` (`[m, in]`, row-major) by `1/s` where the layer has it, and round it
    /// to its int8 grid for W8A8, in place: what the layer's input is.
    pub fn prepare(&self, xs: &mut [f32]) {
        if let Some(inv) = &self.inv_s {
            for row in xs.chunks_mut(self.inp) {
                for (v, s) in row.iter_mut().zip(inv) {
                    *v *= s;
                }
            }
        }
    }

    /// Weight row `o` in f32, into `w` (`[in]`).
    fn widen_row(&self, o: usize, w: &mut [f32]) {
        let inp = self.inp;
        match &self.w {
            QWeights::Int8 { q, d, .. } => {
                for (w, &q) in w.iter_mut().zip(&q[o * inp..(o + 1) * inp]) {
                    *w = d[o] * f32::from(q);
                }
            }
            QWeights::Int4 { q, d, lo, group } => dequant_row_int4(q, d, lo, inp, *group, o, w),
        }
    }

    /// Whether activations are quantized too (W8A8).
    pub fn act8(&self) -> bool {
        matches!(self.w, QWeights::Int8 { act8: true, .. })
    }

    /// The decode kernels: `y: [m, out]`.
    pub fn kernel(&self, xs: &[f32], m: usize) -> Vec<f32> {
        let (out, inp) = (self.out, self.inp);
        let mut y = vec![0f32; m * out];
        let dst = SendPtr(y.as_mut_ptr());
        let simd = avx2();
        let tasks = out.div_ceil(ROWS_PER_TASK);
        // A small product runs on this thread: waking rayon's workers costs more than it saves.
        let par = out * inp * m >= PAR_MIN;
        if m >= WIDEN_FROM && !self.act8() {
            for_tasks(tasks, par, |t| {
                let mut w = vec![0f32; inp];
                for o in t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(out) {
                    self.widen_row(o, &mut w);
                    dot_rows(&w, xs, m, simd, |r, v| {
                        // SAFETY: each (r, o) is written by exactly one task.
                        unsafe { dst.write(r * out + o, v) }
                    });
                }
            });
            return y;
        }
        match &self.w {
            QWeights::Int8 { q, d, act8: false } => {
                for_tasks(tasks, par, |t| {
                    for o in t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(out) {
                        let qr = &q[o * inp..(o + 1) * inp];
                        for r in 0..m {
                            let v = d[o] * dot_i8_f32(qr, &xs[r * inp..(r + 1) * inp], simd);
                            // SAFETY: each (r, o) is written by exactly one task.
                            unsafe { dst.write(r * out + o, v) };
                        }
                    }
                });
            }
            QWeights::Int8 { q, d, act8: true } => {
                let acts: Vec<(Vec<i8>, f32)> = xs.chunks(inp).map(quantize_act).collect();
                for_tasks(tasks, par, |t| {
                    for o in t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(out) {
                        let qr = &q[o * inp..(o + 1) * inp];
                        for (r, (p, e)) in acts.iter().enumerate() {
                            let v = d[o] * e * dot_i8_i8(qr, p, simd) as f32;
                            // SAFETY: as above.
                            unsafe { dst.write(r * out + o, v) };
                        }
                    }
                });
            }
            QWeights::Int4 { q, d, lo, group } => {
                let ng = inp.div_ceil(*group);
                // Σ x_i of every group of every row (the `lo` term).
                let sums: Vec<f32> = xs
                    .chunks(inp)
                    .flat_map(|row| groups(inp, *group).map(|(a, b)| row[a..b].iter().sum::<f32>()))
                    .collect();
                for_tasks(tasks, par, |t| {
                    for o in t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(out) {
                        let qr = &q[o * inp / 2..(o + 1) * inp / 2];
                        let (dr, lr) = (&d[o * ng..(o + 1) * ng], &lo[o * ng..(o + 1) * ng]);
                        for r in 0..m {
                            let x = &xs[r * inp..(r + 1) * inp];
                            let s = &sums[r * ng..(r + 1) * ng];
                            let v = dot_i4_f32(qr, dr, x, *group, simd) + dot_plain(lr, s);
                            // SAFETY: as above.
                            unsafe { dst.write(r * out + o, v) };
                        }
                    }
                });
            }
        }
        y
    }
}

/// How a layer is stored (see [`QLinear::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Int8 { act8: bool },
    Int4 { group: usize },
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint elements of one live buffer.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// # Safety
    /// `i` in bounds of the buffer, written by one task only.
    unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

/// Symmetric per-row int8 of an activation row: `(p, e)` with `x ≈ e · p`.
pub fn quantize_act(x: &[f32]) -> (Vec<i8>, f32) {
    let m = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let inv = if m > 0.0 { 127.0 / m } else { 0.0 };
    let p = x
        .iter()
        .map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (p, m / 127.0)
}

pub fn dot_i8_f32(q: &[i8], x: &[f32], simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: AVX2 and FMA are present (`avx2()`), lengths equal and multiples of 32.
        return unsafe { x86::dot_i8_f32(q.as_ptr(), x.as_ptr(), q.len()) };
    }
    let _ = simd;
    q.iter().zip(x).map(|(&q, &x)| f32::from(q) * x).sum()
}

pub fn dot_i8_i8(q: &[i8], p: &[i8], simd: bool) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as above.
        return unsafe { x86::dot_i8_i8(q.as_ptr(), p.as_ptr(), q.len()) };
    }
    let _ = simd;
    q.iter()
        .zip(p)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

/// `put(r, Σ_i w_i x_ri)` for every row `r` of `xs` (`[m, w.len()]`), `w.len()` a multiple
/// of 32: four rows at a time (the weight vector loaded once for them), then one by one.
pub fn dot_rows(w: &[f32], xs: &[f32], m: usize, simd: bool, mut put: impl FnMut(usize, f32)) {
    let n = w.len();
    debug_assert!(xs.len() >= m * n);
    let mut r = 0;
    #[cfg(target_arch = "x86_64")]
    if simd {
        while r + 4 <= m {
            // SAFETY: AVX2 and FMA are present, four rows of `n` (a multiple of 16) in bounds.
            let v = unsafe { x86::dot4_f32(w.as_ptr(), xs.as_ptr().add(r * n), n) };
            for (k, v) in v.into_iter().enumerate() {
                put(r + k, v);
            }
            r += 4;
        }
        while r < m {
            // SAFETY: as above, one row.
            put(r, unsafe {
                x86::dot_f32(w.as_ptr(), xs.as_ptr().add(r * n), n)
            });
            r += 1;
        }
        return;
    }
    let _ = simd;
    while r < m {
        put(
            r,
            w.iter()
                .zip(&xs[r * n..(r + 1) * n])
                .map(|(a, b)| a * b)
                .sum(),
        );
        r += 1;
    }
}

/// `Σ a_i b_i` in eight independent sums (so that it vectorizes, and so that no serial chain of
/// adds bounds it: over a row's 18 int4 groups one chain cost as much as the row's dot product).
pub fn dot_plain(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ_groups d_g · Σ_{i∈g} q_i x_i` of one packed row.
pub fn dot_i4_f32(q: &[u8], d: &[f32], x: &[f32], group: usize, simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as above; `q` holds `x.len() / 2` bytes, `d` one scale a group.
        return unsafe { x86::dot_i4_f32(q.as_ptr(), d.as_ptr(), x.as_ptr(), x.len(), group) };
    }
    let _ = simd;
    let mut total = 0f32;
    for (g, (a, b)) in groups(x.len(), group).enumerate() {
        let mut acc = 0f32;
        for c in (a..b).step_by(32) {
            let bytes = &q[c / 2..c / 2 + 16];
            for j in 0..16 {
                acc +=
                    f32::from(bytes[j] & 15) * x[c + j] + f32::from(bytes[j] >> 4) * x[c + j + 16];
            }
        }
        total += d[g] * acc;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_hadd_ps(s, s);
        _mm_cvtss_f32(_mm_hadd_ps(s, s))
    }

    /// Eight int8 at `p` as f32.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn i8x8(b: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))
    }

    /// `Σ q_i x_i`, `n` a multiple of 32.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_i8_f32(q: *const i8, x: *const f32, n: usize) -> f32 {
        let mut a = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < n {
            let b0 = _mm_loadu_si128(q.add(i) as *const __m128i);
            let b1 = _mm_loadu_si128(q.add(i + 16) as *const __m128i);
            a[0] = _mm256_fmadd_ps(i8x8(b0), _mm256_loadu_ps(x.add(i)), a[0]);
            a[1] = _mm256_fmadd_ps(
                i8x8(_mm_srli_si128::<8>(b0)),
                _mm256_loadu_ps(x.add(i + 8)),
                a[1],
            );
            a[2] = _mm256_fmadd_ps(i8x8(b1), _mm256_loadu_ps(x.add(i + 16)), a[2]);
            a[3] = _mm256_fmadd_ps(
                i8x8(_mm_srli_si128::<8>(b1)),
                _mm256_loadu_ps(x.add(i + 24)),
                a[3],
            );
            i += 32;
        }
        hsum(_mm256_add_ps(
            _mm256_add_ps(a[0], a[1]),
            _mm256_add_ps(a[2], a[3]),
        ))
    }

    /// `Σ q_i p_i` in i32, `n` a multiple of 32.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_i8_i8(q: *const i8, p: *const i8, n: usize) -> i32 {
        let mut a0 = _mm256_setzero_si256();
        let mut a1 = _mm256_setzero_si256();
        let mut i = 0;
        while i < n {
            let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(q.add(i) as *const __m128i));
            let x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(i) as *const __m128i));
            let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(q.add(i + 16) as *const __m128i));
            let x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(i + 16) as *const __m128i));
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(w0, x0));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(w1, x1));
            i += 32;
        }
        let s = _mm256_add_epi32(a0, a1);
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s = _mm_hadd_epi32(s, s);
        _mm_cvtsi128_si32(_mm_hadd_epi32(s, s))
    }

    /// `Σ w_i x_i`, `n` a multiple of 16.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(w: *const f32, x: *const f32, n: usize) -> f32 {
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < n {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w.add(i)), _mm256_loadu_ps(x.add(i)), a0);
            a1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(w.add(i + 8)),
                _mm256_loadu_ps(x.add(i + 8)),
                a1,
            );
            i += 16;
        }
        hsum(_mm256_add_ps(a0, a1))
    }

    /// `Σ w_i x_ri` for the four rows `r` of `x` (`[4, n]`), `n` a multiple of 16: each weight
    /// vector loaded once for the four, two vectors a step (eight independent accumulators).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_f32(w: *const f32, x: *const f32, n: usize) -> [f32; 4] {
        let mut a = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < n {
            let w0 = _mm256_loadu_ps(w.add(i));
            let w1 = _mm256_loadu_ps(w.add(i + 8));
            for r in 0..4 {
                let xr = x.add(r * n + i);
                a[2 * r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), a[2 * r]);
                a[2 * r + 1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr.add(8)), a[2 * r + 1]);
            }
            i += 16;
        }
        [
            hsum(_mm256_add_ps(a[0], a[1])),
            hsum(_mm256_add_ps(a[2], a[3])),
            hsum(_mm256_add_ps(a[4], a[5])),
            hsum(_mm256_add_ps(a[6], a[7])),
        ]
    }

    /// Eight u8 as f32.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn u(b: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b))
    }

    /// `Σ_g d_g Σ_{i∈g} q_i x_i` over packed nibbles, `n` and `group` multiples of 32.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_i4_f32(
        q: *const u8,
        d: *const f32,
        x: *const f32,
        n: usize,
        group: usize,
    ) -> f32 {
        let mask = _mm_set1_epi8(0x0F);
        // Two totals, even and odd groups: one chain of FMAs across a row's groups would
        // bound the kernel by the FMA's latency, not its throughput.
        let mut totals = [_mm256_setzero_ps(); 2];
        let (mut i, mut g) = (0, 0);
        while i < n {
            let end = (i + group).min(n);
            let mut a = [_mm256_setzero_ps(); 4];
            while i < end {
                let b = _mm_loadu_si128(q.add(i / 2) as *const __m128i);
                let lo = _mm_and_si128(b, mask);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), mask);
                a[0] = _mm256_fmadd_ps(u(lo), _mm256_loadu_ps(x.add(i)), a[0]);
                a[1] = _mm256_fmadd_ps(
                    u(_mm_srli_si128::<8>(lo)),
                    _mm256_loadu_ps(x.add(i + 8)),
                    a[1],
                );
                a[2] = _mm256_fmadd_ps(u(hi), _mm256_loadu_ps(x.add(i + 16)), a[2]);
                a[3] = _mm256_fmadd_ps(
                    u(_mm_srli_si128::<8>(hi)),
                    _mm256_loadu_ps(x.add(i + 24)),
                    a[3],
                );
                i += 32;
            }
            let s = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
            totals[g & 1] = _mm256_fmadd_ps(_mm256_set1_ps(*d.add(g)), s, totals[g & 1]);
            g += 1;
        }
        hsum(_mm256_add_ps(totals[0], totals[1]))
    }
}

/// `(W·diag(s), 1/s)` of `w: [out, in]`.
pub fn fold(w: &[f32], inp: usize, s: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut ws = w.to_vec();
    ws.par_chunks_mut(inp).for_each(|row| {
        for (w, s) in row.iter_mut().zip(s) {
            *w *= s;
        }
    });
    (ws, s.iter().map(|s| 1.0 / s).collect())
}

/// AWQ's estimated output error of int4 (groups of `group`) on `W·diag(s)` with input `x/s`:
/// `Σ_j E[x_j²] Σ_o (Q(W·diag(s))_oj / s_j − W_oj)²`.
pub fn int4_error(w: &[f32], inp: usize, s: &[f32], sq_mean: &[f32], group: usize) -> f64 {
    let (ws, _) = fold(w, inp, s);
    let back = int4_roundtrip(&ws, inp, group);
    let per_col = back
        .par_chunks(inp)
        .zip(w.par_chunks(inp))
        .fold(
            || vec![0f64; inp],
            |mut acc, (q, w)| {
                for j in 0..inp {
                    let d = f64::from(q[j] / s[j] - w[j]);
                    acc[j] += d * d;
                }
                acc
            },
        )
        .reduce(
            || vec![0f64; inp],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        );
    per_col
        .iter()
        .zip(sq_mean)
        .map(|(e, m)| e * f64::from(*m))
        .sum()
}
