//! What a served run ([`crate::run::service`]) tells the dataflow about its requests, and what
//! the dataflow tells it back while they run.
//!
//! A file run has no watch. A served run attaches one to its source and to every node's meter:
//! the source drops a request nobody waits for any more before it enters the dataflow, the
//! continuous-batching scheduler drops such a sequence between steps (freeing its KV cache)
//! and reports the text a streamed sequence has produced so far, and the meters report batch
//! sizes and KV use for the server's metrics. Every method has a do-nothing default.

use crate::dataflow::Failure;
use crate::replicas::{Job, Key};
use crate::value::NodeError;

/// The node name of the failure a request gets when its deadline passed before it finished.
pub const DEADLINE_NODE: &str = "deadline";
/// The node name of the failure a request gets when its caller went away.
pub const CANCELLED_NODE: &str = "cancelled";

/// Why nobody waits for a request any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// Its caller cancelled it or went away (a closed connection).
    Cancelled,
    /// Its deadline passed.
    DeadlineExceeded,
}

impl Abandoned {
    /// The failure record the request leaves with, naming where it was dropped.
    pub fn failure(self, at: &str) -> Failure {
        match self {
            Abandoned::Cancelled => Failure::new(
                CANCELLED_NODE,
                format!("the caller went away; dropped at {at}"),
            ),
            Abandoned::DeadlineExceeded => Failure::new(
                DEADLINE_NODE,
                format!("the request's deadline passed; dropped at {at}"),
            ),
        }
    }
}

/// The served run's side of a running dataflow. Called from worker and replica threads: keep
/// every method cheap and non-blocking.
pub trait Watch: Send + Sync {
    /// Whether request `id` is abandoned (checked where dropping it is cheap).
    fn abandoned(&self, _id: u64) -> Option<Abandoned> {
        None
    }

    /// Whether a caller reads request `id`'s generated text as it grows.
    fn streams(&self, _id: u64) -> bool {
        false
    }

    /// The text request `id`'s generating node `node` has produced so far (the whole text,
    /// not the increment).
    fn partial(&self, _id: u64, _node: &str, _text: &str) {}

    /// Node `node` finished a batch of `items` items.
    fn batch(&self, _node: &str, _items: usize) {}

    /// A generating replica's KV tokens in flight and its bound, after an iteration.
    fn kv(&self, _node: &str, _replica: u32, _used: usize, _capacity: usize) {}
}

/// Where a served run's abandoned requests are dropped, for their failure message.
pub(crate) const BEFORE_RUN: &str = "a node's queue, before the node ran it";

/// Split off the items (of a batch about to run) of requests a served run's watch calls abandoned, each with its error.
pub(crate) fn without_abandoned(
    watch: Option<&std::sync::Arc<dyn Watch>>,
    job: Job,
) -> (Job, Vec<(Key, NodeError)>) {
    let Some(w) = watch else {
        return (job, Vec::new());
    };
    let mut kept = Job {
        keys: Vec::with_capacity(job.keys.len()),
        items: Vec::with_capacity(job.items.len()),
    };
    let mut dropped = Vec::new();
    for (key, item) in job.keys.into_iter().zip(job.items) {
        match w.abandoned(key.0) {
            Some(why) => dropped.push((key, NodeError::new(why.failure(BEFORE_RUN).message))),
            None => {
                kept.keys.push(key);
                kept.items.push(item);
            }
        }
    }
    (kept, dropped)
}

/// A watch held by a meter or a feed (a type of its own, so that its holders stay `Debug`).
#[derive(Clone)]
pub struct WatchSlot(pub std::sync::Arc<dyn Watch>);

impl std::fmt::Debug for WatchSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchSlot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;
    use std::sync::Arc;

    /// Request 2 is past its deadline, request 3's caller went away.
    struct Gone;
    impl Watch for Gone {
        fn abandoned(&self, id: u64) -> Option<Abandoned> {
            match id {
                2 => Some(Abandoned::DeadlineExceeded),
                3 => Some(Abandoned::Cancelled),
                _ => None,
            }
        }
    }

    #[test]
    fn abandoned_items_leave_a_batch_before_it_runs() {
        let job = Job {
            keys: (1..=4).map(|id| (id, 0, 0)).collect(),
            items: (1..=4).map(|i| vec![Value::Int(i)]).collect(),
        };
        let w: Arc<dyn Watch> = Arc::new(Gone);
        let (kept, dropped) = without_abandoned(Some(&w), job);
        assert_eq!(kept.keys, vec![(1, 0, 0), (4, 0, 0)]);
        assert_eq!(kept.items, vec![vec![Value::Int(1)], vec![Value::Int(4)]]);
        let why: Vec<(u64, &str)> = dropped
            .iter()
            .map(|(k, e)| (k.0, e.message.as_str()))
            .collect();
        assert_eq!(
            why,
            vec![
                (2, "the request's deadline passed; dropped at a node's queue, before the node ran it"),
                (3, "the caller went away; dropped at a node's queue, before the node ran it"),
            ]
        );
        // A file run has no watch: nothing is dropped.
        let job = Job {
            keys: vec![(2, 0, 0)],
            items: vec![vec![Value::Int(2)]],
        };
        let (kept, dropped) = without_abandoned(None, job);
        assert_eq!((kept.keys.len(), dropped.len()), (1, 0));
    }
}
