//! The `quantize` modes of the `llama` node (SPEC §4.9): which [`QLinear`] format every linear
//! layer gets, the activation-aware scales of AWQ and SmoothQuant, and the calibration
//! statistics they are computed from.
//!
//! - `int8`: every linear layer int8 per output channel, activations f32.
//! - `int4` (`group = 32 | 64 | 128`, default 32): the blocks' layers int4 per group
//!   (asymmetric); the head (the tied embedding) int8 per row in every mode, because the
//!   output distribution is the most sensitive to its error.
//! - `awq_int4`: int4 as above on `W·diag(s)`, input times `1/s`, `s = a^α / sqrt(max·min)`
//!   with `a_j = sqrt(E[x_j²])` from calibration, `α` searched on `0, 0.1, …, 1` per layer for
//!   the least `Σ_j E[x_j²] · Σ_o (Q(W·diag(s))_oj / s_j − W_oj)²` (the diagonal approximation
//!   of the output error; `α = 0` is plain int4, so AWQ's estimate is never worse).
//! - `smoothquant_int8`: W8A8 on `W·diag(s)`, `s_j = max|X_j|^½ / max_o|W_oj|^½`; the head is
//!   int8 weight-only.
//!
//! Calibration statistics are per *input site* of a block (the inputs that several layers
//! share have one entry): `blk.{l}.attn_in` (q, k, v), `blk.{l}.o_in`, `blk.{l}.ffn_in` (gate,
//! up), `blk.{l}.down_in`, each `.act_sq_mean` and `.act_abs_max`, `[in]` f32, in a safetensors
//! file (`marsc weights calibrate --llama`, [`save_stats`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;

use super::llama::{Llama, LlamaState, Site};
use super::qlinear::{fold, int4_error, Format, QLinear};
use super::quant::{awq_scales, ActStats, StatsRecorder};

/// A `quantize` mode of the llama node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmQuant {
    None,
    Int8,
    Int4 { group: usize },
    AwqInt4 { group: usize },
    SmoothQuantInt8,
}

/// The α grid of AWQ's search: `k / AWQ_STEPS`, `k = 0 ..= AWQ_STEPS`.
pub const AWQ_STEPS: usize = 10;
/// SmoothQuant's migration strength.
pub const SMOOTH_ALPHA: f32 = 0.5;

impl LlmQuant {
    /// From a node's `quantize` and `group` keys.
    pub fn parse(mode: &str, group: Option<i64>) -> Result<LlmQuant, String> {
        let g = match group {
            None => 32,
            Some(g @ (32 | 64 | 128)) => g as usize,
            Some(g) => return Err(format!("group = {g}: expected 32, 64 or 128")),
        };
        let q = match mode {
            "none" => LlmQuant::None,
            "int8" => LlmQuant::Int8,
            "int4" => LlmQuant::Int4 { group: g },
            "awq_int4" => LlmQuant::AwqInt4 { group: g },
            "smoothquant_int8" => LlmQuant::SmoothQuantInt8,
            "fp8" => return Err("quantize = fp8 is not supported on CPU; use int8 or int4".into()),
            other => {
                return Err(format!(
                    "unknown quantize mode `{other}`; expected none, int8, int4, awq_int4 or smoothquant_int8"
                ))
            }
        };
        if group.is_some_and(|g| g != 32)
            && !matches!(q, LlmQuant::Int4 { .. } | LlmQuant::AwqInt4 { .. })
        {
            return Err(format!(
                "`group` applies to int4 and awq_int4, not `{mode}`"
            ));
        }
        Ok(q)
    }

    /// The mode as a node writes it (`int4/g64` for a group other than 32).
    pub fn name(self) -> String {
        match self {
            LlmQuant::None => "f32".into(),
            LlmQuant::Int8 => "int8".into(),
            LlmQuant::Int4 { group } => format!("int4/g{group}"),
            LlmQuant::AwqInt4 { group } => format!("awq_int4/g{group}"),
            LlmQuant::SmoothQuantInt8 => "smoothquant_int8".into(),
        }
    }

