//! The request source: admits parsed requests from the reader thread while fewer than
//! `max_inflight` are in the dataflow, one admission round (timestamp) per activation.
//!
//! Flow control: the sink, on the same worker, counts requests out; the source counts them in.
//! When the bound is reached the source marks itself throttled and the sink wakes it as
//! requests leave, so memory stays flat however long the input is. The reader thread wakes the
//! source when it queues a request (at most one wake-up pending at a time).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};
use timely::scheduling::{Activator, SyncActivator};

use super::slab::SeqSlab;
use super::Rec;
use crate::value::Value;

/// At most this many requests are admitted under one timestamp.
pub const ROUND: usize = 1024;

/// The default bound on bytes of request values (see [`Value::approx_bytes`]) inside the
/// dataflow at once (`--max-inflight-mib`), besides `max_inflight`'s count: few large requests cannot fill memory (SPEC 7.3). One
/// request is always admitted, however large, when nothing else is in flight.
pub const MAX_INFLIGHT_BYTES: usize = 512 << 20;

/// How often a source held back by its offline window looks at the window again.
const WINDOW_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub id: u64,
    /// Values of the pipeline's inputs, in declaration order.
    pub values: Vec<Value>,
}

/// What worker 0's source reads from.
pub struct Feed {
    pub requests: Receiver<Request>,
    /// Set by the reader when it has asked for a wake-up; cleared by the source when it runs.
    pub wake: Arc<AtomicBool>,
    /// Set to stop admitting (`--fail-fast`).
    pub stop: Arc<AtomicBool>,
    /// Where the source sends its thread-safe activator once built.
    pub activator: Sender<SyncActivator>,
    /// A served run's watch: a request it calls abandoned enters as its failure record, so
    /// that no node spends time on it (see `crate::watch`). `None` for a file run.
    pub watch: Option<crate::watch::WatchSlot>,
    /// An offline run's admission window, set by the priority controller (SPEC 10.8): the
    /// source admits while fewer than its limit are inside, and stops for good once it is
    /// stopped. `None`: only `max_inflight` bounds admission.
    pub window: Option<Arc<crate::pool::priority::Window>>,
}

/// Admission state shared by the source and the sink of worker 0.
#[derive(Default)]
pub struct Flow {
    pub in_flight: Cell<usize>,
    /// Bytes of the requests admitted in rounds that have not completed.
    pub in_bytes: Cell<usize>,
    pub throttled: Cell<bool>,
    /// Per admission round (timestamp) still in flight: when it was admitted and how many of
    /// its requests have not left, and their bytes (released when the round's last request
    /// leaves). Every request of a round shares its admission time, so the hot path keeps one
    /// entry per round, not per request.
    pub rounds: RefCell<SeqSlab<(Instant, usize, usize)>>,
    pub source: RefCell<Option<Activator>>,
    /// The offline window that mirrors `in_flight` (see [`Feed::window`]).
    pub window: RefCell<Option<Arc<crate::pool::priority::Window>>>,
}

impl Flow {
    /// `n` requests holding `bytes` were admitted under timestamp `round` at `at`.
    pub fn admitted(&self, round: u64, at: Instant, n: usize, bytes: usize) {
        self.in_flight.set(self.in_flight.get() + n);
        self.in_bytes.set(self.in_bytes.get() + bytes);
        if let Some(w) = self.window.borrow().as_ref() {
            w.admitted(n);
        }
        self.rounds.borrow_mut().insert(round, (at, n, bytes));
    }

    /// A request of timestamp `round` left the dataflow: its admission time, and a wake-up for
    /// a throttled source.
    pub fn finished(&self, round: u64) -> Option<Instant> {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        if let Some(w) = self.window.borrow().as_ref() {
            w.finished();
        }
        if self.throttled.replace(false) {
            if let Some(a) = self.source.borrow().as_ref() {
                a.activate();
            }
        }
        let mut rounds = self.rounds.borrow_mut();
        let entry = rounds.get_mut(round)?;
        let at = entry.0;
        entry.1 = entry.1.saturating_sub(1);
        if entry.1 == 0 {
            self.in_bytes
                .set(self.in_bytes.get().saturating_sub(entry.2));
            rounds.remove(round);
        }
        Some(at)
    }
}

