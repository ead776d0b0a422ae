//! The operator of a node that runs inline: its function is called on the timely worker's own
//! thread, inside the operator, on the records of each arriving container, and each request's
//! record leaves in the same activation under the capability it came with. No replica thread,
//! no channel, no capability held across activations: the hop costs what the node costs plus
//! tens of nanoseconds.
//!
//! The planner runs a node inline only when it is cheap (microseconds per item): a slow inline
//! node would stall every other operator of its worker. Batching: under `none` the function
//! sees one item at a time; otherwise it sees up to `max` items of what has arrived, without
//! waiting for more (an inline batch never waits to fill).

use std::sync::Arc;
use std::time::Instant;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use super::mapping;
use super::{arg_value, first_failure, ArgSpec, Body, Failure, Joiner, NodeSpec, Rec};
use crate::batching::Batcher;
use crate::node::{Item, Node, Outputs};
use crate::replicas::run_guarded;
use crate::stats::NodeMeter;
use crate::value::NodeError;

/// What became of one request of a container.
enum Req {
    /// Its record is decided without running the node (a failed producer, a bad map list, an
    /// empty list).
    Done(Body),
    /// Its item is `items[i]`.
    One(usize),
    /// A map request: its elements are `items[start..start + len]`.
    Map(usize, usize),
}

/// The inline node's state.
pub struct InlineNode {
    spec: NodeSpec,
    me: u32,
    joiner: Joiner,
    identity_args: bool,
    /// `None` on the workers that do not own the node.
    node: Option<Box<dyn Node>>,
    max: usize,
    meter: Arc<NodeMeter>,
    reqs: Vec<(u64, Req)>,
}

impl InlineNode {
    pub fn new(
        spec: NodeSpec,
        me: u32,
        node: Option<Box<dyn Node>>,
        meter: Arc<NodeMeter>,
    ) -> InlineNode {
        let identity_args = identity_args(&spec);
        InlineNode {
            joiner: Joiner::new(spec.deps.clone()),
            max: Batcher::new(&spec.batch).max,
            identity_args,
            spec,
            me,
            node,
            meter,
            reqs: Vec::new(),
        }
    }

    /// Turn the records of `recs` (all of one timestamp) into this node's records, in place.
    pub fn process(&mut self, recs: &mut Vec<Rec>) {
        let mut items: Vec<Item> = Vec::with_capacity(recs.len());
        let mut reqs = std::mem::take(&mut self.reqs);
        for rec in recs.drain(..) {
            if self.spec.deps.len() == 1 {
                let id = rec.id;
                let req = match rec.body {
                    Err(f) => Req::Done(Err(f)),
                    Ok(values) if self.identity_args && values.len() == self.spec.args.len() => {
                        self.queue(&mut items, values)
                    }
                    Ok(values) => self.admit(&mut items, vec![Ok(values)]),
                };
                reqs.push((id, req));
            } else if let Some((id, bodies)) = self.joiner.offer(rec) {
                let req = self.admit(&mut items, bodies);
                reqs.push((id, req));
            }
        }
        let mut results = self.run(items).into_iter().map(Some).collect::<Vec<_>>();
        for (id, req) in reqs.drain(..) {
            let body = match req {
                Req::Done(body) => body,
                Req::One(i) => match results[i].take() {
                    Some(Ok(outs)) => Ok(outs),
                    Some(Err(e)) => Err(Failure::new(&self.spec.id, e.message)),
                    None => Err(Failure::new(&self.spec.id, "lost result (a runtime bug)")),
                },
                Req::Map(start, len) => self.gather(&mut results[start..start + len]),
            };
            recs.push(Rec {
                id,
                src: self.me,
                body,
            });
        }
        self.reqs = reqs;
    }

    /// A request whose producers have all spoken.
    fn admit(&self, items: &mut Vec<Item>, bodies: Vec<Body>) -> Req {
        if let Some(f) = first_failure(&bodies) {
            return Req::Done(Err(f.clone()));
        }
        let item: Item = self
            .spec
            .args
            .iter()
            .map(|a| arg_value(a, &bodies))
            .collect();
        self.queue(items, item)
    }