    pub fn needs_stats(self) -> bool {
        matches!(self, LlmQuant::AwqInt4 { .. } | LlmQuant::SmoothQuantInt8)
    }
}

/// A block layer's quantized form: `w: [out, in]` f32 row-major, `stats` of its input site.
pub fn quantize_layer(
    w: &[f32],
    inp: usize,
    mode: LlmQuant,
    stats: Option<&ActStats>,
) -> Result<QLinear, String> {
    let need = || format!("quantize = {} needs calibration statistics", mode.name());
    match mode {
        LlmQuant::None => Err("not a quantized mode".into()),
        LlmQuant::Int8 => QLinear::new(w, inp, Format::Int8 { act8: false }, None),
        LlmQuant::Int4 { group } => QLinear::new(w, inp, Format::Int4 { group }, None),
        LlmQuant::AwqInt4 { group } => {
            let st = stats.ok_or_else(need)?;
            let found = awq_search(w, inp, st, group);
            let (ws, inv) = fold(w, inp, &found.scales);
            let inv = (found.alpha > 0.0).then_some(inv);
            let ws = if inv.is_some() { ws } else { w.to_vec() };
            QLinear::new(&ws, inp, Format::Int4 { group }, inv)
        }
        LlmQuant::SmoothQuantInt8 => {
            let st = stats.ok_or_else(need)?;
            let s = smooth_scales(w, inp, st, SMOOTH_ALPHA);
            let (ws, inv) = fold(w, inp, &s);
            QLinear::new(&ws, inp, Format::Int8 { act8: true }, Some(inv))
        }
    }
}

/// AWQ's choice for one layer.
#[derive(Debug, Clone)]
pub struct AwqChoice {
    pub alpha: f32,
    pub scales: Vec<f32>,
    /// The estimated output error with these scales, and with none (`α = 0`).
    pub error: f64,
    pub plain_error: f64,
}

/// Search `α` on the grid for the least [`int4_error`].
pub fn awq_search(w: &[f32], inp: usize, stats: &ActStats, group: usize) -> AwqChoice {
    let mag = stats.magnitude();
    let mut best: Option<AwqChoice> = None;
    let mut plain = f64::NAN;
    for k in 0..=AWQ_STEPS {
        let alpha = k as f32 / AWQ_STEPS as f32;
        let scales = awq_scales(&mag, alpha);
        let error = int4_error(w, inp, &scales, &stats.sq_mean, group);
        if k == 0 {
            plain = error;
        }
        if best.as_ref().is_none_or(|b| error < b.error) {
            best = Some(AwqChoice {
                alpha,
                scales,
                error,
                plain_error: 0.0,
            });
        }
    }
    let mut best = best.expect("the grid is not empty");
    best.plain_error = plain;
    best
}

/// SmoothQuant's `s_j = max|X_j|^α / max_o|W_oj|^(1−α)`, clamped below at 1e-5.
pub fn smooth_scales(w: &[f32], inp: usize, stats: &ActStats, alpha: f32) -> Vec<f32> {
    let mut wmax = vec![0f32; inp];
    for row in w.chunks(inp) {
        for (m, v) in wmax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    stats
        .abs_max
        .iter()
        .zip(&wmax)
        .map(|(&a, &w)| (a.max(1e-5).powf(alpha) / w.max(1e-5).powf(1.0 - alpha)).max(1e-5))
        .collect()
}

/// The input sites of block `l` and the layers that read each.
pub fn sites(l: usize) -> [(String, &'static [&'static str]); 4] {
    [
        (format!("blk.{l}.attn_in"), &["attn_q", "attn_k", "attn_v"]),
        (format!("blk.{l}.o_in"), &["attn_output"]),
        (format!("blk.{l}.ffn_in"), &["ffn_gate", "ffn_up"]),
        (format!("blk.{l}.down_in"), &["ffn_down"]),
    ]
}

