//! The one node trait every executor implements, and the registry that builds nodes from plan
//! entries. A node sees a batch in and returns one result per item; it knows nothing of timely.

use std::collections::BTreeMap;
use std::sync::Arc;

use mars_plan::PlanNode;

use crate::value::{NodeError, Value};

/// The arguments of one call, in port order (for a map node: one element plus the broadcast
/// arguments).
pub type Item = Vec<Value>;

/// One output value per output port.
pub type Outputs = Vec<Value>;

/// A node replica. `run_batch` returns exactly one result per item, in item order; an `Err`
/// fails that item only.
pub trait Node: Send {
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>>;
}

/// What a factory gets to build one replica of a node.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// The plan's entry for the node (params, types, config, device).
    pub node: PlanNode,
    /// Which replica this is (0-based).
    pub replica: u32,
    /// The folder that relative paths in the plan (weights, exec commands) resolve against.
    pub base_dir: std::path::PathBuf,
}

/// Builds one replica of a node kind.
pub type NodeFactory = Arc<dyn Fn(&NodeContext) -> Result<Box<dyn Node>, NodeError> + Send + Sync>;

/// The node implementations a run can use: builtins by id, models by architecture.
/// Passed explicitly: there is no global registry.
#[derive(Clone, Default)]
pub struct Registry {
    builtins: BTreeMap<String, NodeFactory>,
    models: BTreeMap<String, NodeFactory>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Register a builtin fn implementation under its id (the string after `builtin` in a
    /// declaration, e.g. `bench.delay`).
    pub fn builtin(&mut self, id: &str, factory: NodeFactory) -> &mut Registry {
        self.builtins.insert(id.to_string(), factory);
        self
    }

    /// Register a model architecture (e.g. `transformer_lm`).
    pub fn model(&mut self, arch: &str, factory: NodeFactory) -> &mut Registry {
        self.models.insert(arch.to_string(), factory);
        self
    }

    pub fn builtin_factory(&self, id: &str) -> Option<&NodeFactory> {
        self.builtins.get(id)
    }

    pub fn model_factory(&self, arch: &str) -> Option<&NodeFactory> {
        self.models.get(arch)
    }

    pub fn builtin_ids(&self) -> impl Iterator<Item = &str> {
        self.builtins.keys().map(String::as_str)
    }

    /// Build one replica of a plan node, whatever its implementation.
    pub fn instantiate(&self, ctx: &NodeContext) -> Result<Box<dyn Node>, NodeError> {
        let imp = &ctx.node.implementation;
        if let Some(id) = &imp.builtin {
            let f = self.builtin_factory(id).ok_or_else(|| {
                NodeError::new(format!("node `{}`: no builtin implementation `{id}` in this runtime", ctx.node.id))
            })?;
            f(ctx)
        } else if let Some(command) = &imp.exec {
            crate::exec::spawn_with_images(ctx, command, crate::run::images::from_registry(self, &ctx.base_dir))
        } else if let Some(model) = &imp.model {
            let f = self.model_factory(&model.arch).ok_or_else(|| {
                NodeError::new(format!("node `{}`: no model architecture `{}` in this runtime", ctx.node.id, model.arch))
            })?;
            f(ctx)
        } else {
            Err(NodeError::new(format!("node `{}` names no implementation", ctx.node.id)))
        }
    }
}

/// A node from a closure over one item, for simple stateless builtins.
pub fn per_item<F>(f: F) -> Box<dyn Node>
where
    F: FnMut(Item) -> Result<Outputs, NodeError> + Send + 'static,
{
    struct PerItem<F>(F);
    impl<F> Node for PerItem<F>
    where
        F: FnMut(Item) -> Result<Outputs, NodeError> + Send,
    {
        fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
            batch.into_iter().map(&mut self.0).collect()
        }
    }
    Box::new(PerItem(f))
}
