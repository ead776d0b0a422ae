//! A node's replica slots: one thread per replica, each owning its `Box<dyn Node>`. The timely
//! operator sends batches in and never blocks: results come back on a channel, and the replica
//! wakes the operator through a thread-safe activator.
//!
//! Under the `none` policy a job is a chunk of items that the replica runs one at a time (the
//! node sees single items, but items do not cross threads one by one); results of a chunk go
//! back together, or every millisecond while a chunk of slow items runs. A chunk holds at most
//! about a millisecond of work, by the replicas' running estimate of an item's cost
//! ([`Pool::chunk`]): cheap items share a hand-off, while slow items go one at a time. They
//! wait in the operator's queue, which every replica takes from as it frees, rather than behind
//! a batch-mate on a replica that happened to be free (an M/D/c queue, not c queues of M/D/1).
//!
//! A panic inside a node is caught here. A batch of one fails with it; in a larger batch each
//! item is run again alone, once, and only an item that panics again fails (poison
//! isolation). The replica goes on with the next batch.
//!
//! An elastic node (SPEC 10) has a [`crate::pool::Lease`]: its pool holds the range's `max`
//! replicas, those past the lease's `active` count park between batches, and the pool
//! offers only `active` slots to its operator.
//!
//! A generating node under the `continuous` policy runs the iteration-level scheduler of
//! [`crate::continuous`] instead: its replicas take items one at a time, as they arrive, and
//! answer each item on its own as its sequence finishes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use mars_plan::BatchPolicy;

use crate::batching::Batcher;
use crate::continuous::Counters;
use crate::node::{Item, Node, Outputs};
use crate::stats::NodeMeter;
use crate::value::NodeError;

/// Which (request id, element index, timestamp) each item of a batch belongs to.
pub type Key = (u64, u32, u64);

/// A batch handed to a replica.
pub struct Job {
    pub keys: Vec<Key>,
    pub items: Vec<Item>,
}

/// A batch's results, one per key, in key order.
pub struct Done {
    pub keys: Vec<Key>,
    pub results: Vec<Result<Outputs, NodeError>>,
}

/// The replica threads of one node.
pub struct Pool {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
    /// Jobs that may be out at once: one per replica, or for a continuous pool one item per
    /// sequence slot (`max` per replica) plus `max` waiting in the channel, so that a
    /// replica finds its next sequences there at its next step.
    slots: usize,
    /// Jobs handed out and not yet answered (a continuous pool's jobs are single items).
    busy: usize,
    /// Jobs the replicas have answered in full (a chunk's results may come in several
    /// messages), for a pool that does not batch continuously.
    answered: Arc<AtomicUsize>,
    /// Jobs handed out, for a pool that does not batch continuously.
    submitted: usize,
    continuous: Option<Arc<Counters>>,
    /// The node's elastic lease: how many replicas may take work now.
    lease: Option<Arc<crate::pool::Lease>>,
    /// Under `none`: the replicas' running estimate of one item's cost (ns; 0 until the first
    /// item has run).
    item_ns: Arc<AtomicU64>,
}

/// While a chunk of items runs one at a time, its results go back at least this often.
const CHUNK_FLUSH: Duration = Duration::from_millis(1);

/// The most work (by the estimate of an item's cost) one chunk holds under `none`.
const CHUNK_WORK: Duration = Duration::from_millis(1);

/// Fold an item's measured cost into the running estimate (an exponential average over about
/// eight items; replicas update it without a lock, and a lost update is harmless).
fn learn(estimate: &AtomicU64, ns: u64) {
    let ns = ns.max(1);
    let old = estimate.load(Ordering::Relaxed);
    let new = if old == 0 { ns } else { old - old / 8 + ns / 8 };
    estimate.store(new.max(1), Ordering::Relaxed);
}

