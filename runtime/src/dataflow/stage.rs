//! The operator of one plan node: joins its producers' records by request id, queues the
//! request's item (or, for a `map` node, one item per list element), forms batches by the
//! node's policy, and hands them to the node's replica threads without blocking the worker (a
//! generating node under `continuous` takes items one by one into its running batch, and
//! answers each as it finishes: see [`crate::continuous`]).
//! It holds a capability for each timestamp with queued or running items and emits each
//! request's record under it when the last of its items returns; replicas wake the operator
//! when a batch is done, and a timer wakes it when a partial batch's wait runs out.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::inline::identity_args;
use super::mapping;
use super::slab::SeqSlab;
use super::{arg_value, first_failure, Body, Failure, Joiner, NodeSpec, Rec};
use crate::batching::{Batcher, Decision};
use crate::node::{Item, Node, Outputs};
use crate::replicas::{Done, Job, Key, Pool};
use crate::stats::NodeMeter;
use crate::value::NodeError;
use mars_plan::BatchPolicy;

/// The most items of a `none` node handed to a replica at once.
const CHUNK: usize = 256;

struct Work {
    key: Key,
    item: Item,
    since: Instant,
}

/// A map request whose elements are queued or running.
struct Pending {
    time: u64,
    left: usize,
    outs: Vec<Option<Outputs>>,
    /// The failed element with the lowest index, and why.
    failure: Option<(u32, Failure)>,
}

struct Stage {
    spec: NodeSpec,
    me: u32,
    joiner: Joiner,
    /// The node takes its only producer's ports 0, 1, … in order (a chain): the producer's
    /// values become the item without copying.
    identity_args: bool,
    queue: VecDeque<Work>,
    pending: SeqSlab<Pending>,
    /// When the records being admitted arrived (read once per activation).
    now: Instant,
    caps: BTreeMap<u64, (Capability<u64>, usize)>,
    /// Records ready to leave, with their timestamps.
    emits: Vec<(u64, Rec)>,
    batcher: Batcher,
    pool: Option<Pool>,
    /// Items ever queued and ever answered (an elastic node's arrivals and completions,
    /// SPEC 10.2).
    arrived: u64,
    answered: u64,
}

impl Stage {
    /// Hold the capability of `time` for `n` more records.
    fn hold(&mut self, time: u64, n: usize, cap: impl FnOnce() -> Capability<u64>) {
        if n > 0 {
            self.caps.entry(time).or_insert_with(|| (cap(), 0)).1 += n;
        }
    }

    fn finish(&mut self, id: u64, time: u64, body: Body) {
        self.emits.push((
            time,
            Rec {
                id,
                src: self.me,
                body,
            },
        ));
    }

    /// A record of the node's only producer.
    fn admit_one(&mut self, id: u64, time: u64, body: Body) {
        match body {
            Err(f) => self.finish(id, time, Err(f)),
            Ok(values) if self.identity_args && values.len() == self.spec.args.len() => {
                self.enqueue(id, time, values)
            }
            Ok(values) => self.admit(id, time, vec![Ok(values)]),
        }
    }

    /// A request whose producers have all spoken.
    fn admit(&mut self, id: u64, time: u64, bodies: Vec<Body>) {
        if let Some(f) = first_failure(&bodies) {
            let f = f.clone();
            return self.finish(id, time, Err(f));
        }
        let item: Item = self
            .spec
            .args
            .iter()
            .map(|a| arg_value(a, &bodies))
            .collect();
        drop(bodies);
        self.enqueue(id, time, item);
    }

