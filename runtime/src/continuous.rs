//! Continuous (iteration-level) batching: the loop a replica thread runs for a generating node
//! (one whose [`Node::generator`] is `Some`) under `@batch(continuous, max = N)`.
//!
//! The replica keeps a running batch of sequences and, one iteration at a time:
//!
//! 1. **takes arrivals** from the pool's job channel without blocking, while it holds fewer than
//!    `max` sequences (running plus waiting); it blocks on the channel only when it holds none.
//!    Each arrival is admitted at once ([`Generate::admit`]: checked and tokenized; a bad item
//!    fails alone) and waits in arrival order; a preempted sequence waits at the front.
//! 2. **makes room**: if the running sequences' next token would take the KV tokens in flight
//!    past the bound, it preempts the youngest running sequence (most recently admitted): its
//!    cache is dropped, it waits at the front of the queue and is recomputed (prompt plus
//!    generated tokens) when it joins again. A sequence that alone outgrows the bound fails.
//! 3. **chooses joins**: waiting sequences join, in order, while fewer than `max` run, while
//!    the prompt fits the KV bound beside the running sequences' next step (with room for its
//!    own first step), and while the prompts joining in this iteration total at most the
//!    prefill budget (one full-length sequence, `max_sequence_tokens`; the first always may).
//! 4. **prefills and steps** in one node call ([`Generate::prefill_and_step`]): the joining
//!    sequences are prefilled beside one decoded token for every running sequence, so a join
//!    costs the running sequences no pass of their own, and an iteration adds at most one
//!    budget of prompt tokens to their step (they are never starved). Joined sequences take
//!    their first step at the next iteration. A sequence that finishes leaves the batch; its
//!    result is sent at the end of the iteration as its own [`Done`] message, followed by one
//!    wake-up of the operator.
//!
//! In a served run (a [`crate::watch::Watch`] on the node's meter), each iteration first drops
//! the sequences nobody waits for any more (their caller went away or their deadline passed):
//! the node forgets them, which frees their KV cache, and they leave as errors. After the
//! iteration the scheduler hands the text of each streamed running sequence
//! ([`Generate::generated_text`]) to the watch, and reports the replica's KV use.
//!
//! Every admitted item leaves exactly once: as a result, or as an error (its admission failed,
//! its prompt exceeds the KV bound, it outgrew the bound alone, or a node call that included
//! it panicked or answered wrongly). This module knows nothing of timely; the meter records
//! each iteration as one batch whose items are the sequences that left in it.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::node::{Generate, Node, Outputs, SeqId, Step};
use crate::replicas::{panic_message, Done, Job, Key};
use crate::stats::NodeMeter;
use crate::value::NodeError;
use crate::watch::{Abandoned, Watch};

/// A replica's scheduling limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most sequences running at once (the plan's `max`).
    pub max: usize,
    /// Most KV tokens in flight (the sum of running sequences' caches).
    pub kv_capacity: usize,
    /// Most prompt tokens prefilled per iteration (at least one sequence always may join).
    pub prefill_budget: usize,
}

impl Limits {
    /// The limits of a generating node under `max`: its own KV bound, or `max` sequences of its
    /// full length; a prefill budget of one full-length sequence.
    pub fn of(g: &dyn Generate, max: usize) -> Limits {
        let max = max.max(1);
        let longest = g.max_sequence_tokens().max(1);
        Limits {
            max,
            kv_capacity: g.kv_capacity().unwrap_or(max * longest).max(1),
            prefill_budget: longest,
        }
    }
}

/// What a node's schedulers counted, summed over its replicas.
#[derive(Debug, Default)]
pub struct Counters {
    /// Iterations that prefilled or stepped something.
    pub iterations: AtomicU64,
    /// Sequences prefilled (recomputations included).
    pub prefilled: AtomicU64,
    /// Sequence-steps: the running batch's size, summed over steps.
    pub stepped: AtomicU64,
    /// Running sequences preempted to keep the KV bound.
    pub preemptions: AtomicU64,
}

impl Counters {
    pub fn preemptions(&self) -> u64 {
        self.preemptions.load(Ordering::Relaxed)
    }

