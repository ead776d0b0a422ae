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
    #[serde(default)]
    pub nodes: BTreeMap<String, KindProfile>,
    /// Mean list length at a map node, keyed by node id; default 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fanout: BTreeMap<String, f64>,
}

/// A node kind's measurements per device.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindProfile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<DeviceProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<DeviceProfile>,
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
                let lists: [(&str, Option<&Vec<f64>>); 3] = [
                    ("latency_ms", Some(&dp.latency_ms)),
                    ("p99_ms", dp.p99_ms.as_ref()),
                    ("memory_mb", dp.memory_mb.as_ref()),
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
                    let must_be_positive = field != "memory_mb";
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
}
