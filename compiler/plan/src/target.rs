//! The target file (`targets/*.yaml`): the machines a plan may use. Only this module reads it.

use serde::{Deserialize, Serialize};

use crate::LoadError;

pub const TARGET_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub mars_target: u32,
    pub workers: Vec<Worker>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Worker {
    pub name: String,
    pub cpus: f64,
    #[serde(default)]
    pub memory_gb: f64,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    pub name: String,
    pub memory_gb: f64,
    /// The part of this GPU the plan may use, in (0, 1].
    #[serde(default = "one")]
    pub share: f64,
}

fn one() -> f64 {
    1.0
}

impl Target {
    pub fn from_yaml(text: &str, path: &str) -> Result<Target, LoadError> {
        let t: Target = crate::load_yaml(text, path)?;
        if t.mars_target != TARGET_VERSION {
            return Err(LoadError::invalid(
                path,
                crate::find_key_line(text, "mars_target"),
                "mars_target",
                format!("unsupported target version {} (this Mars reads {TARGET_VERSION})", t.mars_target),
            ));
        }
        if t.workers.is_empty() {
            return Err(LoadError::invalid(path, crate::find_key_line(text, "workers"), "workers", "needs at least one worker"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, w) in t.workers.iter().enumerate() {
            let key = format!("workers[{i}]");
            let line = crate::find_key_line(text, &format!("workers.{}", "name")).map(|_| ()).and_then(|_| line_of_value(text, &w.name));
            if !names.insert(w.name.clone()) {
                return Err(LoadError::invalid(path, line, &format!("{key}.name"), format!("worker name `{}` appears twice", w.name)));
            }
            if !w.cpus.is_finite() || w.cpus <= 0.0 {
                return Err(LoadError::invalid(path, line, &format!("{key}.cpus"), format!("value {} must be positive", w.cpus)));
            }
            if !w.memory_gb.is_finite() || w.memory_gb < 0.0 {
                return Err(LoadError::invalid(path, line, &format!("{key}.memory_gb"), format!("value {} must be non-negative", w.memory_gb)));
            }
            for (j, g) in w.gpus.iter().enumerate() {
                let gkey = format!("{key}.gpus[{j}]");
                let gline = line_of_value(text, &g.name);
                if !names.insert(g.name.clone()) {
                    return Err(LoadError::invalid(path, gline, &format!("{gkey}.name"), format!("name `{}` appears twice", g.name)));
                }
                if !g.memory_gb.is_finite() || g.memory_gb <= 0.0 {
                    return Err(LoadError::invalid(path, gline, &format!("{gkey}.memory_gb"), format!("value {} must be positive", g.memory_gb)));
                }
                if !g.share.is_finite() || g.share <= 0.0 || g.share > 1.0 {
                    return Err(LoadError::invalid(path, gline, &format!("{gkey}.share"), format!("value {} must be in (0, 1]", g.share)));
                }
            }
        }
        Ok(t)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a target always serializes")
    }

    /// Whether any worker has a GPU.
    pub fn has_gpu(&self) -> bool {
        self.workers.iter().any(|w| !w.gpus.is_empty())
    }
}

/// The 1-based line where `name:`'s value `value` first appears (workers and GPUs are named).
fn line_of_value(text: &str, value: &str) -> Option<usize> {
    text.lines().position(|l| l.contains("name") && l.contains(value)).map(|i| i + 1)
}
