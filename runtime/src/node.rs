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

    /// The step-level interface, for nodes that generate token by token (models with
    /// `generate = true`). The continuous-batching scheduler drives a node through it; a node
    /// without one runs whole batches through `run_batch` under every policy.
    fn generator(&mut self) -> Option<&mut dyn Generate> {
        None
    }
}

/// A sequence's handle inside one generating replica, chosen by the scheduler.
pub type SeqId = u64;

/// Each sequence's outcome of a prefill or a step, in the order asked.
pub type Outcomes = Vec<(SeqId, Step)>;

/// Where a sequence stands after a prefill or a decode step.
#[derive(Debug)]
pub enum Step {
    /// Still generating; `cached` is the number of tokens its KV cache now holds.
    Running { cached: usize },
    /// Finished (end token, `max_tokens`, or the position limit) or failed: its result.
    Done(Result<Outputs, NodeError>),
}

/// Step-level interface of a generating node. The scheduler admits items, prefills them
/// (possibly several at once), then advances any set of running sequences by one token per
/// call; sequences join and leave between steps. A sequence's output must not depend on which
/// other sequences share its steps (up to float rounding in batched matmuls).
pub trait Generate: Send {
    /// Take an item as sequence `seq` without computing anything: check and tokenize it.
    /// Returns the KV tokens its prefill will need (its prompt length), or an error that
    /// fails this item only.
    fn admit(&mut self, seq: SeqId, item: Item) -> Result<usize, NodeError>;

    /// Prefill these admitted (or preempted) sequences together; one outcome per id, in order.
    /// A preempted sequence is recomputed: prompt plus the tokens it had generated.
    fn prefill(&mut self, seqs: &[SeqId]) -> Vec<(SeqId, Step)>;

    /// Decode one token for each of these running sequences; one outcome per id, in order.
    /// A `Done` sequence is forgotten by the node.
    fn step(&mut self, seqs: &[SeqId]) -> Vec<(SeqId, Step)>;

    /// One scheduler iteration: prefill `prefill` (newly joining sequences) and step `step`
    /// (running sequences, disjoint from `prefill`) by one token; the outcomes of each, in
    /// order. The joining sequences take their first step at the next call. The default runs
    /// [`Generate::prefill`] then [`Generate::step`]; a node may instead run both in one
    /// forward pass (the joining prompts beside the running sequences' decode rows), which is
    /// what keeps joins from costing running sequences a pass of their own.
    fn prefill_and_step(&mut self, prefill: &[SeqId], step: &[SeqId]) -> (Outcomes, Outcomes) {
        let filled = self.prefill(prefill);
        (filled, self.step(step))
    }

    /// Drop a running sequence's KV cache but keep its tokens, so that a later `prefill`
    /// recomputes it. Returns the number of KV tokens freed.
    fn preempt(&mut self, seq: SeqId) -> usize;

    /// The most tokens (prompt plus generated) one sequence can hold: its KV need is bounded
    /// by this.
    fn max_sequence_tokens(&self) -> usize;

    /// Drop everything the node holds for `seq` (admitted, running or preempted): the
    /// scheduler failed it (its prompt exceeds the KV bound, it outgrew the bound alone, or a
    /// call that included it panicked). The default does nothing; a node that keeps
    /// per-sequence state should forget it here.
    fn forget(&mut self, _seq: SeqId) {}

    /// The replica's bound on KV tokens in flight (the sum of `cached` over its running
    /// sequences), when the node's config sets one. `None` (the default): the scheduler
    /// derives it as `max × max_sequence_tokens()`, which never preempts.
    fn kv_capacity(&self) -> Option<usize> {
        None
    }

    /// The text a running sequence has generated so far (its decoded output tokens), for
    /// streaming it to a client while the sequence runs. `None` (the default) when the node
    /// cannot say; the scheduler then streams only the final result.
    fn generated_text(&self, _seq: SeqId) -> Option<String> {
        None
    }
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
                NodeError::new(format!(
                    "node `{}`: no builtin implementation `{id}` in this runtime",
                    ctx.node.id
                ))
            })?;
            f(ctx)
        } else if let Some(command) = &imp.exec {
            crate::exec::spawn_with_images(
                ctx,
                command,
                crate::run::images::from_registry(self, &ctx.base_dir),
            )
        } else if let Some(model) = &imp.model {
            let f = self.model_factory(&model.arch).ok_or_else(|| {
                NodeError::new(format!(
                    "node `{}`: no model architecture `{}` in this runtime",
                    ctx.node.id, model.arch
                ))
            })?;
            f(ctx)
        } else {
            Err(NodeError::new(format!(
                "node `{}` names no implementation",
                ctx.node.id
            )))
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
