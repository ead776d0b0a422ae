//! A plan lowered to a timely dataflow, one operator per plan node, named after the node id.
//!
//! Timestamps are admission rounds: the source admits a group of requests under one `u64`
//! epoch and advances it, so the frontier tells which rounds are complete and timely moves many
//! requests per message. Every record carries its request id (the input line number).
//!
//! Streams are numbered by their producer: 0 is the request source, `i + 1` the plan's node `i`.
//! A node with several producers reads their concatenation and joins by request id; a failed
//! record from any producer fails the request at once and travels on unchanged, so every
//! operator emits exactly one record per request it receives and the sink writes exactly one
//! line per request.
//!
//! Placement: each node operator's records are exchanged to the worker that owns the node's
//! replicas (node index modulo the worker count); the source and the sink live on worker 0,
//! which alone talks to the input and output threads.
//!
//! Executors: a node the plan lists under `inline` runs on its worker's thread inside its
//! operator ([`inline`]); every other node hands its batches to replica threads ([`stage`]).

pub mod inline;
pub mod mapping;
pub mod sink;
pub mod slab;
pub mod source;
pub mod stage;

use std::collections::HashMap;

use mars_plan::{BatchSpec, DataType, Plan};
use serde::{Deserialize, Serialize};

use crate::codec::{self, EdgeContext};
use crate::value::Value;

/// Why a request failed: the node that failed it and its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub node: String,
    pub message: String,
}

impl Failure {
    pub fn new(node: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            node: node.into(),
            message: message.into(),
        }
    }
}

/// A producer's output for one request: all its output ports, or why the request failed.
pub type Body = Result<Vec<Value>, Failure>;

/// One record on a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rec {
    /// The request id (input line number, from 1).
    pub id: u64,
    /// The producer: 0 for the source, `i + 1` for node `i`.
    pub src: u32,
    pub body: Body,
}

/// Where one argument's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgSpec {
    /// Port `port` of the producer in join slot `slot`.
    From { slot: usize, port: usize },
    /// A literal, decoded once.
    Literal(Value),
}

/// Where a node's function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executor {
    /// On the timely worker thread, inside the node's operator: no replica thread, no hand-off.
    Inline,
    /// On the node's replica threads (or its exec processes).
    Pool,
}

/// A plan node as its operator needs it.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub executor: Executor,
    pub id: String,
    /// Producers this node joins, in slot order.
    pub deps: Vec<u32>,
    pub args: Vec<ArgSpec>,
    pub map_over: Option<usize>,
    pub out_ports: usize,
    pub batch: BatchSpec,
    pub replicas: u32,
}

/// A pipeline input as the reader needs it.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub ty: DataType,
    pub default: Option<Value>,
}

/// A pipeline output as the sink needs it.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub name: String,
    pub arg: ArgSpec,
}

/// Everything the dataflow needs from a plan, checked once before the run starts.
#[derive(Debug, Clone)]
pub struct Lowered {
    pub pipeline: String,
    pub inputs: Vec<InputSpec>,
    pub nodes: Vec<NodeSpec>,
    /// Producers the sink joins.
    pub sink_deps: Vec<u32>,
    pub outputs: Vec<OutputSpec>,
}

fn parse_type(s: &str, what: &str) -> Result<DataType, String> {
    s.parse::<DataType>()
        .map_err(|e| format!("{what}: bad type `{s}`: {e}"))
}

