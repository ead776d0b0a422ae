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
                crate::find_key_line(text, "mars_profile"),
                "mars_profile",
                format!("unsupported profile version {} (this Mars reads {PROFILE_VERSION})", self.mars_profile),
            ));
        }
        for (kind, kp) in &self.nodes {
            for (dev, dp) in [("cpu", &kp.cpu), ("gpu", &kp.gpu)] {
                let Some(dp) = dp else { continue };
                let key = format!("nodes.{kind}.{dev}");
                let at = |field: &str| {
                    let full = format!("{key}.{field}");
                    (crate::find_key_line(text, &format!("nodes.{kind}.{dev}")).or_else(|| crate::find_key_line(text, &full)), full)
                };
                if dp.batch.is_empty() {
                    let (line, k) = at("batch");
                    return Err(LoadError::invalid(path, line, &k, "needs at least one batch size"));
                }
                let mut prev = 0;
                for &b in &dp.batch {
                    if b == 0 || b <= prev {
                        let (line, k) = at("batch");
                        return Err(LoadError::invalid(path, line, &k, "batch sizes must be positive and increasing"));
                    }
                    prev = b;
                }
                let n = dp.batch.len();
                let lists: [(&str, Option<&Vec<f64>>); 3] =
                    [("latency_ms", Some(&dp.latency_ms)), ("p99_ms", dp.p99_ms.as_ref()), ("memory_mb", dp.memory_mb.as_ref())];
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
                            let need = if must_be_positive { "positive" } else { "non-negative" };
                            return Err(LoadError::invalid(path, line, &k, format!("value {v} must be {need}")));
                        }
                    }
                }
                if let Some(c) = dp.cpu_cores {
                    if !c.is_finite() || c < 0.0 {
                        let (line, k) = at("cpu_cores");
                        return Err(LoadError::invalid(path, line, &k, format!("value {c} must be non-negative")));
                    }
                }
            }
        }
        for (id, &m) in &self.fanout {
            if !m.is_finite() || m < 0.0 {
                let key = format!("fanout.{id}");
                return Err(LoadError::invalid(path, crate::find_key_line(text, &key), &key, format!("value {m} must be non-negative")));
            }
        }
        Ok(())
    }
}
