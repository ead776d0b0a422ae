//! The deployment file (`*.deploy.yaml`, SPEC 10.8): the plans one `marsc serve` runs side
//! by side on one machine, each `online` (served) or `offline` (a batch run from an input file
//! to an output file that yields its cores to the online ones). This module alone reads it;
//! errors name the file, the line and the key.
//!
//! ```
//! let yaml = "mars_deployment: 1\ncores: 8\npipelines:\n  - {plan: chat.plan.yaml, priority: online}\n  - {plan: batch.plan.yaml, priority: offline, input: in.jsonl, output: out.jsonl, share: 0.5}\n";
//! let d = mars_plan::deployment::Deployment::from_yaml(yaml, "deploy.yaml").unwrap();
//! assert_eq!(d.pipelines.len(), 2);
//! assert_eq!(d.pipelines[1].share, 0.5);
//! ```

use serde::{Deserialize, Serialize};

use crate::LoadError;

/// The version this Mars reads.
pub const DEPLOYMENT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub mars_deployment: u32,
    /// The machine's cores the pipelines share; default: the `budget` cpus of the online
    /// plans' workers (the first plan that has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<f64>,
    pub pipelines: Vec<Deployed>,
}

/// `online` pipelines are served and keep their cores; `offline` ones take what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Online,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployed {
    /// The compiled plan, relative to the deployment file's folder.
    pub plan: String,
    pub priority: Priority,
    /// Offline: the requests (JSONL, as `marsc run --input`) and where the records go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Offline: skip requests whose records the output already holds (`marsc run --resume`).
    #[serde(default)]
    pub resume: bool,
    /// Offline: write the run's summary (with its `priority` moves) here at its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_json: Option<String>,
    /// Offline: the most of the cores the run may hold, in (0, 1].
    #[serde(default = "one")]
    pub share: f64,
}

fn one() -> f64 {
    1.0
}