    /// Queue a request's item, or its elements' items for a map node.
    fn queue(&self, items: &mut Vec<Item>, item: Item) -> Req {
        let Some(k) = self.spec.map_over else {
            items.push(item);
            return Req::One(items.len() - 1);
        };
        match mapping::expand(item, k) {
            Err(msg) => Req::Done(Err(Failure::new(&self.spec.id, msg))),
            Ok(elems) if elems.is_empty() => {
                Req::Done(Ok(mapping::assemble(Vec::new(), self.spec.out_ports)))
            }
            Ok(elems) => {
                let start = items.len();
                let len = elems.len();
                items.extend(elems);
                Req::Map(start, len)
            }
        }
    }

    /// A map request's record from its elements' results: the first failed element fails it.
    fn gather(&self, results: &mut [Option<Result<Outputs, NodeError>>]) -> Body {
        let mut outs = Vec::with_capacity(results.len());
        for (e, r) in results.iter_mut().enumerate() {
            match r.take() {
                Some(Ok(o)) => outs.push(o),
                Some(Err(err)) => {
                    let message = format!("element {e}: {}", err.message);
                    return Err(Failure::new(&self.spec.id, message));
                }
                None => return Err(Failure::new(&self.spec.id, "lost result (a runtime bug)")),
            }
        }
        Ok(mapping::assemble(outs, self.spec.out_ports))
    }

    /// Run the node over `items`: one at a time under `none`, else in batches of up to `max`.
    fn run(&mut self, items: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        let n = items.len();
        if n == 0 {
            return Vec::new();
        }
        let Some(node) = self.node.as_mut() else {
            let e = NodeError::new("no replica of this node on this worker");
            return vec![Err(e); n];
        };
        let start = Instant::now();
        let each = self.meter.keeps_spans();
        let mut results = Vec::with_capacity(n);
        let mut batches = 0;
        let mut items = items.into_iter();
        loop {
            let batch: Vec<Item> = items.by_ref().take(self.max).collect();
            if batch.is_empty() {
                break;
            }
            batches += 1;
            let (t, size, before) = (Instant::now(), batch.len(), results.len());
            results.extend(run_guarded(node.as_mut(), batch));
            if each {
                let failed = results[before..].iter().filter(|r| r.is_err()).count();
                self.meter.batch(0, t, Instant::now(), size, failed);
            }
        }
        let ports = self.spec.out_ports;
        let mut errors = 0;
        for r in &mut results {
            if let Ok(outs) = r {
                if outs.len() != ports {
                    let msg = format!("node returned {} outputs, expected {ports}", outs.len());
                    *r = Err(NodeError::new(msg));
                }
            }
            errors += usize::from(r.is_err());
        }
        if !each {
            self.meter
                .batches(0, start, Instant::now(), batches, n, errors);
        }
        results
    }
}

/// Whether the node takes its only producer's ports 0, 1, … in order (a chain): the producer's
/// values become the item without copying.
pub fn identity_args(spec: &NodeSpec) -> bool {
    spec.deps.len() == 1
        && spec
            .args
            .iter()
            .enumerate()
            .all(|(k, a)| *a == ArgSpec::From { slot: 0, port: k })
}

/// Build the inline operator of node `spec` (stream number `me`), placed on worker `owner`;
/// `node` is its one replica on the owning worker and `None` elsewhere.
pub fn inline_stage<'s>(
    stream: Stream<'s, u64, Vec<Rec>>,
    spec: NodeSpec,
    me: u32,
    owner: usize,
    node: Option<Box<dyn Node>>,
    meter: Arc<NodeMeter>,
) -> Stream<'s, u64, Vec<Rec>> {
    let state = InlineNode::new(spec, me, node, meter);
    if stream.scope().peers() == 1 {
        build(stream, Pipeline, state)
    } else {
        let pact = Exchange::new(move |_: &Rec| owner as u64);
        build(stream, pact, state)
    }
}

fn build<'s, P>(
    stream: Stream<'s, u64, Vec<Rec>>,
    pact: P,
    mut state: InlineNode,
) -> Stream<'s, u64, Vec<Rec>>
where
    P: ParallelizationContract<u64, Vec<Rec>>,
{
    let name = state.spec.id.clone();
    stream.unary::<CapacityContainerBuilder<Vec<Rec>>, _, _, _>(pact, &name, move |_cap, _info| {
        move |input, output| {
            input.for_each(|cap, data| {
                state.process(data);
                if !data.is_empty() {
                    output.session(&cap).give_container(data);
                }
            });
        }
    })
}
