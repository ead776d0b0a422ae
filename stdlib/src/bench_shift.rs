//! `bench.shift`: a calibration node whose cost changes midway (SPEC 5.2, 10.4). It sleeps
//! `item_ms` per item until the node (all its replicas together) has run `after` items, then
//! `then_item_ms` per item (`after = 0`: never); a stage whose real cost drifts away from its profile, to test the
//! elastic controller. It sleeps rather than spins so that a test on a small shared machine can
//! stand for a stage that holds one core per replica (its declaration says `cores = 1.0`).
//!
//! The count is shared by the replicas of one node of one registry: every replica that the
//! registry builds for node id N adds to N's count.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mars_runtime::{Item, Node, NodeContext, NodeError, Outputs, Registry};

use crate::bench::{float_param, int_param, sleep_for};

/// Register `bench.shift`.
pub fn register(registry: &mut Registry) {
    let counts: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>> = Arc::default();
    registry.builtin(
        "bench.shift",
        Arc::new(move |ctx: &NodeContext| {
            let count = counts
                .lock()
                .map_err(|_| NodeError::new("bench.shift: a builder panicked"))?
                .entry(ctx.node.id.clone())
                .or_default()
                .clone();
            Ok(Box::new(Shift::from_ctx(ctx, count)?) as Box<dyn Node>)
        }),
    );
}

#[derive(Debug)]
struct Shift {
    item_ms: f64,
    after: u64,
    then_item_ms: f64,
    /// Items the node's replicas have taken so far.
    count: Arc<AtomicU64>,
}

impl Shift {
    fn from_ctx(ctx: &NodeContext, count: Arc<AtomicU64>) -> Result<Shift, NodeError> {
        let item_ms = float_param(ctx, "item_ms", 0.0)?;
        let then_item_ms = float_param(ctx, "then_item_ms", 0.0)?;
        let after = int_param(ctx, "after", 0)?;
        if item_ms < 0.0 || then_item_ms < 0.0 || after < 0 {
            return Err(NodeError::new(format!(
                "node `{}`: `item_ms`, `then_item_ms` and `after` must be non-negative",
                ctx.node.id
            )));
        }
        Ok(Shift {
            item_ms,
            after: after as u64,
            then_item_ms,
            count,
        })
    }

    /// The sleep for a batch of `n` items that starts after `before` items of the node.
    fn cost(&self, before: u64, n: u64) -> Duration {
        let early = if self.after == 0 {
            n
        } else {
            self.after.saturating_sub(before).min(n)
        };
        let late = n - early;
        let ms = self.item_ms * early as f64 + self.then_item_ms * late as f64;
        Duration::from_secs_f64(ms / 1000.0)
    }
}

impl Node for Shift {
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        let n = batch.len() as u64;
        if n == 0 {
            return Vec::new();
        }
        let before = self.count.fetch_add(n, Ordering::Relaxed);
        sleep_for(self.cost(before, n));
        batch.into_iter().map(Ok).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mars_runtime::Value;

    #[test]
    fn the_cost_changes_after_the_nodes_first_items_across_replicas() {
        let mut registry = Registry::new();
        register(&mut registry);
        let node = crate::params::plan_node(
            "bench.shift",
            &[
                ("item_ms", serde_json::json!(1.0)),
                ("after", serde_json::json!(3)),
                ("then_item_ms", serde_json::json!(4.0)),
            ],
        );
        let build = |replica| {
            registry
                .instantiate(&NodeContext {
                    node: node.clone(),
                    replica,
                    base_dir: ".".into(),
                })
                .expect("builds")
        };
        let (mut a, mut b) = (build(0), build(1));
        let probe = Shift {
            item_ms: 1.0,
            after: 3,
            then_item_ms: 4.0,
            count: Arc::default(),
        };
        assert_eq!(probe.cost(0, 2), Duration::from_millis(2));
        assert_eq!(probe.cost(2, 2), Duration::from_millis(5));
        assert_eq!(probe.cost(9, 1), Duration::from_millis(4));
        let never = Shift { after: 0, ..probe };
        assert_eq!(never.cost(1000, 2), Duration::from_millis(2));
        let items = |k: i64| (0..k).map(|i| vec![Value::Int(i)]).collect::<Vec<_>>();
        assert_eq!(a.run_batch(items(2)).len(), 2);
        // Replica b continues the node's count: its batch of two starts at item 3.
        let t = std::time::Instant::now();
        assert_eq!(b.run_batch(items(2)).len(), 2);
        assert!(t.elapsed() >= Duration::from_millis(5));
        let bad = crate::params::plan_node("bench.shift", &[("after", serde_json::json!(-1))]);
        let e = registry
            .instantiate(&NodeContext {
                node: bad,
                replica: 0,
                base_dir: ".".into(),
            })
            .err()
            .expect("refused");
        assert!(e.message.contains("must be non-negative"), "{}", e.message);
    }
}
