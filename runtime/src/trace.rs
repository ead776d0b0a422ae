//! `--trace FILE`: the run as a Chrome trace (the JSON object format that `chrome://tracing`
//! and Perfetto load). One track (`tid`) per node replica, named `NODE#REPLICA`, in plan order;
//! one complete event (`"ph": "X"`) per batch, named after the node, with the batch size and
//! its failed items in `args`. Times are microseconds since the run started.

use serde_json::{json, Value as Json};

use crate::stats::NodeMeter;

/// Build the trace document from the nodes' meters, in plan order.
pub fn chrome_trace(pipeline: &str, meters: &[std::sync::Arc<NodeMeter>]) -> Json {
    let mut events = vec![json!({
        "name": "process_name", "ph": "M", "pid": 1, "tid": 0,
        "args": {"name": format!("mars run: {pipeline}")}
    })];
    let mut tid = 0u64;
    for meter in meters {
        let base = tid;
        for r in 0..meter.replicas {
            tid += 1;
            events.push(json!({
                "name": "thread_name", "ph": "M", "pid": 1, "tid": base + 1 + u64::from(r),
                "args": {"name": format!("{}#{r}", meter.id)}
            }));
            events.push(json!({
                "name": "thread_sort_index", "ph": "M", "pid": 1, "tid": base + 1 + u64::from(r),
                "args": {"sort_index": base + 1 + u64::from(r)}
            }));
        }
        for span in meter.spans() {
            events.push(json!({
                "name": meter.id,
                "cat": "batch",
                "ph": "X",
                "pid": 1,
                "tid": base + 1 + u64::from(span.replica),
                "ts": span.start.as_secs_f64() * 1e6,
                "dur": span.duration.as_secs_f64() * 1e6,
                "args": {"items": span.items, "errors": span.errors},
            }));
        }
    }
    json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn one_track_per_replica_and_one_slice_per_batch() {
        let t0 = Instant::now();
        let a = Arc::new(NodeMeter::new("a", 2, t0, true));
        let b = Arc::new(NodeMeter::new("b", 1, t0, true));
        a.batch(1, t0, t0 + Duration::from_millis(2), 3, 0);
        b.batch(
            0,
            t0 + Duration::from_millis(2),
            t0 + Duration::from_millis(3),
            3,
            1,
        );
        let t = chrome_trace("p", &[a, b]);
        let events = t["traceEvents"].as_array().expect("array");
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .filter_map(|e| e["args"]["name"].as_str())
            .collect();
        assert_eq!(names, ["a#0", "a#1", "b#0"]);
        let slices: Vec<&Json> = events.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(slices.len(), 2);
        assert_eq!(
            (slices[0]["tid"].as_u64(), slices[1]["tid"].as_u64()),
            (Some(2), Some(3))
        );
        assert_eq!(slices[1]["args"]["errors"], 1);
        assert!((slices[0]["dur"].as_f64().unwrap_or(0.0) - 2000.0).abs() < 1.0);
    }
}
