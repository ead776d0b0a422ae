//! Channel pruning of the `llama` node's feed-forward blocks (model key `prune`, SPEC §4.9):
//! at load, each block keeps the `1 − prune` share of its FFN channels (rows of `ffn_gate` and
//! `ffn_up`, columns of `ffn_down`) that contribute most to its output, and drops the rest.
//!
//! A channel's score is its expected squared contribution to the block's output,
//! `E[h_j²] · Σ_o W_down[o, j]²`, with `E[h_j²]` the calibrated mean square of the channel's
//! activation at `ffn_down`'s input (site `blk.{l}.down_in`, `marsc weights calibrate-llm`):
//! the calibrated activation norm, weighted by how much of it reaches the output. The kept
//! count is rounded to a multiple of 32 so that every quantized format still divides it.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use super::gguf::Gguf;
use super::quant::ActStats;

/// The largest `prune` accepted.
pub const MAX_PRUNE: f64 = 0.9;
/// Kept channel counts are multiples of this (int4 groups and int8 rows divide it).
const ALIGN: usize = 32;

/// Check a `prune` value: a share in `[0, MAX_PRUNE]`.
pub fn check_prune(p: f64) -> Result<f64, String> {
    if p.is_finite() && (0.0..=MAX_PRUNE).contains(&p) {
        Ok(p)
    } else {
        Err(format!(
            "prune = {p}: expected a share of FFN channels from 0 to {MAX_PRUNE}"
        ))
    }
}

/// What pruning did: channels per block before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct Pruned {
    pub before: usize,
    pub after: usize,
}

/// The channels of a block to keep, ascending: the `keep` highest `scores` (ties by index).
pub fn kept_channels(scores: &[f32], keep: usize) -> Vec<u32> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept: Vec<u32> = order[..keep.min(scores.len())]
        .iter()
        .map(|&j| j as u32)
        .collect();
    kept.sort_unstable();
    kept
}

/// How many of `n` channels to keep at `prune`: `n·(1 − prune)` rounded to a multiple of
/// [`ALIGN`], at least one multiple, at most `n`.
pub fn kept_count(n: usize, prune: f64) -> usize {
    if prune <= 0.0 {
        return n;
    }
    let want = n as f64 * (1.0 - prune);
    let k = ((want / ALIGN as f64).round() as usize).max(1) * ALIGN;
    k.min(n)
}

/// Prune the FFN channels of every block of `g` (`layers` blocks) in place, and slice the
/// `down_in` statistics in `stats` to match (so that activation-aware quantization after
/// pruning sees the kept channels only).
pub fn prune_ffn(
    g: &mut Gguf,
    layers: usize,
    stats: &mut BTreeMap<String, ActStats>,
    prune: f64,
) -> Result<Pruned, String> {
    let e = |e: candle_core::Error| e.to_string();
    let mut report = Pruned {
        before: 0,
        after: 0,
    };
    for l in 0..layers {
        let name = |n: &str| format!("blk.{l}.{n}.weight");
        let site = format!("blk.{l}.down_in");
        let down = g.take(&name("ffn_down"))?.to_dtype(DType::F32).map_err(e)?;
        let (_, n) = down.dims2().map_err(e)?;
        let st = stats
            .get(&site)
            .ok_or_else(|| format!("prune needs calibration statistics of site `{site}`"))?;
        if st.sq_mean.len() != n {
            return Err(format!(
                "calibration site `{site}` has {} channels; `ffn_down` takes {n}",
                st.sq_mean.len()
            ));
        }
        let col_sq: Vec<f32> = down
            .sqr()
            .and_then(|t| t.sum(0))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(e)?;
        let scores: Vec<f32> = st.sq_mean.iter().zip(&col_sq).map(|(a, w)| a * w).collect();
        let kept = kept_channels(&scores, kept_count(n, prune));
        let idx = Tensor::from_vec(kept.clone(), kept.len(), &Device::Cpu).map_err(e)?;
        let down = down.index_select(&idx, 1).map_err(e)?;
        g.tensors.insert(name("ffn_down"), down);
        for rows in ["ffn_gate", "ffn_up"] {
            let w = g.take(&name(rows))?.to_dtype(DType::F32).map_err(e)?;
            if w.dims2().map_err(e)?.0 != n {
                return Err(format!(
                    "`{}` has {} rows; `ffn_down` takes {n}",
                    name(rows),
                    w.dims()[0]
                ));
            }
            g.tensors
                .insert(name(rows), w.index_select(&idx, 0).map_err(e)?);
        }
        let pick = |v: &[f32]| kept.iter().map(|&j| v[j as usize]).collect::<Vec<f32>>();
        let sliced = ActStats {
            sq_mean: pick(&st.sq_mean),
            abs_max: pick(&st.abs_max),
        };
        stats.insert(site, sliced);
        report.before = n;
        report.after = kept.len();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_scores_are_kept_in_order() {
        assert_eq!(kept_channels(&[0.5, 3.0, 1.0, 3.0, 0.1], 3), vec![1, 2, 3]);
        assert_eq!(kept_channels(&[1.0, 2.0], 5), vec![0, 1]);
    }

    #[test]
    fn kept_counts_are_multiples_of_32() {
        // SmolLM2-135M: 1,536 channels; 10% → 1,382.4 → 1,376 (43 × 32).
        assert_eq!(kept_count(1536, 0.1), 1376);
        assert_eq!(kept_count(1536, 0.0), 1536);
        assert_eq!(kept_count(64, 0.9), 32);
        assert!(check_prune(0.95).is_err() && check_prune(f64::NAN).is_err());
        assert_eq!(check_prune(0.1), Ok(0.1));
    }
}