    /// Mean size of the running batch over the steps taken.
    pub fn mean_running(&self) -> f64 {
        let steps = self.iterations.load(Ordering::Relaxed);
        if steps == 0 {
            0.0
        } else {
            self.stepped.load(Ordering::Relaxed) as f64 / steps as f64
        }
    }
}

struct Waiting {
    id: SeqId,
    key: Key,
    /// KV tokens its prefill fills: the prompt, or prompt plus generated after a preemption.
    need: usize,
}

struct Running {
    id: SeqId,
    key: Key,
    cached: usize,
}

/// One replica's running batch and waiting queue.
pub struct Scheduler {
    limits: Limits,
    next_id: SeqId,
    waiting: VecDeque<Waiting>,
    /// In no particular order; the youngest has the largest id.
    running: Vec<Running>,
    kv_used: usize,
    finished: Vec<(Key, Result<Outputs, NodeError>)>,
    counters: Arc<Counters>,
}

impl Scheduler {
    pub fn new(limits: Limits, counters: Arc<Counters>) -> Scheduler {
        Scheduler {
            limits,
            next_id: 0,
            waiting: VecDeque::new(),
            running: Vec::new(),
            kv_used: 0,
            finished: Vec::new(),
            counters,
        }
    }

    /// Holds no sequence.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// How many more sequences it will take now.
    pub fn room(&self) -> usize {
        self.limits
            .max
            .saturating_sub(self.running.len() + self.waiting.len())
    }

