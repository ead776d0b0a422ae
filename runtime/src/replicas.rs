//! A node's replica slots: one thread per replica, each owning its `Box<dyn Node>`. The timely
//! operator sends batches in and never blocks: results come back on a channel, and the replica
//! wakes the operator through a thread-safe activator. A panic inside a node is caught here and
//! fails that batch's items; the replica goes on with the next batch.
//!
//! A generating node under the `continuous` policy runs the iteration-level scheduler of
//! [`crate::continuous`] instead: its replicas take items one at a time, as they arrive, and
//! answer each item on its own as its sequence finishes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

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
    continuous: Option<Arc<Counters>>,
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
        let replicas = nodes.len();
        let continuous = (batcher.policy == BatchPolicy::Continuous
            && !nodes.is_empty()
            && nodes.iter_mut().all(|n| n.generator().is_some()))
        .then(|| Arc::new(Counters::default()));
        if let Some(c) = &continuous {
            meter.watch_continuous(Arc::clone(c));
        }
        let max = batcher.max;
        let threads = nodes
            .into_iter()
            .enumerate()
            .map(|(r, node)| {
                let jobs = jobs_rx.clone();
                let done = done_tx.clone();
                let meter = Arc::clone(&meter);
                let wake = wake.clone();
                let counters = continuous.clone();
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
                        None => replica_loop(r as u32, node, &jobs, &done, &meter, wake),
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
            continuous,
        }
    }

    /// Whether a replica is free to take a batch (for a continuous pool: an item).
    pub fn has_free_replica(&self) -> bool {
        self.busy < self.slots
    }

    /// How many of `n` queued items to hand out now: all of them as one batch, or for a
    /// continuous pool as many as there are free sequence slots.
    pub fn admissible(&self, n: usize) -> usize {
        match self.continuous {
            Some(_) => n.min(self.slots.saturating_sub(self.busy)),
            None => n,
        }
    }

    /// Hand a batch to the next free replica; a continuous pool hands its items out one by
    /// one, to whichever replica has room for a sequence first.
    pub fn submit(&mut self, job: Job) {
        let Some(jobs) = &self.jobs else { return };
        if self.continuous.is_none() {
            if jobs.send(job).is_ok() {
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
        let done: Vec<Done> = self.done.try_iter().collect();
        self.busy -= done.len().min(self.busy);
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
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn replica_loop(
    replica: u32,
    mut node: Box<dyn Node>,
    jobs: &Receiver<Job>,
    done: &Sender<Done>,
    meter: &NodeMeter,
    wake: impl Fn(),
) {
    for job in jobs.iter() {
        let n = job.items.len();
        let start = Instant::now();
        let results = run_guarded(node.as_mut(), job.items);
        let end = Instant::now();
        let errors = results.iter().filter(|r| r.is_err()).count();
        meter.batch(replica, start, end, n, errors);
        if done
            .send(Done {
                keys: job.keys,
                results,
            })
            .is_err()
        {
            return;
        }
        wake();
    }
}

/// Run one batch, turning a panic or a wrong number of results into per-item errors.
pub fn run_guarded(node: &mut dyn Node, items: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
    let n = items.len();
    match catch_unwind(AssertUnwindSafe(|| node.run_batch(items))) {
        Ok(results) if results.len() == n => results,
        Ok(results) => {
            let e = NodeError::new(format!(
                "node returned {} results for a batch of {n} items",
                results.len()
            ));
            vec![Err(e); n]
        }
        Err(payload) => {
            let msg = panic_message(&payload);
            vec![Err(NodeError::new(format!("panic in node: {msg}"))); n]
        }
    }
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
        got.sort_by_key(|g| g.0);
        assert_eq!(got[3], (3, vec![Value::Int(6)]));
        assert_eq!(pool.busy(), 0);
        assert!(pool.continuous().is_none());
        assert_eq!(meter.stats(std::time::Duration::from_secs(1)).items, 4);
    }
}