    /// Queue a request's item, or one item per element for a map node.
    fn enqueue(&mut self, id: u64, time: u64, item: Item) {
        let now = self.now;
        let Some(k) = self.spec.map_over else {
            self.arrived += 1;
            self.queue.push_back(Work {
                key: (id, 0, time),
                item,
                since: now,
            });
            return;
        };
        let elems = match mapping::expand(item, k) {
            Ok(elems) => elems,
            Err(msg) => return self.finish(id, time, Err(Failure::new(&self.spec.id, msg))),
        };
        if elems.is_empty() {
            let empty = mapping::assemble(Vec::new(), self.spec.out_ports);
            return self.finish(id, time, Ok(empty));
        }
        let n = elems.len();
        self.arrived += n as u64;
        self.pending.insert(
            id,
            Pending {
                time,
                left: n,
                outs: vec![None; n],
                failure: None,
            },
        );
        for (e, it) in elems.into_iter().enumerate() {
            self.queue.push_back(Work {
                key: (id, e as u32, time),
                item: it,
                since: now,
            });
        }
    }

    fn completed(&mut self, done: Done) {
        self.answered += done.keys.len() as u64;
        for ((id, elem, time), result) in done.keys.into_iter().zip(done.results) {
            let result = result.and_then(|outs| {
                if outs.len() == self.spec.out_ports {
                    Ok(outs)
                } else {
                    Err(NodeError::new(format!(
                        "node returned {} outputs, expected {}",
                        outs.len(),
                        self.spec.out_ports
                    )))
                }
            });
            if self.spec.map_over.is_none() {
                let body = result.map_err(|e| Failure::new(&self.spec.id, e.message));
                self.finish(id, time, body);
                continue;
            }
            let Some(p) = self.pending.get_mut(id) else {
                continue;
            };
            match result {
                Ok(outs) => p.outs[elem as usize] = Some(outs),
                Err(e) => {
                    if p.failure.as_ref().is_none_or(|(first, _)| elem < *first) {
                        let message = format!("element {elem}: {}", e.message);
                        p.failure = Some((elem, Failure::new(&self.spec.id, message)));
                    }
                }
            }
            p.left -= 1;
            if p.left == 0 {
                let p = self.pending.remove(id).expect("present above");
                let body = match p.failure {
                    Some((_, f)) => Err(f),
                    None => Ok(mapping::assemble(
                        p.outs.into_iter().flatten(),
                        self.spec.out_ports,
                    )),
                };
                self.finish(id, p.time, body);
            }
        }
    }

    /// Hand batches to free replicas; `Some(wait)` when a partial batch should be looked at
    /// again later.
    fn dispatch(&mut self, draining: bool) -> Option<std::time::Duration> {
        let Some(pool) = self.pool.as_mut() else {
            // No replicas on this worker: placement sends this node's records elsewhere, so
            // anything here is a wiring bug; fail it rather than hold it forever.
            let stranded: Vec<Work> = self.queue.drain(..).collect();
            for w in stranded {
                let e = NodeError::new("no replica of this node on this worker");
                self.completed(Done {
                    keys: vec![w.key],
                    results: vec![Err(e)],
                });
            }
            return None;
        };
        while pool.has_free_replica() {
            let waited = self
                .queue
                .front()
                .map(|w| w.since.elapsed())
                .unwrap_or_default();
            match self.batcher.decide(self.queue.len(), waited, draining) {
                Decision::Idle => return None,
                Decision::WaitFor(d) => return Some(d),
                Decision::Dispatch(n) => {
                    let n = if self.batcher.policy == BatchPolicy::None
                        && pool.continuous().is_none()
                    {
                        // One item at a time for the node, but a chunk per hand-off: the
                        // queue shared out over the free replicas, a chunk holding about a
                        // millisecond of work at most.
                        pool.chunk(self.queue.len(), CHUNK)
                    } else {
                        pool.admissible(n)
                    };
                    let mut keys = Vec::with_capacity(n);
                    let mut items = Vec::with_capacity(n);
                    for w in self.queue.drain(..n) {
                        keys.push(w.key);
                        items.push(w.item);
                    }
                    pool.submit(Job { keys, items });
                }
            }
        }
        None
    }

