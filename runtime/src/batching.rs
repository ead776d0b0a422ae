//! When a node's queued items become a batch: the plan's batching policy as a decision
//! function, separate from the operator so that it can be tested without timely.
//!
//! - `none`: every item is its own batch.
//! - `dynamic`: up to `max` items; a batch leaves when it is full, when its oldest item has
//!   waited `wait_ms`, or when no more input can arrive (the end of the run).
//! - `continuous`: iteration-level batching of generating models. The operator hands queued
//!   items over at once, without waiting: to a generating node's replicas one item per free
//!   sequence slot ([`crate::replicas::Pool::admissible`]), and they join its running batch
//!   at the next step ([`crate::continuous`]); to a node that does not generate, everything
//!   queued up to `max` as one batch whenever a replica is free.

use std::time::Duration;

use mars_plan::{BatchPolicy, BatchSpec};

/// What to do with the queue now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Take this many items from the front of the queue as one batch.
    Dispatch(usize),
    /// Nothing yet; look again after this long.
    WaitFor(Duration),
    /// The queue is empty.
    Idle,
}

/// A node's batching policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batcher {
    pub policy: BatchPolicy,
    /// At least 1.
    pub max: usize,
    pub wait: Duration,
}

impl Batcher {
    pub fn new(spec: &BatchSpec) -> Batcher {
        let wait = if spec.wait_ms.is_finite() && spec.wait_ms > 0.0 {
            Duration::from_secs_f64(spec.wait_ms / 1000.0)
        } else {
            Duration::ZERO
        };
        let max = match spec.policy {
            BatchPolicy::None => 1,
            _ => spec.max.max(1) as usize,
        };
        Batcher {
            policy: spec.policy,
            max,
            wait,
        }
    }

    /// Decide for a queue of `queued` items whose oldest has waited `oldest_waited`;
    /// `draining` means no more items will ever arrive.
    pub fn decide(&self, queued: usize, oldest_waited: Duration, draining: bool) -> Decision {
        if queued == 0 {
            return Decision::Idle;
        }
        match self.policy {
            BatchPolicy::None => Decision::Dispatch(1),
            BatchPolicy::Continuous => Decision::Dispatch(queued.min(self.max)),
            BatchPolicy::Dynamic => {
                if queued >= self.max {
                    Decision::Dispatch(self.max)
                } else if draining || oldest_waited >= self.wait {
                    Decision::Dispatch(queued)
                } else {
                    Decision::WaitFor(self.wait - oldest_waited)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: BatchPolicy, max: u32, wait_ms: f64) -> BatchSpec {
        BatchSpec {
            policy,
            max,
            wait_ms,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn none_sends_items_one_by_one() {
        let b = Batcher::new(&spec(BatchPolicy::None, 8, 5.0));
        assert_eq!(b.decide(5, Duration::ZERO, false), Decision::Dispatch(1));
        assert_eq!(b.decide(0, Duration::ZERO, false), Decision::Idle);
    }

    #[test]
    fn dynamic_waits_for_a_full_batch_or_the_deadline() {
        let b = Batcher::new(&spec(BatchPolicy::Dynamic, 4, 5.0));
        assert_eq!(b.decide(2, MS, false), Decision::WaitFor(4 * MS));
        assert_eq!(b.decide(4, Duration::ZERO, false), Decision::Dispatch(4));
        assert_eq!(b.decide(9, Duration::ZERO, false), Decision::Dispatch(4));
        assert_eq!(b.decide(2, 5 * MS, false), Decision::Dispatch(2));
        assert_eq!(b.decide(3, Duration::ZERO, true), Decision::Dispatch(3));
    }

    #[test]
    fn continuous_takes_what_is_queued_at_once() {
        let b = Batcher::new(&spec(BatchPolicy::Continuous, 4, 0.0));
        assert_eq!(b.decide(3, Duration::ZERO, false), Decision::Dispatch(3));
        assert_eq!(b.decide(7, Duration::ZERO, false), Decision::Dispatch(4));
    }

    #[test]
    fn a_zero_max_still_makes_progress() {
        let b = Batcher::new(&spec(BatchPolicy::Dynamic, 0, 0.0));
        assert_eq!(b.decide(3, Duration::ZERO, false), Decision::Dispatch(1));
    }
}
