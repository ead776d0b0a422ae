//! The KV cache of the `llama` and `gemma3` decoders (SPEC §4.9.2): one per layer of a
//! sequence, each KV head's keys and values position after position in a growing buffer, f32
//! or (`kv = "int8"`) u8 codes with one scale per position and head.
//!
//! A decode step appends one position in place (amortized O(1), not a copy of the cache) and
//! [`Cache::attend`] runs the step's attention on the buffers directly: each key and value row
//! is read once for all the query heads that share its KV head (grouped-query attention with
//! no expanded copy of the cache). A prompt chunk reads the cache as tensors
//! ([`Cache::tensors`]) for candle's batched matmuls.

use candle_core::{Device, Result, Tensor};

use mars_qkernels::dot_plain as dot;

use super::kv::KvStore;

/// One KV head's rows.
#[derive(Debug, Clone)]
enum Rows {
    F32(Vec<f32>),
    /// Codes `round(x / d) + 128`, clamped to `[1, 255]`; `d = max|x| / 127` a row.
    Int8 {
        codes: Vec<u8>,
        scales: Vec<f32>,
    },
}

/// One layer's cache of one sequence.
#[derive(Debug, Clone)]
pub struct Cache {
    dim: usize,
    len: usize,
    k: Vec<Rows>,
    v: Vec<Rows>,
}

/// The int8 codes of `x` appended to `codes`; returns the scale.
pub fn quantize_row(x: &[f32], codes: &mut Vec<u8>) -> f32 {
    let d = (x.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0).max(1e-12);
    codes.extend(
        x.iter()
            .map(|v| ((v / d).round() + 128.0).clamp(1.0, 255.0) as u8),
    );
    d
}

/// The f32 values of one row of codes, into `out`.
fn dequantize_row(codes: &[u8], d: f32, out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = (f32::from(c) - 128.0) * d;
    }
}

impl Rows {
    fn new(store: KvStore) -> Rows {
        match store {
            KvStore::F32 => Rows::F32(Vec::new()),
            KvStore::Int8 => Rows::Int8 {
                codes: Vec::new(),
                scales: Vec::new(),
            },
        }
    }

    fn push(&mut self, row: &[f32]) {
        match self {
            Rows::F32(v) => v.extend_from_slice(row),
            Rows::Int8 { codes, scales } => scales.push(quantize_row(row, codes)),
        }
    }

    /// Row `p` in f32: borrowed, or dequantized into `tmp`.
    fn row<'a>(&'a self, p: usize, dim: usize, tmp: &'a mut [f32]) -> &'a [f32] {
        match self {
            Rows::F32(v) => &v[p * dim..(p + 1) * dim],
            Rows::Int8 { codes, scales } => {
                dequantize_row(&codes[p * dim..(p + 1) * dim], scales[p], tmp);
                tmp
            }
        }
    }