    /// Send the records that are ready, each under its timestamp's capability, and release
    /// the capabilities no request needs any more.
    fn flush(
        &mut self,
        output: &mut timely::dataflow::operators::generic::OutputBuilderSession<
            '_,
            u64,
            CapacityContainerBuilder<Vec<Rec>>,
        >,
    ) {
        if self.emits.is_empty() {
            return;
        }
        let mut emits = std::mem::take(&mut self.emits);
        emits.sort_by_key(|e| e.0);
        let mut it = emits.into_iter().peekable();
        while let Some((time, rec)) = it.next() {
            let (cap, _) = self
                .caps
                .get(&time)
                .expect("a record's time is held until it leaves");
            let mut session = output.session(cap);
            session.give(rec);
            let mut released = 1;
            while let Some((_, rec)) = it.next_if(|e| e.0 == time) {
                session.give(rec);
                released += 1;
            }
            drop(session);
            let entry = self.caps.get_mut(&time).expect("held above");
            entry.1 -= released;
            if entry.1 == 0 {
                self.caps.remove(&time);
            }
        }
    }
}

/// Build the operator of node `spec` (stream number `me`), placed on worker `owner`. `nodes`
/// holds its replicas on the owning worker and is `None` elsewhere. A node whose executor is
/// inline gets the operator of [`super::inline`] instead.
pub fn node_stage<'s>(
    stream: Stream<'s, u64, Vec<Rec>>,
    spec: NodeSpec,
    me: u32,
    owner: usize,
    nodes: Option<Vec<Box<dyn Node>>>,
    meter: Arc<NodeMeter>,
) -> Stream<'s, u64, Vec<Rec>> {
    if spec.executor == super::Executor::Inline {
        let node = nodes.and_then(|n| n.into_iter().next());
        return super::inline::inline_stage(stream, spec, me, owner, node, meter);
    }
    let scope = stream.scope();
    let name = spec.id.clone();
    let pact = Exchange::new(move |_: &Rec| owner as u64);
    stream.unary_frontier::<CapacityContainerBuilder<Vec<Rec>>, _, _, _>(
        pact,
        &name,
        move |_cap, info| {
            let timer = scope.activator_for(Rc::clone(&info.address));
            let batcher = Batcher::new(&spec.batch);
            let pool = nodes.map(|nodes| {
                let wake = scope.worker().sync_activator_for(info.address.to_vec());
                Pool::start(&spec.id, nodes, &batcher, meter, move || {
                    let _ = wake.activate();
                })
            });
            let identity_args = identity_args(&spec);
            let mut st = Stage {
                joiner: Joiner::new(spec.deps.clone()),
                batcher,
                identity_args,
                spec,
                me,
                queue: VecDeque::new(),
                pending: SeqSlab::new(),
                now: Instant::now(),
                caps: BTreeMap::new(),
                emits: Vec::new(),
                pool,
                arrived: 0,
                answered: 0,
            };
            move |(input, frontier), output| {
                st.now = Instant::now();
                input.for_each_stamp(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    let single = st.spec.deps.len() == 1;
                    let mut admitted = 0;
                    for container in data {
                        for rec in container.drain(..) {
                            if single {
                                admitted += 1;
                                st.admit_one(rec.id, time, rec.body);
                            } else if let Some((id, bodies)) = st.joiner.offer(rec) {
                                admitted += 1;
                                st.admit(id, time, bodies);
                            }
                        }
                    }
                    // Held before anything of this time is flushed, below.
                    st.hold(time, admitted, || cap.delayed(&time, 0));
                });
                if let Some(pool) = st.pool.as_mut() {
                    for done in pool.finished() {
                        st.completed(done);
                    }
                }
                let draining = frontier.frontier().is_empty();
                if let Some(wait) = st.dispatch(draining) {
                    timer.activate_after(wait);
                }
                if let Some(pool) = &st.pool {
                    pool.observe(st.arrived, st.answered);
                }
                st.flush(output);
            }
        },
    )
}
