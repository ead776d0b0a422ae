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
    /// The MIG instances this GPU is split into (SPEC 10.7); empty: the GPU is one device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mig: Vec<MigSlice>,
    /// Processes share this GPU through MPS: nodes run side by side, each on its compute
    /// share (the profile's `sm_share`), instead of taking turns (SPEC 10.7).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mps: bool,
}

/// `count` MIG instances of one profile, e.g. `{profile: 1g.18gb, count: 7}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigSlice {
    pub profile: String,
    pub count: u32,
}

/// The compute slices of a GPU that MIG divides (A100, H100, H200: seven).
pub const MIG_SLICES: u32 = 7;

impl MigSlice {
    /// The profile's compute slices (of [`MIG_SLICES`]) and memory in GB: `3g.40gb` is
    /// (3, 40.0).
    pub fn parse(profile: &str) -> Option<(u32, f64)> {
        let (g, mem) = profile.split_once("g.")?;
        let g: u32 = g.parse().ok()?;
        let mem: f64 = mem.strip_suffix("gb")?.parse().ok()?;
        ((1..=MIG_SLICES).contains(&g) && mem.is_finite() && mem > 0.0).then_some((g, mem))
    }
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
                check_sharing(g, &gat, &gkey, path)?;
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

/// A GPU's MIG instances fit it (their compute slices at most [`MIG_SLICES`], their memory at
/// most the GPU's), each profile reads `Ng.Mgb`, and MIG and MPS are not both declared.
fn check_sharing(
    g: &Gpu,
    at: &dyn Fn(&str) -> Option<usize>,
    key: &dyn Fn(&str) -> String,
    path: &str,
) -> Result<(), LoadError> {
    let bad = |field: &str, message: String| {
        Err(LoadError::invalid(path, at(field), &key(field), message))
    };
    if g.mps && !g.mig.is_empty() {
        return bad(
            "mps",
            "a GPU is split by MIG or shared through MPS, not both".into(),
        );
    }
    let (mut slices, mut mem) = (0u32, 0.0);
    for m in &g.mig {
        let Some((s, gb)) = MigSlice::parse(&m.profile) else {
            return bad(
                "mig",
                format!("MIG profile `{}` must read `Ng.Mgb` with N from 1 to {MIG_SLICES} (e.g. `1g.18gb`)", m.profile),
            );
        };
        if m.count == 0 {
            return bad("mig", format!("MIG profile `{}` has count 0", m.profile));
        }
        slices += s * m.count;
        mem += gb * f64::from(m.count);
    }
    if slices > MIG_SLICES {
        return bad(
            "mig",
            format!("the MIG instances take {slices} compute slices; a GPU has {MIG_SLICES}"),
        );
    }
    if mem > g.memory_gb + 1e-9 {
        return bad(
            "mig",
            format!(
                "the MIG instances hold {mem} GB; the GPU has {} GB",
                g.memory_gb
            ),
        );
    }
    Ok(())
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
    fn mig_and_mps_declarations_are_checked() {
        let t = Target::from_yaml(
            "mars_target: 1\nworkers:\n  - name: w0\n    cpus: 4\n    gpus:\n      - name: gpu0\n        memory_gb: 141\n        mig: [{profile: 1g.18gb, count: 7}]\n      - {name: gpu1, memory_gb: 80, mps: true}\n",
            "t.yaml",
        )
        .expect("valid");
        assert_eq!(t.workers[0].gpus[0].mig[0].count, 7);
        assert!(t.workers[0].gpus[1].mps);
        assert_eq!(MigSlice::parse("3g.40gb"), Some((3, 40.0)));
        assert_eq!(MigSlice::parse("8g.10gb"), None);
        assert_eq!(MigSlice::parse("1g"), None);
        let too_many = err("mars_target: 1\nworkers:\n  - name: w0\n    cpus: 4\n    gpus:\n      - name: gpu0\n        memory_gb: 80\n        mig: [{profile: 2g.20gb, count: 4}]\n");
        assert!(too_many.message.contains("8 compute slices"), "{too_many}");
        assert_eq!(too_many.key.as_deref(), Some("workers[0].gpus[0].mig"));
        let too_big = err("mars_target: 1\nworkers:\n  - name: w0\n    cpus: 4\n    gpus:\n      - name: gpu0\n        memory_gb: 40\n        mig: [{profile: 3g.40gb, count: 2}]\n");
        assert!(too_big.message.contains("80 GB"), "{too_big}");
        let both = err("mars_target: 1\nworkers:\n  - name: w0\n    cpus: 4\n    gpus:\n      - name: gpu0\n        memory_gb: 80\n        mps: true\n        mig: [{profile: 1g.10gb, count: 1}]\n");
        assert!(both.message.contains("not both"), "{both}");
        let garbled = err("mars_target: 1\nworkers:\n  - name: w0\n    cpus: 4\n    gpus:\n      - name: gpu0\n        memory_gb: 80\n        mig: [{profile: big, count: 1}]\n");
        assert!(garbled.message.contains("`big`"), "{garbled}");
    }

    #[test]
    fn missing_fields_carry_a_line() {
        let e = err("mars_target: 1\nworkers:\n  - name: w0\n    memory_gb: 4\n");
        assert!(e.message.contains("cpus"), "{e}");
        assert!(e.line.is_some(), "{e}");
    }
}
