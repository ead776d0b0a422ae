//! The profile file (`*.profile.yaml`): measured cost of each node kind on each device.
//! Schema fixed by the planner issue; SPEC.md documents it. Only this module reads or writes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::LoadError;

pub const PROFILE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub mars_profile: u32,
    /// Keyed by node kind (model name, or fn path as written), then by device.
    #[serde(default, deserialize_with = "crate::yaml::unique_keys")]
    pub nodes: BTreeMap<String, KindProfile>,
    /// Mean list length at a map node, keyed by node id; default 1.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::yaml::unique_keys"
    )]
    pub fanout: BTreeMap<String, f64>,
    /// The runtime's own CPU cost on the profiled machine; absent in older profiles (then the
    /// planner charges nothing for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeProfile>,
}

/// The version of the `runtime` section this build writes and reads.
pub const RUNTIME_SECTION_VERSION: u32 = 1;

/// The runtime's CPU outside the nodes' own work, in core-microseconds (SPEC 2.4.9).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeProfile {
    /// Always [`RUNTIME_SECTION_VERSION`].
    pub version: u32,
    /// Per request, on the first worker: reading and parsing its line, admitting it, encoding
    /// and writing its record.
    pub request_us: f64,
    /// Per item per node, on the node's worker: moving the record through the node's operator
    /// (dispatch and progress tracking), for a node that runs inline.
    pub hop_us: f64,
    /// Per batch handed to a replica thread, on the node's worker: the hand-off, the wake-ups
    /// and the operator's queueing (a node on replica threads pays it per batch).
    pub batch_us: f64,
}

/// A node kind's measurements per device, and for a generating model (`generate = true`) what
/// its sequences look like (the same on every device).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindProfile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<DeviceProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<DeviceProfile>,
    /// How many decode steps a sequence takes (the tokens it generates, counting the end
    /// token), over the profiled inputs. Required where a device has `step_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<TokenHistogram>,
    /// Mean prompt length in tokens (the KV cache a sequence holds before it generates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<f64>,
}

/// A distribution of token counts: `share[i]` of the sequences have `tokens[i]` tokens. The
/// shares are relative weights (the planner divides by their sum); the profiler writes
/// fractions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenHistogram {
    /// Positive and strictly increasing.
    pub tokens: Vec<u32>,
    /// Positive, one per entry of `tokens`.
    pub share: Vec<f64>,
}

/// Measurements on one device: parallel lists indexed by batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    pub batch: Vec<u32>,
    pub latency_ms: Vec<f64>,
    /// Defaults to `latency_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<Vec<f64>>,
    /// Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<Vec<f64>>,
    /// Cores busy while a batch runs; defaults to 1.0 on cpu and 0 on gpu.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    /// Generating models only: the median time of one decode step while `batch[i]` sequences
    /// run (ms). With it the planner costs the node per step (SPEC 2.4.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ms: Option<Vec<f64>>,
    /// Generating models only: the median time to prefill `batch[i]` prompts together (ms);
    /// defaults to 0 for each size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_ms: Option<Vec<f64>>,
    /// GPU only: the share of the GPU's compute a batch occupies, in (0, 1]; default 1. On a
    /// GPU shared through MPS nodes add up by it; on a MIG instance with fewer slices the node
    /// runs slower (SPEC 10.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_share: Option<f64>,
}

impl DeviceProfile {
    /// Latency measurements only (the fields every kind has), the rest at their defaults.
    pub fn new(batch: Vec<u32>, latency_ms: Vec<f64>) -> DeviceProfile {
        DeviceProfile {
            batch,
            latency_ms,
            p99_ms: None,
            memory_mb: None,
            cpu_cores: None,
            step_ms: None,
            prefill_ms: None,
            sm_share: None,
        }
    }
}

impl Profile {
    /// Parse and validate a profile; `path` names the file in errors.
    pub fn from_yaml(text: &str, path: &str) -> Result<Profile, LoadError> {
        let profile: Profile = crate::load_yaml(text, path)?;
        profile.validate(text, path)?;
        Ok(profile)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a profile always serializes")
    }

