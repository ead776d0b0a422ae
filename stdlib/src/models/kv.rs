//! The KV cache options of `arch = "llama"` (SPEC §4.9.2): token pruning after prefill
//! (`kv_keep`, attention-score eviction in the manner of H2O and SnapKV) and int8 storage
//! (`kv = "int8"`, one scale per token and KV head). This module holds the pure parts: the
//! options and their checks and which positions a pruned cache keeps; the cache itself (and
//! its int8 codes) is [`super::kv_cache`], the forward pass that applies them [`super::llama`].

/// The first positions of a prompt that pruning always keeps (attention sinks: StreamingLLM
/// shows that most heads park attention there).
pub const SINKS: usize = 4;
/// The last positions of a prompt that pruning always keeps; their queries are the
/// observation window whose attention scores the other positions (SnapKV's window of 32).
pub const WINDOW: usize = 32;
/// Width of the average pooling over positions' scores before the top-k (SnapKV's kernel of
/// 7: a heavy hitter keeps its neighbours, so a kept fact is not cut mid-phrase).
pub const POOL: usize = 7;

/// How the cache is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvStore {
    F32,
    /// Codes `round(x / d) + 128` as u8, `d = max|x| / 127` per token and KV head.
    Int8,
}

/// The node's KV options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvOptions {
    /// The share of a prompt's positions kept after prefill, in (0, 1]; 1 keeps all.
    pub keep: f64,
    pub store: KvStore,
}

impl Default for KvOptions {
    fn default() -> KvOptions {
        KvOptions {
            keep: 1.0,
            store: KvStore::F32,
        }
    }
}

impl KvOptions {
    /// Check the model keys `kv_keep` and `kv`.
    pub fn parse(keep: f64, store: &str) -> std::result::Result<KvOptions, (&'static str, String)> {
        if !(keep > 0.0 && keep <= 1.0) {
            return Err((
                "kv_keep",
                format!(
                    "= {keep}: must be in (0, 1] (the share of a prompt's KV kept; 1 keeps all)"
                ),
            ));
        }
        let store = match store {
            "" | "f32" => KvStore::F32,
            "int8" => KvStore::Int8,
            other => return Err(("kv", format!("= \"{other}\": expected \"f32\" or \"int8\""))),
        };
        Ok(KvOptions { keep, store })
    }

    pub fn is_default(&self) -> bool {
        *self == KvOptions::default()
    }

    /// The positions kept of a prompt of `len`, or `None` when pruning keeps them all: at
    /// least `SINKS + WINDOW`, else `ceil(keep · len)`.
    pub fn budget(&self, len: usize) -> Option<usize> {
        if self.keep >= 1.0 {
            return None;
        }
        let b = ((self.keep * len as f64).ceil() as usize).max(SINKS + WINDOW);
        (b < len).then_some(b)
    }

    /// Bytes one position of the cache takes (keys and values of every layer).
    pub fn bytes_per_token(&self, layers: usize, kv_heads: usize, head_dim: usize) -> usize {
        let per_head = match self.store {
            KvStore::F32 => 4 * head_dim,
            KvStore::Int8 => head_dim + 4,
        };
        2 * layers * kv_heads * per_head
    }

    /// The mode as written in a report: `f32`, `int8`, with `keep=0.5` when pruning.
    pub fn name(&self) -> String {
        let s = match self.store {
            KvStore::F32 => "f32",
            KvStore::Int8 => "int8",
        };
        match self.keep < 1.0 {
            true => format!("kv {s} keep={}", self.keep),
            false => format!("kv {s}"),
        }
    }
}

/// Average of `scores` over a window of `POOL` positions centred on each (shorter at the
/// ends).
pub fn pool(scores: &[f32]) -> Vec<f32> {
    let r = POOL / 2;
    (0..scores.len())
        .map(|i| {
            let lo = i.saturating_sub(r);
            let hi = (i + r + 1).min(scores.len());
            scores[lo..hi].iter().sum::<f32>() / (hi - lo) as f32
        })
        .collect()
}

/// The positions a pruned cache of `scores.len()` positions keeps, ascending: the first
/// `sinks`, the last `window`, and the rest of `budget` by the highest score (ties: the
/// earlier position). When sinks and window together exceed `budget` they are kept anyway.
pub fn keep_positions(scores: &[f32], sinks: usize, window: usize, budget: usize) -> Vec<u32> {
    let n = scores.len();
    if budget >= n {
        return (0..n as u32).collect();
    }
    let sinks = sinks.min(n);
    let recent = n.saturating_sub(window).max(sinks);
    let mut middle: Vec<usize> = (sinks..recent).collect();
    middle.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let fixed = sinks + (n - recent);
    middle.truncate(budget.saturating_sub(fixed));
    let mut kept: Vec<u32> = (0..sinks)
        .chain(middle)
        .chain(recent..n)
        .map(|i| i as u32)
        .collect();
    kept.sort_unstable();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_sinks_the_window_and_the_heaviest_of_the_rest() {
        // 12 positions; position 6 is the heavy hitter, 8 the next, 1 would be but is a sink.
        let mut s = vec![0.1f32; 12];
        s[1] = 9.0;
        s[6] = 5.0;
        s[8] = 3.0;
        s[10] = 7.0;
        assert_eq!(keep_positions(&s, 2, 3, 7), [0, 1, 6, 8, 9, 10, 11]);
        // A smaller budget drops the lighter hitter first.
        assert_eq!(keep_positions(&s, 2, 3, 6), [0, 1, 6, 9, 10, 11]);
        // Sinks and window are kept even past the budget; a budget of all keeps all.
        assert_eq!(keep_positions(&s, 2, 3, 4), [0, 1, 9, 10, 11]);
        assert_eq!(keep_positions(&s, 2, 3, 12), (0..12).collect::<Vec<u32>>());
        // Ties go to the earlier position.
        assert_eq!(keep_positions(&[1.0; 6], 1, 1, 3), [0, 1, 5]);
        // Sinks and window overlap on a short prompt.
        assert_eq!(keep_positions(&[1.0; 4], 3, 3, 2), [0, 1, 2, 3]);
    }

    #[test]
    fn pooling_averages_neighbours() {
        let p = pool(&[0.0, 0.0, 0.0, 7.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(
            (p[3] - 1.0).abs() < 1e-6 && (p[0] - 7.0 / 4.0).abs() < 1e-6,
            "{p:?}"
        );
        assert!(
            (p[7] - 0.0).abs() < 1e-6 && (p[6] - 7.0 / 5.0).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn budget_and_options() {
        let half = KvOptions::parse(0.5, "f32").unwrap();
        assert_eq!(half.budget(2000), Some(1000));
        assert_eq!(half.budget(50), Some(SINKS + WINDOW));
        assert_eq!(half.budget(SINKS + WINDOW), None);
        assert_eq!(KvOptions::parse(1.0, "").unwrap().budget(4000), None);
        assert_eq!(KvOptions::parse(0.0, "f32").unwrap_err().0, "kv_keep");
        assert_eq!(KvOptions::parse(1.5, "f32").unwrap_err().0, "kv_keep");
        assert_eq!(KvOptions::parse(f64::NAN, "f32").unwrap_err().0, "kv_keep");
        assert_eq!(KvOptions::parse(1.0, "int4").unwrap_err().0, "kv");
        let i8 = KvOptions::parse(1.0, "int8").unwrap();
        // SmolLM2-135M: 30 layers, 3 KV heads of 64.
        assert_eq!(KvOptions::default().bytes_per_token(30, 3, 64), 46_080);
        assert_eq!(i8.bytes_per_token(30, 3, 64), 12_240);
    }
}