    /// KV tokens in flight.
    pub fn kv_used(&self) -> usize {
        self.kv_used
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Admit a job's items: each waits, or fails at once.
    pub fn offer(&mut self, g: &mut dyn Generate, job: Job) {
        let cap = self.limits.kv_capacity;
        for (key, item) in job.keys.into_iter().zip(job.items) {
            let id = self.next_id;
            self.next_id += 1;
            match guard(|| g.admit(id, item)) {
                Ok(Ok(need)) if need + 1 > cap => {
                    g.forget(id);
                    let e = NodeError::new(format!(
                        "the prompt needs {need} KV tokens and one more per generated token; \
                         this replica holds at most {cap} (kv_tokens)"
                    ));
                    self.finished.push((key, Err(e)));
                }
                Ok(Ok(need)) => self.waiting.push_back(Waiting { id, key, need }),
                Ok(Err(e)) => self.finished.push((key, Err(e))),
                Err(panic) => {
                    g.forget(id);
                    self.finished.push((key, Err(NodeError::new(panic))));
                }
            }
        }
    }

    /// One iteration: make room for the running sequences' next token, choose who joins,
    /// then prefill the joining sequences and step the running ones in one node call. Returns
    /// whether it ran the node.
    pub fn iterate(&mut self, g: &mut dyn Generate) -> bool {
        self.make_room(g);
        let fresh = self.choose_joins();
        if fresh.is_empty() && self.running.is_empty() {
            return false;
        }
        let fresh_ids: Vec<SeqId> = fresh.iter().map(|w| w.id).collect();
        let running = std::mem::take(&mut self.running);
        let step_ids: Vec<SeqId> = running.iter().map(|r| r.id).collect();
        let c = &self.counters;
        c.iterations.fetch_add(1, Ordering::Relaxed);
        c.prefilled
            .fetch_add(fresh_ids.len() as u64, Ordering::Relaxed);
        c.stepped
            .fetch_add(step_ids.len() as u64, Ordering::Relaxed);
        let (filled, stepped) = match guard(|| g.prefill_and_step(&fresh_ids, &step_ids)) {
            Ok((filled, stepped)) => (
                check(&fresh_ids, "prefill", filled),
                check(&step_ids, "step", stepped),
            ),
            Err(panic) => {
                let e = NodeError::new(panic);
                (Err(e.clone()), Err(e))
            }
        };
        let joined = fresh.into_iter().map(|w| Running {
            id: w.id,
            key: w.key,
            cached: w.need,
        });
        self.settle(g, joined.collect(), filled);
        self.settle(g, running, stepped);
        self.recount();
        true
    }

    /// The sequences that left since the last call, with their results.
    pub fn take_finished(&mut self) -> Vec<(Key, Result<Outputs, NodeError>)> {
        std::mem::take(&mut self.finished)
    }

    /// Waiting sequences that join now, in order (see the module doc for the rule).
    fn choose_joins(&mut self) -> Vec<Waiting> {
        let cap = self.limits.kv_capacity;
        // The running sequences' caches after this iteration's step.
        let mut reserved = self.kv_used + self.running.len();
        let mut prompt_tokens = 0;
        let mut fresh: Vec<Waiting> = Vec::new();
        while let Some(w) = self.waiting.front() {
            let full = self.running.len() + fresh.len() >= self.limits.max;
            let over_budget =
                !fresh.is_empty() && prompt_tokens + w.need > self.limits.prefill_budget;
            // `+ 1`: room for its own first step at the next iteration.
            if full || over_budget || reserved + w.need + 1 > cap {
                break;
            }
            reserved += w.need + 1;
            prompt_tokens += w.need;
            fresh.push(self.waiting.pop_front().expect("front exists"));
        }
        fresh
    }

    /// Apply a node call's outcomes to the sequences it was about.
    fn settle(
        &mut self,
        g: &mut dyn Generate,
        seqs: Vec<Running>,
        outcomes: Result<Vec<Step>, NodeError>,
    ) {
        match outcomes {
            Ok(outcomes) => {
                for (r, step) in seqs.into_iter().zip(outcomes) {
                    match step {
                        Step::Running { cached } => self.running.push(Running { cached, ..r }),
                        Step::Done(result) => self.finished.push((r.key, result)),
                    }
                }
            }
            Err(e) => {
                for r in seqs {
                    g.forget(r.id);
                    self.finished.push((r.key, Err(e.clone())));
                }
            }
        }
    }

    fn make_room(&mut self, g: &mut dyn Generate) {
        let cap = self.limits.kv_capacity;
        while self.kv_used + self.running.len() > cap && !self.running.is_empty() {
            let (pos, _) = self
                .running
                .iter()
                .enumerate()
                .max_by_key(|(_, r)| r.id)
                .expect("running is not empty");
            let r = self.running.swap_remove(pos);
            if self.running.is_empty() {
                g.forget(r.id);
                let e = NodeError::new(format!(
                    "the sequence grew past the {cap} KV tokens this replica holds (kv_tokens)"
                ));
                self.finished.push((r.key, Err(e)));
            } else {
                match guard(|| g.preempt(r.id)) {
                    Ok(_) => {
                        self.counters.preemptions.fetch_add(1, Ordering::Relaxed);
                        self.waiting.push_front(Waiting {
                            id: r.id,
                            key: r.key,
                            need: r.cached,
                        });
                    }
                    Err(panic) => {
                        g.forget(r.id);
                        self.finished.push((r.key, Err(NodeError::new(panic))));
                    }
                }
            }
            self.recount();
        }
    }

    fn recount(&mut self) {
        self.kv_used = self.running.iter().map(|r| r.cached).sum();
    }

    /// Drop the waiting and running sequences whose requests `gone` calls abandoned: the node
    /// forgets them (freeing their KV cache) and each leaves as an error naming why. Returns
    /// how many were dropped.
    pub fn drop_abandoned(
        &mut self,
        g: &mut dyn Generate,
        gone: impl Fn(u64) -> Option<Abandoned>,
    ) -> usize {
        let mut dropped = 0;
        let mut keep_waiting = VecDeque::with_capacity(self.waiting.len());
        for w in std::mem::take(&mut self.waiting) {
            match gone(w.key.0) {
                Some(why) => {
                    g.forget(w.id);
                    self.finished.push((w.key, Err(abandoned_error(why))));
                    dropped += 1;
                }
                None => keep_waiting.push_back(w),
            }
        }
        self.waiting = keep_waiting;
        let mut keep_running = Vec::with_capacity(self.running.len());
        for r in std::mem::take(&mut self.running) {
            match gone(r.key.0) {
                Some(why) => {
                    g.forget(r.id);
                    self.finished.push((r.key, Err(abandoned_error(why))));
                    dropped += 1;
                }
                None => keep_running.push(r),
            }
        }
        self.running = keep_running;
        if dropped > 0 {
            self.recount();
        }
        dropped
    }

    /// The scheduler's sequence ids of running sequences with their request keys.
    pub fn running_keys(&self) -> impl Iterator<Item = (SeqId, Key)> + '_ {
        self.running.iter().map(|r| (r.id, r.key))
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }
}