    fn validate(&self, text: &str, path: &str) -> Result<(), LoadError> {
        if self.mars_profile != PROFILE_VERSION {
            return Err(LoadError::invalid(
                path,
                crate::find_key_path(text, &["mars_profile"]),
                "mars_profile",
                format!(
                    "unsupported profile version {} (this Mars reads {PROFILE_VERSION})",
                    self.mars_profile
                ),
            ));
        }
        if let Some(r) = &self.runtime {
            if r.version != RUNTIME_SECTION_VERSION {
                return Err(LoadError::invalid(
                    path,
                    crate::find_key_path(text, &["runtime", "version"]),
                    "runtime.version",
                    format!(
                        "unsupported runtime section version {} (this Mars reads {RUNTIME_SECTION_VERSION})",
                        r.version
                    ),
                ));
            }
            for (field, v) in [
                ("request_us", r.request_us),
                ("hop_us", r.hop_us),
                ("batch_us", r.batch_us),
            ] {
                if !v.is_finite() || v < 0.0 {
                    return Err(LoadError::invalid(
                        path,
                        crate::find_key_path(text, &["runtime", field]),
                        &format!("runtime.{field}"),
                        format!("value {v} must be non-negative"),
                    ));
                }
            }
        }
        for (kind, kp) in &self.nodes {
            for (dev, dp) in [("cpu", &kp.cpu), ("gpu", &kp.gpu)] {
                let Some(dp) = dp else { continue };
                let key = format!("nodes.{kind}.{dev}");
                let at = |field: &str| {
                    (
                        crate::find_key_path(text, &["nodes", kind, dev, field]),
                        format!("{key}.{field}"),
                    )
                };
                if dp.batch.is_empty() {
                    let (line, k) = at("batch");
                    return Err(LoadError::invalid(
                        path,
                        line,
                        &k,
                        "needs at least one batch size",
                    ));
                }
                let mut prev = 0;
                for &b in &dp.batch {
                    if b == 0 || b <= prev {
                        let (line, k) = at("batch");
                        return Err(LoadError::invalid(
                            path,
                            line,
                            &k,
                            "batch sizes must be positive and increasing",
                        ));
                    }
                    prev = b;
                }
                let n = dp.batch.len();
                let lists: [(&str, Option<&Vec<f64>>); 5] = [
                    ("latency_ms", Some(&dp.latency_ms)),
                    ("p99_ms", dp.p99_ms.as_ref()),
                    ("memory_mb", dp.memory_mb.as_ref()),
                    ("step_ms", dp.step_ms.as_ref()),
                    ("prefill_ms", dp.prefill_ms.as_ref()),
                ];
                for (field, list) in lists {
                    let Some(list) = list else { continue };
                    if list.len() != n {
                        let (line, k) = at(field);
                        return Err(LoadError::invalid(
                            path,
                            line,
                            &k,
                            format!("has {} values but `batch` has {n}; the lists must be the same length", list.len()),
                        ));
                    }
                    let must_be_positive = field != "memory_mb" && field != "prefill_ms";
                    for &v in list {
                        if !v.is_finite() || v < 0.0 || (must_be_positive && v == 0.0) {
                            let (line, k) = at(field);
                            let need = if must_be_positive {
                                "positive"
                            } else {
                                "non-negative"
                            };
                            return Err(LoadError::invalid(
                                path,
                                line,
                                &k,
                                format!("value {v} must be {need}"),
                            ));
                        }
                    }
                }
                if dp.step_ms.is_some() && kp.output_tokens.is_none() {
                    let (line, k) = at("step_ms");
                    return Err(LoadError::invalid(
                        path,
                        line,
                        &k,
                        format!("needs the kind's output length distribution `nodes.{kind}.output_tokens`"),
                    ));
                }
                if dp.prefill_ms.is_some() && dp.step_ms.is_none() {
                    let (line, k) = at("prefill_ms");
                    return Err(LoadError::invalid(
                        path,
                        line,
                        &k,
                        "is used only with `step_ms`, which is missing",
                    ));
                }
                if let Some(c) = dp.cpu_cores {
                    if !c.is_finite() || c < 0.0 {
                        let (line, k) = at("cpu_cores");
                        return Err(LoadError::invalid(
                            path,
                            line,
                            &k,
                            format!("value {c} must be non-negative"),
                        ));
                    }
                }
                if let Some(c) = dp.sm_share {
                    if !c.is_finite() || c <= 0.0 || c > 1.0 {
                        let (line, k) = at("sm_share");
                        return Err(LoadError::invalid(
                            path,
                            line,
                            &k,
                            format!("value {c} must be in (0, 1]"),
                        ));
                    }
                }
            }
        }
        for (kind, kp) in &self.nodes {
            let at = |field: &[&str]| {
                let mut keys = vec!["nodes", kind.as_str()];
                keys.extend_from_slice(field);
                (
                    crate::find_key_path(text, &keys),
                    format!("nodes.{kind}.{}", field.join(".")),
                )
            };
            if let Some(h) = &kp.output_tokens {
                h.validate().map_err(|(field, message)| {
                    let (line, k) = at(&["output_tokens", field]);
                    LoadError::invalid(path, line, &k, message)
                })?;
            }
            if let Some(p) = kp.prompt_tokens {
                if !p.is_finite() || p < 0.0 {
                    let (line, k) = at(&["prompt_tokens"]);
                    return Err(LoadError::invalid(
                        path,
                        line,
                        &k,
                        format!("value {p} must be non-negative"),
                    ));
                }
            }
        }
        for (id, &m) in &self.fanout {
            if !m.is_finite() || m < 0.0 {
                let key = format!("fanout.{id}");
                return Err(LoadError::invalid(
                    path,
                    crate::find_key_path(text, &["fanout", id]),
                    &key,
                    format!("value {m} must be non-negative"),
                ));
            }
        }
        Ok(())
    }
}