impl Pool {
    /// Start one thread per node replica. `wake` is called after every finished batch (for a
    /// continuous pool: after every iteration in which sequences finished). The replicas run
    /// the continuous scheduler when the policy is `continuous` and every replica generates;
    /// otherwise they run whole batches.
    pub fn start(
        node_id: &str,
        mut nodes: Vec<Box<dyn Node>>,
        batcher: &Batcher,
        meter: Arc<NodeMeter>,
        wake: impl Fn() + Send + Clone + 'static,
    ) -> Pool {
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
        let continuous = (batcher.policy == BatchPolicy::Continuous
            && !nodes.is_empty()
            && nodes.iter_mut().all(|n| n.generator().is_some()))
        .then(|| Arc::new(Counters::default()));
        let lease = meter.lease().cloned();
        if let Some(l) = &lease {
            if continuous.is_some() {
                // The scheduler's slots follow its replicas: this pool keeps its size.
                l.pin();
                nodes.truncate(l.active() as usize);
            }
            let wake = wake.clone();
            l.set_wake(Box::new(wake));
        }
        let replicas = nodes.len();
        if let Some(c) = &continuous {
            meter.watch_continuous(Arc::clone(c));
        }
        let max = batcher.max;
        let one_at_a_time = batcher.policy == BatchPolicy::None;
        let answered = Arc::new(AtomicUsize::new(0));
        let item_ns = Arc::new(AtomicU64::new(0));
        let threads = nodes
            .into_iter()
            .enumerate()
            .map(|(r, node)| {
                let jobs = jobs_rx.clone();
                let done = done_tx.clone();
                let meter = Arc::clone(&meter);
                let wake = wake.clone();
                let counters = continuous.clone();
                let answered = Arc::clone(&answered);
                let item_ns = Arc::clone(&item_ns);
                let lease = lease.clone();
                std::thread::Builder::new()
                    .name(format!("{node_id}#{r}"))
                    .spawn(move || match counters {
                        Some(c) => crate::continuous::replica_loop(
                            r as u32,
                            node,
                            (max, c),
                            &jobs,
                            &done,
                            &meter,
                            wake,
                        ),
                        None => replica_loop(
                            Replica {
                                replica: r as u32,
                                one_at_a_time,
                                meter: &meter,
                                answered: &answered,
                                item_ns: &item_ns,
                                lease: lease.as_deref(),
                            },
                            node,
                            &jobs,
                            &done,
                            wake,
                        ),
                    })
                    .expect("the OS can start a replica thread")
            })
            .collect();
        Pool {
            jobs: Some(jobs_tx),
            done: done_rx,
            threads,
            slots: if continuous.is_some() {
                (replicas + 1) * max
            } else {
                replicas
            },
            busy: 0,
            answered,
            submitted: 0,
            continuous,
            lease,
            item_ns,
        }
    }

    /// Under `none`: how many of `queued` items to hand to one free replica. The queue is
    /// shared out evenly over the free replicas, but a chunk holds at most [`CHUNK_WORK`] of
    /// work by the estimate of an item's cost, and one item while nothing is known of it:
    /// an item queued behind a slow batch-mate would wait for it although another replica
    /// frees first.
    pub fn chunk(&self, queued: usize, most: usize) -> usize {
        let even = queued.div_ceil(self.free().max(1));
        let ns = self.item_ns.load(Ordering::Relaxed);
        let by_cost = if ns == 0 {
            1
        } else {
            (CHUNK_WORK.as_nanos() as u64 / ns).max(1) as usize
        };
        even.min(by_cost).clamp(1, most.max(1))
    }

    /// Jobs that may be out now: an elastic pool's active replicas.
    fn slots(&self) -> usize {
        match (&self.lease, &self.continuous) {
            (Some(l), None) => l.active() as usize,
            _ => self.slots,
        }
    }

    /// Replicas free to take a batch now.
    pub fn free(&self) -> usize {
        self.slots().saturating_sub(self.busy)
    }

    /// Whether a replica is free to take a batch (for a continuous pool: an item).
    pub fn has_free_replica(&self) -> bool {
        self.busy < self.slots()
    }

    /// Tell an elastic node's controller what the operator saw: items queued and items
    /// answered since the start.
    pub fn observe(&self, arrived: u64, answered: u64) {
        if let Some(l) = &self.lease {
            l.observe(arrived, answered);
        }
    }