fn abandoned_error(why: Abandoned) -> NodeError {
    NodeError::new(why.failure("a generating node, between steps").message)
}

/// A served run's per-iteration work: drop abandoned sequences before the iteration.
fn before_iteration(sched: &mut Scheduler, g: &mut dyn Generate, watch: Option<&Arc<dyn Watch>>) {
    if let Some(w) = watch {
        sched.drop_abandoned(g, |id| w.abandoned(id));
    }
}

/// A served run's per-iteration work after it: streamed sequences' text so far, and KV use.
fn after_iteration(
    sched: &Scheduler,
    g: &dyn Generate,
    watch: Option<&Arc<dyn Watch>>,
    node: &str,
    replica: u32,
) {
    let Some(w) = watch else { return };
    for (seq, key) in sched.running_keys() {
        if w.streams(key.0) {
            match g.generated_text(seq) {
                Some(text) if !text.is_empty() => w.partial(key.0, node, &text),
                _ => {}
            }
        }
    }
    w.kv(node, replica, sched.kv_used(), sched.limits().kv_capacity);
}

/// Run `f`, turning a panic into its message (`panic in node: …`).
fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| format!("panic in node: {}", panic_message(&p)))
}

/// A prefill's or step's outcomes in `ids` order, or the error that fails them all: an answer
/// that does not match the ids asked for.
fn check(ids: &[SeqId], what: &str, outcomes: Vec<(SeqId, Step)>) -> Result<Vec<Step>, NodeError> {
    if outcomes.len() != ids.len() || outcomes.iter().zip(ids).any(|(o, id)| o.0 != *id) {
        return Err(NodeError::new(format!(
            "node answered the {what} of {} sequences with {} outcomes for other ids",
            ids.len(),
            outcomes.len()
        )));
    }
    Ok(outcomes.into_iter().map(|(_, s)| s).collect())
}