impl TokenHistogram {
    /// The histogram of observed counts (each > 0): shares are fractions rounded to 6 decimals.
    pub fn from_counts(counts: &BTreeMap<u32, usize>) -> Option<TokenHistogram> {
        let total: usize = counts.values().sum();
        if total == 0 {
            return None;
        }
        let (tokens, share) = counts
            .iter()
            .filter(|(&t, &c)| t > 0 && c > 0)
            .map(|(&t, &c)| (t, (c as f64 / total as f64 * 1e6).round() / 1e6))
            .map(|(t, s)| (t, s.max(1e-6)))
            .unzip();
        Some(TokenHistogram { tokens, share })
    }

    /// Why the histogram is invalid: the field at fault and the message.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.tokens.is_empty() {
            return Err(("tokens", "needs at least one token count".to_string()));
        }
        let mut prev = 0;
        for &t in &self.tokens {
            if t == 0 || t <= prev {
                return Err((
                    "tokens",
                    "token counts must be positive and increasing".to_string(),
                ));
            }
            prev = t;
        }
        if self.share.len() != self.tokens.len() {
            return Err((
                "share",
                format!(
                    "has {} values but `tokens` has {}; the lists must be the same length",
                    self.share.len(),
                    self.tokens.len()
                ),
            ));
        }
        for &s in &self.share {
            if !s.is_finite() || s <= 0.0 {
                return Err(("share", format!("value {s} must be positive")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> LoadError {
        Profile::from_yaml(text, "app.profile.yaml").expect_err("must be rejected")
    }

    #[test]
    fn a_valid_profile_loads() {
        let p = Profile::from_yaml(
            "mars_profile: 1\nnodes:\n  Seg:\n    gpu: {batch: [1, 8], latency_ms: [4, 9], p99_ms: [5, 11]}\nfanout:\n  words: 6.0\n",
            "p.yaml",
        )
        .expect("valid");
        assert_eq!(
            p.nodes["Seg"].gpu.as_ref().map(|g| g.batch.clone()),
            Some(vec![1, 8])
        );
        assert_eq!(p.fanout["words"], 6.0);
    }

    #[test]
    fn mismatched_lengths_name_file_key_and_line() {
        let e = err("mars_profile: 1\nnodes:\n  std.bench.delay:\n    cpu:\n      batch: [1, 2]\n      latency_ms: [3]\n");
        assert_eq!(e.path, "app.profile.yaml");
        assert_eq!(
            e.key.as_deref(),
            Some("nodes.std.bench.delay.cpu.latency_ms")
        );
        assert_eq!(e.line, Some(6));
        assert!(e.message.contains("1 values but `batch` has 2"), "{e}");
        assert!(
            e.to_string()
                .starts_with("app.profile.yaml:6: `nodes.std.bench.delay.cpu.latency_ms`"),
            "{e}"
        );
    }

    #[test]
    fn zero_and_negative_latencies_are_rejected() {
        let e = err("mars_profile: 1\nnodes:\n  A:\n    cpu: {batch: [1], latency_ms: [0]}\n");
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("nodes.A.cpu.latency_ms"), Some(4))
        );
        let e = err("mars_profile: 1\nnodes:\n  A:\n    cpu: {batch: [1], latency_ms: [2]}\n  B:\n    gpu:\n      batch: [1]\n      latency_ms: [1]\n      p99_ms: [-3]\n");
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("nodes.B.gpu.p99_ms"), Some(9))
        );
        assert!(e.message.contains("-3"), "{e}");
    }

    #[test]
    fn malformed_yaml_and_unknown_keys_carry_a_line() {
        let e = err("mars_profile: 1\nnodes:\n  A:\n    cpu: {batch: [1], latency: [2]}\n");
        assert_eq!(e.line, Some(4), "{e}");
        let e = err("mars_profile: 1\nnodes:\n  A:\n    cpu: {batch: [x], latency_ms: [2]}\n");
        assert_eq!(e.line, Some(4), "{e}");
        let e = err("mars_profile: 2\nnodes: {}\n");
        assert_eq!((e.key.as_deref(), e.line), (Some("mars_profile"), Some(1)));
    }

    #[test]
    fn batch_sizes_must_increase() {
        let e =
            err("mars_profile: 1\nnodes:\n  A:\n    cpu: {batch: [2, 1], latency_ms: [2, 1]}\n");
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("nodes.A.cpu.batch"), Some(4))
        );
    }

    const GENERATING: &str = "mars_profile: 1