impl Deployment {
    pub fn from_yaml(text: &str, path: &str) -> Result<Deployment, LoadError> {
        let d: Deployment = crate::load_yaml(text, path)?;
        let at = |keys: &[&str]| crate::find_key_path(text, keys);
        if d.mars_deployment != DEPLOYMENT_VERSION {
            return Err(LoadError::invalid(
                path,
                at(&["mars_deployment"]),
                "mars_deployment",
                format!(
                    "unsupported deployment version {} (this Mars reads {DEPLOYMENT_VERSION})",
                    d.mars_deployment
                ),
            ));
        }
        if let Some(c) = d.cores {
            if !c.is_finite() || c <= 0.0 {
                return Err(LoadError::invalid(
                    path,
                    at(&["cores"]),
                    "cores",
                    format!("value {c} must be positive"),
                ));
            }
        }
        if d.pipelines.is_empty() {
            return Err(LoadError::invalid(
                path,
                at(&["pipelines"]),
                "pipelines",
                "needs at least one pipeline",
            ));
        }
        // Offline outputs (and stats files) so far, to refuse two runs writing one file.
        let mut written: Vec<&str> = Vec::new();
        for (i, p) in d.pipelines.iter().enumerate() {
            let idx = i.to_string();
            let line = |field: &str| at(&["pipelines", &idx, field]);
            let key = |field: &str| format!("pipelines[{i}].{field}");
            let bad =
                |field: &str, msg: String| LoadError::invalid(path, line(field), &key(field), msg);
            match p.priority {
                Priority::Online => {
                    for (field, set) in [
                        ("input", p.input.is_some()),
                        ("output", p.output.is_some()),
                        ("stats_json", p.stats_json.is_some()),
                        ("resume", p.resume),
                        ("share", p.share != 1.0),
                    ] {
                        if set {
                            return Err(bad(
                                field,
                                format!(
                                    "`{field}` is for offline pipelines; an online one is served"
                                ),
                            ));
                        }
                    }
                }
                Priority::Offline => {
                    for (field, set) in [("input", &p.input), ("output", &p.output)] {
                        if set.is_none() {
                            return Err(LoadError::invalid(
                                path,
                                at(&["pipelines", &idx]),
                                &key(field),
                                format!("an offline pipeline needs `{field}` (a JSONL file)"),
                            ));
                        }
                    }
                    for (field, file) in [("output", &p.output), ("stats_json", &p.stats_json)] {
                        let Some(file) = file.as_deref() else {
                            continue;
                        };
                        if written.contains(&file) {
                            return Err(bad(
                                field,
                                format!(
                                    "`{file}` is written by an earlier offline pipeline too; each run writes its own files"
                                ),
                            ));
                        }
                        written.push(file);
                    }
                    if !p.share.is_finite() || p.share <= 0.0 || p.share > 1.0 {
                        return Err(bad("share", format!("value {} must be in (0, 1]", p.share)));
                    }
                }
            }
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        Deployment::from_yaml(yaml, "d.yaml")
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let head = "mars_deployment: 1\npipelines:\n  - plan: a.plan.yaml\n    priority: online\n";
        let cases = [
            (
                format!("{head}  - plan: b.plan.yaml\n    priority: offline\n    input: i.jsonl\n    output: o.jsonl\n    share: 1.5\n"),
                "d.yaml:9: `pipelines[1].share`: value 1.5 must be in (0, 1]",
            ),
            (
                format!("{head}  - plan: b.plan.yaml\n    priority: offline\n    input: i.jsonl\n"),
                "d.yaml:5: `pipelines[1].output`: an offline pipeline needs `output` (a JSONL file)",
            ),
            (
                format!("{head}    input: i.jsonl\n"),
                "d.yaml:5: `pipelines[0].input`: `input` is for offline pipelines; an online one is served",
            ),
            (
                "mars_deployment: 2\npipelines: []\n".to_string(),
                "d.yaml:1: `mars_deployment`: unsupported deployment version 2 (this Mars reads 1)",
            ),
            (
                "mars_deployment: 1\ncores: 0\npipelines: []\n".to_string(),
                "d.yaml:2: `cores`: value 0 must be positive",
            ),
            (
                "mars_deployment: 1\npipelines: []\n".to_string(),
                "d.yaml:2: `pipelines`: needs at least one pipeline",
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(err(&yaml), want, "{yaml}");
        }
        let two = format!(
            "{head}  - {{plan: b, priority: offline, input: i, output: o}}\n  - {{plan: c, priority: offline, input: i, output: o}}\n"
        );
        assert!(
            err(&two).contains(
                "`pipelines[2].output`: `o` is written by an earlier offline pipeline too"
            ),
            "{}",
            err(&two)
        );
        // Several offline pipelines, each with its own files, load.
        let several = format!(
            "{head}  - {{plan: b, priority: offline, input: i, output: o, share: 0.25}}\n  - {{plan: b, priority: offline, input: j, output: p}}\n"
        );
        let d = Deployment::from_yaml(&several, "d.yaml").expect("loads");
        assert_eq!(d.pipelines.len(), 3);
        assert_eq!(d.pipelines[1].share, 0.25);
        let unknown = format!("{head}    replicas: 3\n");
        assert!(
            err(&unknown).contains("unknown field `replicas`"),
            "{}",
            err(&unknown)
        );
        let prio = "mars_deployment: 1\npipelines:\n  - {plan: a, priority: batch}\n";
        assert!(
            err(prio).contains("unknown variant `batch`"),
            "{}",
            err(prio)
        );
    }

    #[test]
    fn defaults_and_round_trip() {
        let yaml = "mars_deployment: 1\npipelines:\n  - {plan: a.plan.yaml, priority: online}\n  - {plan: b.plan.yaml, priority: offline, input: i.jsonl, output: o.jsonl}\n";
        let d = Deployment::from_yaml(yaml, "d.yaml").expect("loads");
        assert_eq!(d.cores, None);
        assert_eq!((d.pipelines[1].share, d.pipelines[1].resume), (1.0, false));
        assert_eq!(d.pipelines[0].priority, Priority::Online);
        let again = serde_yaml::to_string(&d).expect("serializes");
        assert_eq!(
            Deployment::from_yaml(&again, "again.yaml").expect("loads"),
            d
        );
    }
}