/// Write calibration statistics (and `mars.calibration` metadata) to a safetensors file.
pub fn save_stats(
    path: &Path,
    stats: &BTreeMap<String, ActStats>,
    about: serde_json::Value,
) -> Result<(), String> {
    let mut tensors = HashMap::new();
    for (site, s) in stats {
        s.insert_into(site, &mut tensors)
            .map_err(|e| e.to_string())?;
    }
    let meta = HashMap::from([("mars.calibration".to_string(), about.to_string())]);
    super::save_safetensors(path, &tensors, meta)
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

/// Read a statistics file written by [`save_stats`]: site → statistics.
pub fn load_stats(path: &Path) -> Result<BTreeMap<String, ActStats>, String> {
    let w = super::load_safetensors(path)?;
    let mut out = BTreeMap::new();
    for name in w.tensors.keys() {
        let Some(site) = name.strip_suffix(&format!(".{}", super::quant::SQ_MEAN)) else {
            continue;
        };
        let n = w.tensors[name].dims().iter().product();
        if let Some(s) = ActStats::from_tensors(&w.tensors, site, n)
            .map_err(|e| format!("`{}`: {e}", path.display()))?
        {
            out.insert(site.to_string(), s);
        }
    }
    if out.is_empty() {
        return Err(format!(
            "`{}` holds no calibration statistics",
            path.display()
        ));
    }
    Ok(out)
}

/// Run the f32 `model` over `texts` (token ids, each one sequence, at most the model's
/// positions) and record every input site's statistics. Returns them and the token count.
pub fn calibrate(
    model: &Llama,
    texts: &[Vec<u32>],
) -> Result<(BTreeMap<String, ActStats>, usize), String> {
    let mut rec = StatsRecorder::default();
    let mut tokens = 0;
    for t in texts {
        if t.is_empty() {
            continue;
        }
        let t = &t[..t.len().min(model.positions())];
        let mut st = LlamaState::default();
        let mut observe = |l: usize, site: Site, x: &Tensor| -> candle_core::Result<()> {
            let [(a, _), (o, _), (f, _), (d, _)] = sites(l);
            let name = match site {
                Site::AttnIn => a,
                Site::OIn => o,
                Site::FfnIn => f,
                Site::DownIn => d,
            };
            rec.record(&name, x)
        };
        model
            .extend_observed(&mut [&mut st], &[t.to_vec()], &mut observe)
            .map_err(|e| format!("calibration forward failed: {e}"))?;
        tokens += t.len();
    }
    if tokens == 0 {
        return Err("no calibration tokens".into());
    }
    Ok((rec.finish(), tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_with_their_group() {
        assert_eq!(
            LlmQuant::parse("int4", Some(64)),
            Ok(LlmQuant::Int4 { group: 64 })
        );
        assert_eq!(
            LlmQuant::parse("awq_int4", None),
            Ok(LlmQuant::AwqInt4 { group: 32 })
        );
        assert!(LlmQuant::parse("int4", Some(48))
            .unwrap_err()
            .contains("32, 64 or 128"));
        assert!(LlmQuant::parse("int8", Some(64))
            .unwrap_err()
            .contains("applies to int4"));
        assert_eq!(LlmQuant::parse("int8", Some(32)), Ok(LlmQuant::Int8));
        assert!(LlmQuant::parse("fp8", None)
            .unwrap_err()
            .contains("not supported"));
    }

    /// One input channel carries 30× the activation of the others: AWQ finds `α > 0` and a
    /// smaller estimated error than plain int4.
    #[test]
    fn awq_protects_the_channel_with_large_activations() {
        let (out, inp) = (16, 64);
        let w: Vec<f32> = (0..out * inp)
            .map(|k| (((k * 2654435761) % 1000) as f32 / 1000.0 - 0.5) * 0.1)
            .collect();
        let mut sq = vec![1.0f32; inp];
        sq[5] = 900.0;
        let st = ActStats {
            abs_max: sq.iter().map(|v| v.sqrt() * 3.0).collect(),
            sq_mean: sq,
        };
        let c = awq_search(&w, inp, &st, 64);
        assert!(c.alpha > 0.0, "{c:?}");
        assert!(
            c.error < c.plain_error * 0.9,
            "{} vs {}",
            c.error,
            c.plain_error
        );
    }
}