    fn retain(&mut self, keep: &[u32], dim: usize) {
        fn pick<T: Copy>(v: &[T], keep: &[u32], w: usize) -> Vec<T> {
            keep.iter()
                .flat_map(|&p| &v[p as usize * w..(p as usize + 1) * w])
                .copied()
                .collect()
        }
        match self {
            Rows::F32(v) => *v = pick(v, keep, dim),
            Rows::Int8 { codes, scales } => {
                *codes = pick(codes, keep, dim);
                *scales = pick(scales, keep, 1);
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Rows::F32(v) => 4 * v.len(),
            Rows::Int8 { codes, scales } => codes.len() + 4 * scales.len(),
        }
    }
}

impl Cache {
    /// An empty cache of `heads` KV heads of `dim`.
    pub fn new(store: KvStore, heads: usize, dim: usize) -> Cache {
        Cache {
            dim,
            len: 0,
            k: (0..heads).map(|_| Rows::new(store)).collect(),
            v: (0..heads).map(|_| Rows::new(store)).collect(),
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn heads(&self) -> usize {
        self.k.len()
    }

    /// Bytes the keys, values and scales take.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(Rows::bytes).sum()
    }

    /// Append `m` positions; `k` and `v` are `[m, heads, dim]` (rows of the projections).
    pub fn push(&mut self, k: &[f32], v: &[f32], m: usize) {
        let (h, d) = (self.heads(), self.dim);
        debug_assert_eq!(k.len(), m * h * d);
        debug_assert_eq!(v.len(), m * h * d);
        for t in 0..m {
            for j in 0..h {
                let at = (t * h + j) * d;
                self.k[j].push(&k[at..at + d]);
                self.v[j].push(&v[at..at + d]);
            }
        }
        self.len += m;
    }

    /// Keys and values from position `from` on, f32, `[heads, len - from, dim]` each.
    pub fn tensors(&self, from: usize) -> Result<(Tensor, Tensor)> {
        let (h, d, n) = (self.heads(), self.dim, self.len - from);
        let mut tmp = vec![0f32; d];
        let mut gather = |rows: &[Rows]| -> Result<Tensor> {
            let mut all = Vec::with_capacity(h * n * d);
            for r in rows {
                for p in from..self.len {
                    all.extend_from_slice(r.row(p, d, &mut tmp));
                }
            }
            Tensor::from_vec(all, (h, n, d), &Device::Cpu)
        };
        Ok((gather(&self.k)?, gather(&self.v)?))
    }

    /// Keep positions `keep[j]` (ascending) of KV head `j`; every head keeps as many.
    pub fn retain(&mut self, keep: &[Vec<u32>]) {
        for (j, idx) in keep.iter().enumerate() {
            self.k[j].retain(idx, self.dim);
            self.v[j].retain(idx, self.dim);
        }
        self.len = keep.first().map_or(0, Vec::len);
    }

    /// One query position's attention against positions `from..`: `q` is `[q_heads, dim]`,
    /// query head `i` reading KV head `i / group`; returns `[q_heads, dim]`. Each key and value
    /// row is read once for its `group` query heads.
    pub fn attend(&self, q: &[f32], group: usize, scale: f32, from: usize) -> Vec<f32> {
        let d = self.dim;
        let n = self.len - from;
        let mut out = vec![0f32; q.len()];
        let mut scores = vec![0f32; group * n];
        let mut tmp = vec![0f32; d];
        for (j, (kr, vr)) in self.k.iter().zip(&self.v).enumerate() {
            let qs = &q[j * group * d..(j + 1) * group * d];
            for p in 0..n {
                let k = kr.row(from + p, d, &mut tmp);
                for g in 0..group {
                    scores[g * n + p] = dot(&qs[g * d..(g + 1) * d], k) * scale;
                }
            }
            for s in scores.chunks_mut(n) {
                let m = s.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let mut sum = 0f32;
                for v in s.iter_mut() {
                    *v = (*v - m).exp();
                    sum += *v;
                }
                for v in s.iter_mut() {
                    *v /= sum;
                }
            }
            let ys = &mut out[j * group * d..(j + 1) * group * d];
            for p in 0..n {
                let v = vr.row(from + p, d, &mut tmp);
                for g in 0..group {
                    let w = scores[g * n + p];
                    for (y, x) in ys[g * d..(g + 1) * d].iter_mut().zip(v) {
                        *y += w * x;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// `attend` equals softmax(q kᵀ · scale) v computed with candle on the expanded cache,
    /// for f32 and int8 storage and a start position.
    #[test]
    fn attend_equals_the_tensor_attention() -> Result<()> {
        let (kvh, group, d, len) = (3, 3, 16, 21);
        for store in [KvStore::F32, KvStore::Int8] {
            let mut c = Cache::new(store, kvh, d);
            let (k, v) = (values(len * kvh * d, 1), values(len * kvh * d, 2));
            c.push(&k[..5 * kvh * d], &v[..5 * kvh * d], 5);
            c.push(&k[5 * kvh * d..], &v[5 * kvh * d..], len - 5);
            assert_eq!(c.len(), len);
            let q = values(kvh * group * d, 3);
            for from in [0, 7] {
                let got = c.attend(&q, group, 0.25, from);
                let (kk, vv) = c.tensors(from)?;
                let idx: Vec<u32> = (0..kvh * group).map(|i| (i / group) as u32).collect();
                let idx = Tensor::new(idx.as_slice(), &Device::Cpu)?;
                let (kk, vv) = (kk.index_select(&idx, 0)?, vv.index_select(&idx, 0)?);
                let qt = Tensor::from_slice(&q, (kvh * group, 1, d), &Device::Cpu)?;
                let att = (qt.matmul(&kk.t()?)? * 0.25)?;
                let m = att.max_keepdim(D::Minus1)?;
                let e = att.broadcast_sub(&m)?.exp()?;
                let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
                let want = p.matmul(&vv)?.flatten_all()?.to_vec1::<f32>()?;
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "{store:?} from {from}: {a} vs {b}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn int8_rows_round_trip_within_half_a_step_and_bytes_count_codes_and_scales() {
        let mut c = Cache::new(KvStore::Int8, 1, 4);
        let row = [0.5f32, -1.0, 0.25, 0.0];
        c.push(&row, &row, 1);
        let mut tmp = [0f32; 4];
        let back = c.k[0].row(0, 4, &mut tmp).to_vec();
        for (a, b) in row.iter().zip(&back) {
            assert!((a - b).abs() <= 1.0 / 127.0 / 2.0 + 1e-7);
        }
        assert_eq!(back[1], -1.0, "the largest magnitude is exact");
        assert_eq!(c.bytes(), 2 * (4 + 4));
        assert_eq!(Cache::new(KvStore::F32, 2, 4).bytes(), 0);
    }

    #[test]
    fn retain_keeps_the_named_positions_of_each_head() -> Result<()> {
        let mut c = Cache::new(KvStore::F32, 2, 2);
        // Position t, head j holds [10t + j, -(10t + j)].
        let rows: Vec<f32> = (0..4)
            .flat_map(|t| (0..2).flat_map(move |j| [(10 * t + j) as f32, -((10 * t + j) as f32)]))
            .collect();
        c.push(&rows, &rows, 4);
        c.retain(&[vec![0, 3], vec![1, 2]]);
        assert_eq!(c.len(), 2);
        let (k, _) = c.tensors(0)?;
        assert_eq!(
            k.flatten_all()?.to_vec1::<f32>()?,
            [0.0, -0.0, 30.0, -30.0, 11.0, -11.0, 21.0, -21.0]
        );
        Ok(())
    }
}