impl Lowered {
    /// Check a plan's wiring and decode its literals.
    pub fn from_plan(plan: &Plan, cx: &EdgeContext) -> Result<Lowered, String> {
        let mut inputs = Vec::new();
        for input in &plan.inputs {
            let ty = parse_type(&input.ty, &format!("input `{}`", input.name))?;
            let default = match &input.default {
                Some(j) => Some(
                    codec::decode(j, &ty, cx)
                        .map_err(|e| format!("input `{}`: bad default: {e}", input.name))?,
                ),
                None => None,
            };
            inputs.push(InputSpec {
                name: input.name.clone(),
                ty,
                default,
            });
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut nodes: Vec<NodeSpec> = Vec::new();
        for (i, node) in plan.nodes.iter().enumerate() {
            let what = format!("node `{}`", node.id);
            if node.replicas == 0 {
                return Err(format!(
                    "{what}: replicas is 0; a node needs at least one replica"
                ));
            }
            if node.args.len() != node.in_types.len() {
                return Err(format!(
                    "{what}: {} arguments for {} input types",
                    node.args.len(),
                    node.in_types.len()
                ));
            }
            if let Some(k) = node.map_over {
                if k >= node.args.len() {
                    return Err(format!("{what}: map_over {k} is not an argument index"));
                }
            }
            let mut deps = Vec::new();
            let mut args = Vec::new();
            for (k, arg) in node.args.iter().enumerate() {
                let mut ty = parse_type(&node.in_types[k], &what)?;
                if node.map_over == Some(k) {
                    ty = DataType::List(Box::new(ty));
                }
                args.push(resolve_arg(
                    arg, &ty, &inputs, &index, &nodes, plan, &mut deps, cx, &what,
                )?);
            }
            let executor = if plan.inline.iter().any(|id| id == &node.id) {
                if node.replicas != 1 {
                    return Err(format!(
                        "{what}: it runs inline but has {} replicas; an inline node has one",
                        node.replicas
                    ));
                }
                Executor::Inline
            } else {
                Executor::Pool
            };
            if deps.is_empty() {
                // A node of literals alone still runs once per request: it follows the source.
                deps.push(0);
            }
            nodes.push(NodeSpec {
                executor,
                id: node.id.clone(),
                deps,
                args,
                map_over: node.map_over,
                out_ports: node.out_types.len(),
                batch: node.batch.clone(),
                replicas: node.replicas,
            });
            if index.insert(&node.id, i).is_some() {
                return Err(format!("{what}: two nodes have this id"));
            }
        }
        let mut sink_deps = Vec::new();
        let mut outputs = Vec::new();
        for out in &plan.outputs {
            let what = format!("output `{}`", out.name);
            let ty = parse_type(&out.ty, &what)?;
            let arg = resolve_arg(
                &out.from,
                &ty,
                &inputs,
                &index,
                &nodes,
                plan,
                &mut sink_deps,
                cx,
                &what,
            )?;
            outputs.push(OutputSpec {
                name: out.name.clone(),
                arg,
            });
        }
        if sink_deps.is_empty() {
            sink_deps.push(0);
        }
        if let Some(id) = plan.inline.iter().find(|id| plan.node(id).is_none()) {
            return Err(format!(
                "`inline` names `{id}`, which is not a node of the plan"
            ));
        }
        Ok(Lowered {
            pipeline: plan.pipeline.clone(),
            inputs,
            nodes,
            sink_deps,
            outputs,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn resolve_arg(
    arg: &mars_plan::Arg,
    ty: &DataType,
    inputs: &[InputSpec],
    index: &HashMap<&str, usize>,
    nodes: &[NodeSpec],
    plan: &Plan,
    deps: &mut Vec<u32>,
    cx: &EdgeContext,
    what: &str,
) -> Result<ArgSpec, String> {
    let mut slot_of = |src: u32| match deps.iter().position(|&d| d == src) {
        Some(s) => s,
        None => {
            deps.push(src);
            deps.len() - 1
        }
    };
    match (&arg.input, &arg.node, &arg.value) {
        (Some(name), None, None) => {
            let port = inputs
                .iter()
                .position(|i| &i.name == name)
                .ok_or_else(|| format!("{what}: no pipeline input `{name}`"))?;
            Ok(ArgSpec::From {
                slot: slot_of(0),
                port,
            })
        }
        (None, Some(id), None) => {
            let &i = index
                .get(id.as_str())
                .ok_or_else(|| format!("{what}: node `{id}` is not an earlier node of the plan"))?;
            let ports = plan.nodes[i].out_types.len();
            if arg.port >= ports || i >= nodes.len() {
                return Err(format!(
                    "{what}: node `{id}` has no output port {}",
                    arg.port
                ));
            }
            Ok(ArgSpec::From {
                slot: slot_of(i as u32 + 1),
                port: arg.port,
            })
        }
        (None, None, Some(v)) => Ok(ArgSpec::Literal(
            codec::decode(v, ty, cx).map_err(|e| format!("{what}: bad literal: {e}"))?,
        )),
        _ => Err(format!(
            "{what}: an argument must name exactly one of `input`, `node` or `value`"
        )),
    }
}

/// The value of `arg` for a request whose producers gave `bodies` (all `Ok`).
pub fn arg_value(arg: &ArgSpec, bodies: &[Body]) -> Value {
    match arg {
        ArgSpec::Literal(v) => v.clone(),
        ArgSpec::From { slot, port } => match &bodies[*slot] {
            Ok(values) => values
                .get(*port)
                .cloned()
                .unwrap_or(Value::Json(serde_json::Value::Null)),
            Err(_) => Value::Json(serde_json::Value::Null),
        },
    }
}

/// The first failure among a request's producer bodies, in slot order.
pub fn first_failure(bodies: &[Body]) -> Option<&Failure> {
    bodies.iter().find_map(|b| b.as_ref().err())
}

/// Joins the records of several producers by request id.
pub struct Joiner {
    deps: Vec<u32>,
    /// Per waiting request: how many producers have spoken, and their bodies by slot.
    partial: slab::SeqSlab<(usize, Vec<Option<Body>>)>,
}

impl Joiner {
    pub fn new(deps: Vec<u32>) -> Joiner {
        Joiner {
            deps,
            partial: slab::SeqSlab::new(),
        }
    }

    /// Take one record; when it completes its request, the request's bodies in slot order.
    pub fn offer(&mut self, rec: Rec) -> Option<(u64, Vec<Body>)> {
        if self.deps.len() == 1 {
            return Some((rec.id, vec![rec.body]));
        }
        let slot = self.deps.iter().position(|&d| d == rec.src)?;
        let n = self.deps.len();
        let entry = self
            .partial
            .get_or_insert_with(rec.id, || (0, vec![None; n]));
        if entry.1[slot].is_none() {
            entry.0 += 1;
        }
        entry.1[slot] = Some(rec.body);
        if entry.0 < n {
            return None;
        }
        let (_, bodies) = self.partial.remove(rec.id)?;
        Some((rec.id, bodies.into_iter().flatten().collect()))
    }

    /// Requests waiting for some producer.
    pub fn waiting(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, src: u32, v: i64) -> Rec {
        Rec {
            id,
            src,
            body: Ok(vec![Value::Int(v)]),
        }
    }

    #[test]
    fn joiner_completes_a_request_when_every_producer_has_spoken() {
        let mut j = Joiner::new(vec![2, 0]);
        assert_eq!(j.offer(rec(1, 0, 10)), None);
        assert_eq!(j.offer(rec(2, 2, 20)), None);
        assert_eq!(j.waiting(), 2);
        let (id, bodies) = j.offer(rec(1, 2, 11)).expect("complete");
        assert_eq!(
            (id, bodies),
            (1, vec![Ok(vec![Value::Int(11)]), Ok(vec![Value::Int(10)])])
        );
        assert_eq!(j.waiting(), 1);
        let mut single = Joiner::new(vec![3]);
        assert!(single.offer(rec(5, 3, 0)).is_some());
    }

    #[test]
    fn first_failure_is_in_slot_order() {
        let bodies = vec![
            Ok(vec![]),
            Err(Failure::new("b", "x")),
            Err(Failure::new("a", "y")),
        ];
        assert_eq!(first_failure(&bodies).map(|f| f.node.as_str()), Some("b"));
    }
}
