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
                crate::find_key_path(text, &["mars_target"]),
                "mars_target",
                format!(
                    "unsupported target version {} (this Mars reads {TARGET_VERSION})",
                    t.mars_target
                ),
            ));
        }
        if t.workers.is_empty() {
            return Err(LoadError::invalid(
                path,
                crate::find_key_path(text, &["workers"]),
                "workers",
                "needs at least one worker",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, w) in t.workers.iter().enumerate() {
            let idx = i.to_string();
            let at = |field: &str| crate::find_key_path(text, &["workers", &idx, field]);
            let key = |field: &str| format!("workers[{i}].{field}");
            if !names.insert(w.name.clone()) {
                return Err(LoadError::invalid(
                    path,
                    at("name"),
                    &key("name"),
                    format!("the name `{}` appears twice", w.name),
                ));
            }
            if !w.cpus.is_finite() || w.cpus <= 0.0 {
                return Err(LoadError::invalid(
                    path,
                    at("cpus"),
                    &key("cpus"),
                    format!("value {} must be positive", w.cpus),
                ));
            }
            if !w.memory_gb.is_finite() || w.memory_gb < 0.0 {
                return Err(LoadError::invalid(
                    path,
                    at("memory_gb"),
                    &key("memory_gb"),
                    format!("value {} must be non-negative", w.memory_gb),
                ));
            }
            for (j, g) in w.gpus.iter().enumerate() {
                let jdx = j.to_string();
                let gat = |field: &str| {
                    crate::find_key_path(text, &["workers", &idx, "gpus", &jdx, field])
                };
                let gkey = |field: &str| format!("workers[{i}].gpus[{j}].{field}");
                if !names.insert(g.name.clone()) {
                    return Err(LoadError::invalid(
                        path,
                        gat("name"),
                        &gkey("name"),
                        format!("the name `{}` appears twice", g.name),
                    ));
                }
                if !g.memory_gb.is_finite() || g.memory_gb <= 0.0 {
                    return Err(LoadError::invalid(
                        path,
                        gat("memory_gb"),
                        &gkey("memory_gb"),
                        format!("value {} must be positive", g.memory_gb),
                    ));
                }
                if !g.share.is_finite() || g.share <= 0.0 || g.share > 1.0 {
                    return Err(LoadError::invalid(
                        path,
                        gat("share"),
                        &gkey("share"),
                        format!("value {} must be in (0, 1]", g.share),
                    ));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> LoadError {
        Target::from_yaml(text, "t.yaml").expect_err("must be rejected")
    }

    #[test]
    fn a_valid_target_loads_with_default_share() {
        let t = Target::from_yaml(
            "mars_target: 1\nworkers:\n  - name: w0\n    cpus: 4\n    memory_gb: 32\n    gpus:\n      - {name: gpu0, memory_gb: 16}\n",
            "t.yaml",
        )
        .expect("valid");
        assert_eq!(t.workers[0].gpus[0].share, 1.0);
        assert!(t.has_gpu());
    }

    #[test]
    fn bad_values_name_file_key_and_line() {
        let e =
            err("mars_target: 1\nworkers:\n  - name: w0\n    cpus: 4\n  - name: w1\n    cpus: 0\n");
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("workers[1].cpus"), Some(6))
        );
        assert!(
            e.to_string().starts_with("t.yaml:6: `workers[1].cpus`"),
            "{e}"
        );
        let e = err("mars_target: 1\nworkers:\n  - name: w0\n    cpus: 4\n    gpus:\n      - {name: g0, memory_gb: 16, share: 1.5}\n");
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("workers[0].gpus[0].share"), Some(6))
        );
        let e =
            err("mars_target: 1\nworkers:\n  - name: w0\n    cpus: 4\n  - name: w0\n    cpus: 2\n");
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("workers[1].name"), Some(5))
        );
        let e = err("mars_target: 1\nworkers: []\n");
        assert_eq!((e.key.as_deref(), e.line), (Some("workers"), Some(2)));
    }

    #[test]
    fn missing_fields_carry_a_line() {
        let e = err("mars_target: 1\nworkers:\n  - name: w0\n    memory_gb: 4\n");
        assert!(e.message.contains("cpus"), "{e}");
        assert!(e.line.is_some(), "{e}");
    }
}