    /// How many of `n` queued items to hand out now: all of them as one batch, or for a
    /// continuous pool as many as there are free sequence slots.
    pub fn admissible(&self, n: usize) -> usize {
        match self.continuous {
            Some(_) => n.min(self.slots().saturating_sub(self.busy)),
            None => n,
        }
    }

    /// Hand a batch to the next free replica; a continuous pool hands its items out one by
    /// one, to whichever replica has room for a sequence first.
    pub fn submit(&mut self, job: Job) {
        let Some(jobs) = &self.jobs else { return };
        if self.continuous.is_none() {
            if jobs.send(job).is_ok() {
                self.submitted += 1;
                self.busy += 1;
            }
            return;
        }
        for (key, item) in job.keys.into_iter().zip(job.items) {
            let one = Job {
                keys: vec![key],
                items: vec![item],
            };
            if jobs.send(one).is_ok() {
                self.busy += 1;
            }
        }
    }

    /// Batches finished since the last call, without waiting.
    pub fn finished(&mut self) -> Vec<Done> {
        if self.continuous.is_some() {
            let done: Vec<Done> = self.done.try_iter().collect();
            self.busy -= done.len().min(self.busy);
            return done;
        }
        // Read the count first: a job counted here has sent all its results already.
        let answered = self.answered.load(Ordering::Acquire);
        let done = self.done.try_iter().collect();
        self.busy = self.submitted.saturating_sub(answered);
        done
    }

    /// Batches handed out and not yet returned.
    pub fn busy(&self) -> usize {
        self.busy
    }

