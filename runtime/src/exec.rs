//! Exec nodes: long-lived child processes speaking the exec protocol (language.md §5).

use crate::node::{Node, NodeContext};
use crate::value::NodeError;

/// Start one replica of an exec node running `command` in `ctx.base_dir`.
pub fn spawn(_ctx: &NodeContext, command: &str) -> Result<Box<dyn Node>, NodeError> {
    Err(NodeError::new(format!("exec nodes are not built yet (command `{command}`)")))
}