/// The replica thread of a generating node under the `continuous` policy: iterate while it
/// holds sequences, block on the job channel only when it holds none, and end once the channel
/// is closed and every sequence has left.
pub(crate) fn replica_loop(
    replica: u32,
    mut node: Box<dyn Node>,
    (max, counters): (usize, Arc<Counters>),
    jobs: &Receiver<Job>,
    done: &Sender<Done>,
    meter: &NodeMeter,
    wake: impl Fn(),
) {
    let Some(g) = node.generator() else {
        return;
    };
    let mut sched = Scheduler::new(Limits::of(g, max), counters);
    let mut open = true;
    let watch = meter.watch().cloned();
    loop {
        if sched.is_idle() {
            if !open {
                return;
            }
            match jobs.recv() {
                Ok(job) => sched.offer(g, job),
                Err(_) => return,
            }
        }
        while open && sched.room() > 0 {
            match jobs.try_recv() {
                Ok(job) => sched.offer(g, job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        before_iteration(&mut sched, g, watch.as_ref());
        let start = Instant::now();
        let worked = sched.iterate(g);
        let end = Instant::now();
        after_iteration(&sched, g, watch.as_ref(), &meter.id, replica);
        let finished = sched.take_finished();
        if worked || !finished.is_empty() {
            let errors = finished.iter().filter(|f| f.1.is_err()).count();
            meter.batch(replica, start, end, finished.len(), errors);
        }
        if finished.is_empty() {
            continue;
        }
        for (key, result) in finished {
            let d = Done {
                keys: vec![key],
                results: vec![result],
            };
            if done.send(d).is_err() {
                return;
            }
        }
        wake();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::node::Item;
    use crate::value::Value;

    /// A fake generator: item `Int(n)` has a prompt of 2 tokens and generates `n` tokens, the
    /// output being the list of positions it decoded (so a wrong recompute shows).
    #[derive(Default)]
    struct Counting {
        /// id → (target, tokens so far, cached?)
        seqs: BTreeMap<SeqId, (usize, usize, bool)>,
        max_live_kv: usize,
        panic_on: Option<i64>,
        /// Panic in the step that would finish a sequence of this target length.
        panic_finishing: Option<usize>,
        kv: Option<usize>,
    }

    impl Node for Counting {
        fn run_batch(&mut self, _: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
            panic!("a generating node under `continuous` is driven step by step")
        }
        fn generator(&mut self) -> Option<&mut dyn Generate> {
            Some(self)
        }
    }

    impl Counting {
        fn live_kv(&self) -> usize {
            self.seqs.values().filter(|s| s.2).map(|s| s.1).sum()
        }
    }

    impl Generate for Counting {
        fn admit(&mut self, seq: SeqId, item: Item) -> Result<usize, NodeError> {
            match item.first() {
                Some(Value::Int(n)) if *n > 0 => {
                    if Some(*n) == self.panic_on {
                        panic!("boom {n}");
                    }
                    self.seqs.insert(seq, (*n as usize, 2, false));
                    Ok(2)
                }
                _ => Err(NodeError::new("not a positive Int")),
            }
        }
        fn prefill(&mut self, seqs: &[SeqId]) -> Vec<(SeqId, Step)> {
            let out = seqs
                .iter()
                .map(|&id| {
                    let s = self.seqs.get_mut(&id).expect("admitted");
                    assert!(!s.2, "prefilled twice");
                    s.2 = true;
                    (id, Step::Running { cached: s.1 })
                })
                .collect();
            self.max_live_kv = self.max_live_kv.max(self.live_kv());
            out
        }
        fn step(&mut self, seqs: &[SeqId]) -> Vec<(SeqId, Step)> {
            let out = seqs
                .iter()
                .map(|&id| {
                    let s = self.seqs.get_mut(&id).expect("running");
                    assert!(s.2, "stepped without a cache");
                    if s.1 - 2 == s.0 {
                        if Some(s.0) == self.panic_finishing {
                            panic!("boom at the end of {}", s.0);
                        }
                        let (n, t, _) = self.seqs.remove(&id).expect("present");
                        let out = vec![Value::Int((t - 2) as i64), Value::Int(n as i64)];
                        return (id, Step::Done(Ok(out)));
                    }
                    s.1 += 1;
                    (id, Step::Running { cached: s.1 })
                })
                .collect();
            self.max_live_kv = self.max_live_kv.max(self.live_kv());
            out
        }
        fn preempt(&mut self, seq: SeqId) -> usize {
            let s = self.seqs.get_mut(&seq).expect("running");
            s.2 = false;
            s.1
        }
        fn forget(&mut self, seq: SeqId) {
            self.seqs.remove(&seq);
        }
        fn max_sequence_tokens(&self) -> usize {
            20
        }
        fn kv_capacity(&self) -> Option<usize> {
            self.kv
        }
    }

    fn job(from: u64, ns: &[i64]) -> Job {
        Job {
            keys: (0..ns.len() as u64).map(|i| (from + i, 0, 0)).collect(),
            items: ns.iter().map(|&n| vec![Value::Int(n)]).collect(),
        }
    }

    /// Run to the end; results by request id, and the iterations it took.
    fn drain(
        s: &mut Scheduler,
        g: &mut Counting,
        mut later: Vec<Job>,
    ) -> (BTreeMap<u64, Result<Outputs, NodeError>>, usize) {
        let mut out = BTreeMap::new();
        let mut iterations = 0;
        later.reverse();
        while !s.is_idle() || !later.is_empty() {
            if s.room() > 0 {
                if let Some(j) = later.pop() {
                    s.offer(g, j);
                }
            }
            s.iterate(g);
            iterations += 1;
            assert!(s.kv_used() + s.running() <= 40 || s.running() <= 1);
            for (k, r) in s.take_finished() {
                assert!(out.insert(k.0, r).is_none(), "request {} left twice", k.0);
            }
            assert!(iterations < 1000);
        }
        for (k, r) in s.take_finished() {
            assert!(out.insert(k.0, r).is_none());
        }
        (out, iterations)
    }

    fn limits(max: usize, kv: usize) -> Limits {
        Limits {
            max,
            kv_capacity: kv,
            prefill_budget: 20,
        }
    }

    #[test]
    fn short_sequences_leave_early_and_waiting_ones_join_at_the_next_step() {
        let counters = Arc::new(Counters::default());
        let mut s = Scheduler::new(limits(2, 1000), Arc::clone(&counters));
        let mut g = Counting::default();
        s.offer(&mut g, job(0, &[1, 6, 1, 1]));
        assert_eq!(s.room(), 0);
        // Iteration 1: 0 and 1 join (prefill); iteration 2: their first step.
        s.iterate(&mut g);
        s.iterate(&mut g);
        assert!(s.take_finished().is_empty());
        // Iteration 3: 0 finishes and leaves at once; 2 waits (the batch was full).
        s.iterate(&mut g);
        let f = s.take_finished();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].0 .0, 0);
        // Iteration 4: 2 joins beside 1, without waiting for 1 to finish.
        s.iterate(&mut g);
        assert_eq!(s.running(), 2);
        let (rest, _) = drain(&mut s, &mut g, vec![]);
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[&1], Ok(vec![Value::Int(6), Value::Int(6)]));
        assert_eq!(counters.preemptions(), 0);
        assert!(counters.mean_running() > 1.0);
    }

    #[test]
    fn a_full_kv_bound_preempts_the_youngest_and_loses_nothing() {
        let counters = Arc::new(Counters::default());
        // Room for two long sequences at the start, not as they grow.
        let mut s = Scheduler::new(limits(4, 16), Arc::clone(&counters));
        let mut g = Counting::default();
        s.offer(&mut g, job(0, &[9, 9, 9, 0, 1, 3]));
        let (out, _) = drain(&mut s, &mut g, vec![job(6, &[9, 2])]);
        assert_eq!(out.len(), 8);
        assert!(counters.preemptions() >= 1);
        assert!(g.max_live_kv <= 16, "{}", g.max_live_kv);
        for (id, n) in [(0, 9), (1, 9), (2, 9), (4, 1), (5, 3), (6, 9), (7, 2)] {
            assert_eq!(
                out[&id],
                Ok(vec![Value::Int(n), Value::Int(n)]),
                "request {id}"
            );
        }
        assert!(out[&3]
            .as_ref()
            .is_err_and(|e| e.message == "not a positive Int"));
        assert!(g.seqs.is_empty());
    }

    #[test]
    fn a_sequence_larger_than_the_bound_fails_alone() {
        let mut s = Scheduler::new(limits(4, 6), Arc::new(Counters::default()));
        let mut g = Counting::default();
        s.offer(&mut g, job(0, &[2, 9, 1]));
        let (out, _) = drain(&mut s, &mut g, vec![]);
        assert_eq!(out[&0], Ok(vec![Value::Int(2), Value::Int(2)]));
        assert_eq!(out[&2], Ok(vec![Value::Int(1), Value::Int(1)]));
        assert!(out[&1]
            .as_ref()
            .is_err_and(|e| e.message.contains("grew past the 6 KV tokens")));
        let mut tiny = Scheduler::new(limits(4, 2), Arc::new(Counters::default()));
        tiny.offer(&mut g, job(0, &[1]));
        let f = tiny.take_finished();
        assert!(f[0]
            .1
            .as_ref()
            .is_err_and(|e| e.message.contains("holds at most 2")));
        assert!(tiny.is_idle());
    }

    #[test]
    fn a_panic_fails_the_items_it_touched_and_the_replica_goes_on() {
        let mut s = Scheduler::new(limits(4, 100), Arc::new(Counters::default()));
        let mut g = Counting {
            panic_on: Some(5),
            ..Counting::default()
        };
        s.offer(&mut g, job(0, &[1, 5, 2]));
        let (out, _) = drain(&mut s, &mut g, vec![]);
        assert!(out[&1]
            .as_ref()
            .is_err_and(|e| e.message == "panic in node: boom 5"));
        assert_eq!(out[&2], Ok(vec![Value::Int(2), Value::Int(2)]));

        // A panic inside a step fails the sequences of that step; later ones run.
        let mut s = Scheduler::new(limits(2, 100), Arc::new(Counters::default()));
        let mut g = Counting {
            panic_finishing: Some(3),
            ..Counting::default()
        };
        s.offer(&mut g, job(0, &[3, 4, 2, 1]));
        let (out, _) = drain(&mut s, &mut g, vec![]);
        for id in [0, 1] {
            assert!(
                out[&id]
                    .as_ref()
                    .is_err_and(|e| e.message == "panic in node: boom at the end of 3"),
                "{:?}",
                out[&id]
            );
        }
        assert_eq!(out[&2], Ok(vec![Value::Int(2), Value::Int(2)]));
        assert_eq!(out[&3], Ok(vec![Value::Int(1), Value::Int(1)]));
        assert!(g.seqs.is_empty(), "the failed sequences are forgotten");
    }

    #[test]
    fn abandoned_sequences_leave_between_steps_and_free_their_kv() {
        let mut s = Scheduler::new(limits(4, 1000), Arc::new(Counters::default()));
        let mut g = Counting::default();
        s.offer(&mut g, job(0, &[9, 9, 9]));
        s.iterate(&mut g);
        s.iterate(&mut g);
        let before = s.kv_used();
        assert!(before > 0 && s.running() == 3);
        // Request 1's caller went away, request 2's deadline passed.
        let dropped = s.drop_abandoned(&mut g, |id| match id {
            1 => Some(Abandoned::Cancelled),
            2 => Some(Abandoned::DeadlineExceeded),
            _ => None,
        });
        assert_eq!(dropped, 2);
        assert_eq!(s.running(), 1);
        assert!(s.kv_used() < before);
        assert_eq!(g.seqs.len(), 1, "the node forgot the dropped sequences");
        let gone = s.take_finished();
        assert_eq!(gone.len(), 2);
        assert!(gone.iter().all(|(_, r)| r.is_err()));
        assert!(gone.iter().any(|(k, r)| k.0 == 2
            && r.as_ref()
                .is_err_and(|e| e.message.contains("deadline passed"))));
        let (rest, _) = drain(&mut s, &mut g, vec![]);
        assert_eq!(rest[&0], Ok(vec![Value::Int(9), Value::Int(9)]));
    }

    #[test]
    fn a_continuous_pool_answers_each_item_once_and_counts_preemptions() {
        use crate::batching::Batcher;
        use crate::replicas::Pool;
        use mars_plan::{BatchPolicy, BatchSpec};

        let meter = Arc::new(NodeMeter::new("gen", 2, Instant::now(), false));
        let nodes: Vec<Box<dyn Node>> = (0..2)
            .map(|_| {
                Box::new(Counting {
                    kv: Some(16),
                    ..Counting::default()
                }) as Box<dyn Node>
            })
            .collect();
        let batcher = Batcher::new(&BatchSpec {
            policy: BatchPolicy::Continuous,
            max: 4,
            wait_ms: 0.0,
        });
        let (wake_tx, wake_rx) = crossbeam_channel::unbounded();
        let mut pool = Pool::start("gen", nodes, &batcher, Arc::clone(&meter), move || {
            let _ = wake_tx.send(());
        });
        let counters = Arc::clone(pool.continuous().expect("the replicas generate"));
        // 40 items of lengths 1..=9 and one bad item; at most (2 + 1) × 4 out at once.
        let mut queue: VecDeque<(u64, i64)> = (0..41).map(|i| (i, (i % 9) as i64)).collect();
        let mut got: BTreeMap<u64, Result<Outputs, NodeError>> = BTreeMap::new();
        while got.len() < 41 {
            while pool.has_free_replica() {
                let Some((id, n)) = queue.pop_front() else {
                    break;
                };
                assert_eq!(pool.admissible(5), 5.min(12 - pool.busy()));
                pool.submit(Job {
                    keys: vec![(id, 0, 0)],
                    items: vec![vec![Value::Int(n)]],
                });
            }
            assert!(pool.busy() <= 12);
            wake_rx.recv().expect("a replica wakes us");
            for d in pool.finished() {
                assert_eq!(d.keys.len(), 1, "each sequence is answered on its own");
                for (k, r) in d.keys.into_iter().zip(d.results) {
                    assert!(got.insert(k.0, r).is_none(), "request {} twice", k.0);
                }
            }
        }
        for (id, r) in &got {
            let n = (id % 9) as i64;
            if n == 0 {
                assert!(r.is_err());
            } else {
                assert_eq!(r, &Ok(vec![Value::Int(n), Value::Int(n)]), "request {id}");
            }
        }
        assert!(counters.preemptions() > 0, "a 16-token bound preempts");
        let stats = meter.stats(std::time::Duration::from_secs(1));
        assert_eq!(stats.items, 41);
        assert_eq!(stats.item_errors, 5);
        assert_eq!(pool.busy(), 0);
    }
}