    /// The scheduler's counters, when the replicas batch continuously.
    pub fn continuous(&self) -> Option<&Arc<Counters>> {
        self.continuous.as_ref()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the job channel ends the replica loops; joining drops each node (an exec
        // node stops its program) before the run reports.
        self.jobs = None;
        if let Some(l) = &self.lease {
            l.close();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a replica thread knows of itself.
struct Replica<'a> {
    replica: u32,
    /// The `none` policy: run a job's items one at a time.
    one_at_a_time: bool,
    meter: &'a NodeMeter,
    answered: &'a AtomicUsize,
    /// The pool's estimate of an item's cost, which this replica updates.
    item_ns: &'a AtomicU64,
    /// Parks this replica while its index is past the lease's active count.
    lease: Option<&'a crate::pool::Lease>,
}

fn replica_loop(
    me: Replica<'_>,
    mut node: Box<dyn Node>,
    jobs: &Receiver<Job>,
    done: &Sender<Done>,
    wake: impl Fn(),
) {
    loop {
        if me.lease.is_some_and(|l| !l.wait_turn(me.replica)) {
            return;
        }
        let Ok(job) = jobs.recv() else { return };
        let n = job.items.len();
        let start = Instant::now();
        let sent = if me.one_at_a_time && n > 1 {
            run_chunk(&me, node.as_mut(), job, done, &wake)
        } else {
            // A served request nobody waits for any more (deadline passed while it queued,
            // caller gone) leaves before the node spends time on it (`crate::watch`).
            let (job, mut dropped) = crate::watch::without_abandoned(me.meter.watch(), job);
            let n = job.items.len();
            let mut results = if n > 0 {
                run_guarded(node.as_mut(), job.items)
            } else {
                Vec::new()
            };
            let errors = results.iter().filter(|r| r.is_err()).count();
            if n > 0 {
                let end = Instant::now();
                me.meter.batch(me.replica, start, end, n, errors);
                if me.one_at_a_time {
                    learn(me.item_ns, (end - start).as_nanos() as u64 / n as u64);
                }
            }
            let mut keys = job.keys;
            keys.extend(dropped.iter().map(|d| d.0));
            results.extend(dropped.drain(..).map(|d| Err(d.1)));
            done.send(Done { keys, results }).is_ok()
        };
        me.answered.fetch_add(1, Ordering::Release);
        if !sent {
            return;
        }
        wake();
    }
}

/// Run a chunk's items one at a time, sending results back every [`CHUNK_FLUSH`] and at the
/// end; `false` when the operator is gone.
fn run_chunk(
    me: &Replica<'_>,
    node: &mut dyn Node,
    job: Job,
    done: &Sender<Done>,
    wake: &impl Fn(),
) -> bool {
    let n = job.items.len();
    let start = Instant::now();
    let mut flushed = start;
    // Counted in the meter at each flush, so that a long chunk's busy time and items show
    // while it runs (the elastic controller reads them every tick).
    // Items dropped before running (their deadline passed) are not counted.
    let (mut counted_at, mut ran_uncounted, mut errors_uncounted) = (start, 0usize, 0usize);
    let mut keys = Vec::with_capacity(n);
    let mut results = Vec::with_capacity(n);
    let each = me.meter.keeps_spans();
    let watch = me.meter.watch();
    for (key, item) in job.keys.into_iter().zip(job.items) {
        if let Some(why) = watch.and_then(|w| w.abandoned(key.0)) {
            keys.push(key);
            results.push(Err(NodeError::new(
                why.failure(crate::watch::BEFORE_RUN).message,
            )));
            continue;
        }
        let t = Instant::now();
        let r = run_guarded(node, vec![item]);
        let failed = r.iter().filter(|r| r.is_err()).count();
        let ran = Instant::now();
        learn(me.item_ns, (ran - t).as_nanos() as u64);
        if each {
            me.meter.batch(me.replica, t, ran, 1, failed);
        }
        errors_uncounted += failed;
        ran_uncounted += 1;
        keys.push(key);
        results.extend(r);
        if flushed.elapsed() >= CHUNK_FLUSH {
            if !each {
                let now = Instant::now();
                let k = ran_uncounted;
                if k > 0 {
                    me.meter
                        .batches(me.replica, counted_at, now, k, k, errors_uncounted);
                }
                (counted_at, ran_uncounted, errors_uncounted) = (now, 0, 0);
            }
            let d = Done {
                keys: std::mem::take(&mut keys),
                results: std::mem::take(&mut results),
            };
            if done.send(d).is_err() {
                return false;
            }
            wake();
            flushed = Instant::now();
        }
    }
    if !each && ran_uncounted > 0 {
        let k = ran_uncounted;
        me.meter.batches(
            me.replica,
            counted_at,
            Instant::now(),
            k,
            k,
            errors_uncounted,
        );
    }
    keys.is_empty() || done.send(Done { keys, results }).is_ok()
}

/// Run one batch, turning a panic or a wrong number of results into per-item errors. After a
/// panic in a batch of several items, each item runs again alone, once: only an item that
/// panics again (or fails) gets an error, so one poison item does not fail its batch-mates.
pub fn run_guarded(node: &mut dyn Node, items: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
    let n = items.len();
    // Values share their large buffers (`Arc`), so the copy kept for a retry is cheap.
    let spare = (n > 1).then(|| items.clone());
    match catch_unwind(AssertUnwindSafe(|| node.run_batch(items))) {
        Ok(results) if results.len() == n => results,
        Ok(results) => {
            let e = NodeError::new(format!(
                "node returned {} results for a batch of {n} items",
                results.len()
            ));
            vec![Err(e); n]
        }
        Err(payload) => match spare {
            None => (0..n).map(|_| Err(panicked(&payload))).collect(),
            Some(items) => items
                .into_iter()
                .map(|item| run_alone(node, item))
                .collect(),
        },
    }
}

/// One item alone, after its batch panicked: no further retry.
fn run_alone(node: &mut dyn Node, item: Item) -> Result<Outputs, NodeError> {
    match catch_unwind(AssertUnwindSafe(|| node.run_batch(vec![item]))) {
        Ok(mut results) if results.len() == 1 => results.pop().expect("one result"),
        Ok(results) => Err(NodeError::new(format!(
            "node returned {} results for a batch of 1 item",
            results.len()
        ))),
        Err(payload) => Err(panicked(&payload)),
    }
}

fn panicked(payload: &Box<dyn std::any::Any + Send>) -> NodeError {
    NodeError::new(format!("panic in node: {}", panic_message(payload)))
}

/// The message of a caught panic.
pub(crate) fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::per_item;
    use crate::value::Value;

    #[test]
    fn panics_and_short_answers_become_item_errors() {
        let mut panics = per_item(|_| panic!("boom"));
        let r = run_guarded(
            panics.as_mut(),
            vec![vec![Value::Int(1)], vec![Value::Int(2)]],
        );
        assert_eq!(r.len(), 2);
        assert!(r
            .iter()
            .all(|x| matches!(x, Err(e) if e.message == "panic in node: boom")));

        struct Short;
        impl Node for Short {
            fn run_batch(&mut self, _: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
                vec![]
            }
        }
        let r = run_guarded(&mut Short, vec![vec![Value::Int(1)]]);
        assert!(matches!(&r[0], Err(e) if e.message.contains("0 results for a batch of 1")));
    }

    #[test]
    fn a_panic_in_a_batch_fails_only_the_item_that_panics_again() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let mut node = per_item(move |item| {
            seen.fetch_add(1, Ordering::SeqCst);
            match item.first() {
                Some(Value::Int(7)) => panic!("seven"),
                Some(v) => Ok(vec![v.clone()]),
                None => Err(NodeError::new("empty")),
            }
        });
        let items: Vec<Item> = (5..10).map(|i| vec![Value::Int(i)]).collect();
        let r = run_guarded(node.as_mut(), items);
        assert_eq!(r.len(), 5);
        for (i, res) in (5..10).zip(&r) {
            match res {
                Ok(v) => assert_eq!(v, &vec![Value::Int(i)]),
                Err(e) => {
                    assert_eq!(i, 7);
                    assert_eq!(e.message, "panic in node: seven");
                }
            }
        }
        assert_eq!(r.iter().filter(|x| x.is_err()).count(), 1);
        // The batch ran up to the poison item (5, 6, 7), then each item once alone (5 more).
        assert_eq!(calls.load(Ordering::SeqCst), 3 + 5);
    }

    #[test]
    fn under_none_a_chunk_runs_one_item_at_a_time() {
        struct Sizes(Arc<std::sync::Mutex<Vec<usize>>>);
        impl Node for Sizes {
            fn run_batch(&mut self, b: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
                self.0.lock().expect("lock").push(b.len());
                b.into_iter().map(Ok).collect()
            }
        }
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let meter = Arc::new(NodeMeter::new("n", 1, Instant::now(), false));
        let batcher = Batcher::new(&mars_plan::BatchSpec {
            policy: BatchPolicy::None,
            max: 1,
            wait_ms: 0.0,
        });
        let (wake_tx, wake_rx) = crossbeam_channel::unbounded();
        let nodes: Vec<Box<dyn Node>> = vec![Box::new(Sizes(Arc::clone(&sizes)))];
        let mut pool = Pool::start("n", nodes, &batcher, Arc::clone(&meter), move || {
            let _ = wake_tx.send(());
        });
        pool.submit(Job {
            keys: (0..100).map(|i| (i, 0, 0)).collect(),
            items: (0..100).map(|i| vec![Value::Int(i as i64)]).collect(),
        });
        assert_eq!(pool.busy(), 1);
        let mut got = 0;
        while got < 100 || pool.busy() > 0 {
            wake_rx.recv().expect("a replica wakes us");
            got += pool
                .finished()
                .iter()
                .map(|d| d.results.len())
                .sum::<usize>();
        }
        assert_eq!(got, 100);
        assert_eq!(*sizes.lock().expect("lock"), vec![1; 100]);
        assert_eq!(meter.stats(std::time::Duration::from_secs(1)).batches, 100);
    }

    /// Run one job on `pool` and wait until it is answered in full.
    fn run_job(pool: &mut Pool, wake: &Receiver<()>, n: u64) {
        pool.submit(Job {
            keys: (0..n).map(|i| (i, 0, 0)).collect(),
            items: (0..n).map(|i| vec![Value::Int(i as i64)]).collect(),
        });
        let mut got = 0;
        while got < n as usize || pool.busy() > 0 {
            wake.recv().expect("a replica wakes us");
            got += pool
                .finished()
                .iter()
                .map(|d| d.results.len())
                .sum::<usize>();
        }
    }

    #[test]
    fn under_none_slow_items_are_handed_out_one_at_a_time_and_cheap_ones_in_chunks() {
        let batcher = Batcher::new(&mars_plan::BatchSpec {
            policy: BatchPolicy::None,
            max: 1,
            wait_ms: 0.0,
        });
        let start = |name: &str, nodes: Vec<Box<dyn Node>>| {
            let (wake_tx, wake_rx) = crossbeam_channel::unbounded();
            let meter = Arc::new(NodeMeter::new(
                name,
                nodes.len() as u32,
                Instant::now(),
                false,
            ));
            let pool = Pool::start(name, nodes, &batcher, meter, move || {
                let _ = wake_tx.send(());
            });
            (pool, wake_rx)
        };
        // 3 ms an item on two replicas: a chunk of two would make the second item wait 3 ms
        // behind the first although the other replica frees as soon.
        let slow = || {
            per_item(|item| {
                std::thread::sleep(Duration::from_millis(3));
                Ok(item)
            })
        };
        let (mut pool, wake) = start("slow", vec![slow(), slow()]);
        assert_eq!(pool.chunk(10, 256), 1, "nothing known of the cost yet");
        run_job(&mut pool, &wake, 4);
        assert_eq!(pool.chunk(10, 256), 1);
        assert_eq!(pool.chunk(1, 256), 1);
        // A cheap node shares hand-offs: the queue is spread over the free replica, up to
        // the cap.
        let (mut pool, wake) = start("cheap", vec![per_item(Ok)]);
        run_job(&mut pool, &wake, 1000);
        assert_eq!(pool.chunk(1000, 256), 256);
        assert_eq!(pool.chunk(7, 256), 7);
    }

    #[test]
    fn a_pool_runs_batches_on_its_replicas_and_reports_back() {
        let meter = Arc::new(NodeMeter::new("double", 2, Instant::now(), false));
        let nodes: Vec<Box<dyn Node>> = (0..2)
            .map(|_| {
                per_item(|item| match item.first() {
                    Some(Value::Int(i)) => Ok(vec![Value::Int(i * 2)]),
                    _ => Err(NodeError::new("not an int")),
                })
            })
            .collect();
        let (wake_tx, wake_rx) = crossbeam_channel::unbounded();
        let batcher = Batcher::new(&mars_plan::BatchSpec {
            policy: BatchPolicy::Continuous,
            max: 4,
            wait_ms: 0.0,
        });
        // No replica generates: `continuous` runs whole batches.
        let mut pool = Pool::start("double", nodes, &batcher, Arc::clone(&meter), move || {
            let _ = wake_tx.send(());
        });
        for i in 0..4 {
            pool.submit(Job {
                keys: vec![(i, 0, 0)],
                items: vec![vec![Value::Int(i as i64)]],
            });
        }
        let mut got = Vec::new();
        while got.len() < 4 {
            wake_rx.recv().expect("a replica wakes us");
            for d in pool.finished() {
                for (k, r) in d.keys.into_iter().zip(d.results) {
                    got.push((k.0, r.expect("ok")));
                }
            }
        }
        // A job's results are sent before it is counted as answered, so the last
        // `finished` may still see it busy; the wake after the count settles it.
        while pool.busy() > 0 {
            wake_rx.recv().expect("a replica wakes us");
            assert!(pool.finished().is_empty());
        }
        got.sort_by_key(|g| g.0);
        assert_eq!(got[3], (3, vec![Value::Int(6)]));
        assert_eq!(pool.busy(), 0);
        assert!(pool.continuous().is_none());
        assert_eq!(meter.stats(std::time::Duration::from_secs(1)).items, 4);
    }
}
