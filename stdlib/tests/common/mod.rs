//! What the stdlib's integration tests share: the plan context of a `transformer_lm` node.
// Each test file uses a part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use mars_runtime::NodeContext;

/// The context of one replica of a `transformer_lm` node with `config` (the model block's keys
/// as JSON), whose relative paths resolve against `base_dir`.
pub fn lm_context_in(config: serde_json::Value, base_dir: &Path) -> NodeContext {
    let mut n = mars_stdlib::params::plan_node("translator", &[]);
    n.implementation.builtin = None;
    n.implementation.model = Some(mars_plan::ModelImpl {
        arch: "transformer_lm".into(),
        config: serde_json::from_value(config).expect("config object"),
    });
    NodeContext {
        node: n,
        replica: 0,
        base_dir: base_dir.to_path_buf(),
    }
}

/// Like [`lm_context_in`], with paths relative to `pipelines/` (where the shipped translator's
/// weights are).
pub fn lm_context(config: serde_json::Value) -> NodeContext {
    lm_context_in(
        config,
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pipelines"),
    )
}