nodes:
  Lm:
    cpu:
      batch: [1, 8]
      latency_ms: [5, 20]
      step_ms: [0.6, 2.3]
      prefill_ms: [1.5, 4.7]
    output_tokens:
      tokens: [1, 11]
      share: [0.8, 0.2]
    prompt_tokens: 7.5
";

    #[test]
    fn generating_kinds_carry_step_costs_and_lengths() {
        let p = Profile::from_yaml(GENERATING, "g.yaml").expect("valid");
        let lm = &p.nodes["Lm"];
        let cpu = lm.cpu.as_ref().expect("cpu");
        assert_eq!(cpu.step_ms, Some(vec![0.6, 2.3]));
        assert_eq!(cpu.prefill_ms, Some(vec![1.5, 4.7]));
        let h = lm.output_tokens.as_ref().expect("lengths");
        assert_eq!(
            (h.tokens.clone(), h.share.clone()),
            (vec![1, 11], vec![0.8, 0.2])
        );
        assert_eq!(lm.prompt_tokens, Some(7.5));
        // It writes back to the same profile.
        assert_eq!(Profile::from_yaml(&p.to_yaml(), "g.yaml"), Ok(p));
    }

    #[test]
    fn generating_fields_are_checked_with_file_line_and_key() {
        let e = err(&GENERATING.replace("step_ms: [0.6, 2.3]", "step_ms: [0.6]"));
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("nodes.Lm.cpu.step_ms"), Some(7))
        );
        let e = err(&GENERATING.replace("prefill_ms: [1.5, 4.7]", "prefill_ms: [1.5, -1]"));
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("nodes.Lm.cpu.prefill_ms"), Some(8))
        );
        let e = err(&GENERATING.replace("tokens: [1, 11]", "tokens: [11, 1]"));
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("nodes.Lm.output_tokens.tokens"), Some(10))
        );
        let e = err(&GENERATING.replace("share: [0.8, 0.2]", "share: [0.8]"));
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("nodes.Lm.output_tokens.share"), Some(11))
        );
        assert!(e.message.contains("1 values but `tokens` has 2"), "{e}");
        let e = err(&GENERATING.replace("share: [0.8, 0.2]", "share: [0.8, 0]"));
        assert_eq!(e.key.as_deref(), Some("nodes.Lm.output_tokens.share"));
        let e = err(&GENERATING.replace("prompt_tokens: 7.5", "prompt_tokens: -2"));
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("nodes.Lm.prompt_tokens"), Some(12))
        );
        // Step costs without the lengths they are multiplied by.
        let cut: String = GENERATING
            .lines()
            .take(8)
            .map(|l| format!("{l}\n"))
            .collect();
        let e = err(&cut);
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("nodes.Lm.cpu.step_ms"), Some(7))
        );
        assert!(e.message.contains("nodes.Lm.output_tokens"), "{e}");
        let e = err("mars_profile: 1\nnodes:\n  A:\n    cpu: {batch: [1], latency_ms: [2], prefill_ms: [1]}\n");
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("nodes.A.cpu.prefill_ms"), Some(4))
        );
    }

    #[test]
    fn histograms_from_counts_are_fractions() {
        let counts: BTreeMap<u32, usize> = [(3, 1), (1, 2), (7, 1)].into_iter().collect();
        let h = TokenHistogram::from_counts(&counts).expect("some");
        assert_eq!(h.tokens, vec![1, 3, 7]);
        assert_eq!(h.share, vec![0.5, 0.25, 0.25]);
        assert_eq!(TokenHistogram::from_counts(&BTreeMap::new()), None);
    }
}