/// The source operator. Only the worker given a `feed` produces anything.
pub fn request_source<'s>(
    scope: Scope<'s, u64>,
    feed: Option<Feed>,
    flow: Rc<Flow>,
    max_inflight: usize,
    max_bytes: usize,
) -> Stream<'s, u64, Vec<Rec>> {
    source::<_, CapacityContainerBuilder<Vec<Rec>>, _, _>(scope, "requests", move |cap, info| {
        let mut cap = Some(cap);
        let mut feed = feed;
        let me = scope.activator_for(Rc::clone(&info.address));
        if let Some(f) = &feed {
            *flow.source.borrow_mut() = Some(me.clone());
            *flow.window.borrow_mut() = f.window.clone();
            // The receiver lives as long as the run; if it is gone the run is over anyway.
            let _ = f
                .activator
                .send(scope.worker().sync_activator_for(info.address.to_vec()));
        }
        let max_inflight = max_inflight.max(1);
        move |output| {
            let Some(f) = feed.as_ref() else {
                cap = None;
                return;
            };
            let Some(c) = cap.as_mut() else { return };
            f.wake.store(false, Ordering::SeqCst);
            let window = f.window.as_ref();
            if f.stop.load(Ordering::SeqCst) || window.is_some_and(|w| w.stopped()) {
                cap = None;
                feed = None;
                return;
            }
            let bound = window.map_or(max_inflight, |w| w.limit().min(max_inflight));
            let room = bound.saturating_sub(flow.in_flight.get());
            let budget = room.min(ROUND);
            let held = flow.in_bytes.get();
            if budget == 0 || (held >= max_bytes && flow.in_flight.get() > 0) {
                flow.throttled.set(true);
                if window.is_some() {
                    // The controller may widen (or stop) the window without a request
                    // leaving: look again soon.
                    me.activate_after(WINDOW_POLL);
                }
                return;
            }
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            let mut closed = false;
            let mut full = false;
            while batch.len() < budget {
                if held + bytes >= max_bytes {
                    full = true;
                    break;
                }
                match f.requests.try_recv() {
                    Ok(r) => {
                        bytes += r.values.iter().map(Value::approx_bytes).sum::<usize>();
                        batch.push(r);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let n = batch.len();
            if n > 0 {
                let t = *c.time();
                let mut session = output.session(&*c);
                for r in batch {
                    // A served request nobody waits for any more leaves as a failure at once.
                    let gone = f.watch.as_ref().and_then(|w| w.0.abandoned(r.id));
                    session.give(Rec {
                        id: r.id,
                        src: 0,
                        body: match gone {
                            Some(why) => Err(why.failure("admission")),
                            None => Ok(r.values),
                        },
                    });
                }
                drop(session);
                flow.admitted(t, Instant::now(), n, bytes);
                c.downgrade(&(t + 1));
            }
            if closed {
                cap = None;
                feed = None;
            } else if full {
                // Woken by the sink when a round completes and its bytes are released.
                flow.throttled.set(true);
            } else if n == budget {
                if budget == room {
                    flow.throttled.set(true);
                } else {
                    me.activate();
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rounds_bytes_are_released_when_its_last_request_leaves() {
        let flow = Flow::default();
        let at = Instant::now();
        flow.admitted(0, at, 2, 3000);
        flow.admitted(1, at, 1, 500);
        assert_eq!((flow.in_flight.get(), flow.in_bytes.get()), (3, 3500));
        assert_eq!(flow.finished(0), Some(at));
        assert_eq!((flow.in_flight.get(), flow.in_bytes.get()), (2, 3500));
        flow.finished(0);
        assert_eq!((flow.in_flight.get(), flow.in_bytes.get()), (1, 500));
        flow.finished(1);
        assert_eq!((flow.in_flight.get(), flow.in_bytes.get()), (0, 0));
    }

    #[test]
    fn values_count_their_payload() {
        let big = Value::Text("x".repeat(5 << 20));
        assert!(big.approx_bytes() >= 5 << 20);
        let list = Value::List(vec![big.clone(), big]);
        assert!(list.approx_bytes() >= 10 << 20);
        assert!(Value::Int(1).approx_bytes() < 64);
    }
}
