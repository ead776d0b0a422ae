//! Whole-run benchmarks of the runtime (`marsc bench`, `runtime/benches/`): plans built in code,
//! requests generated on the fly (never held in memory), output encoded and discarded.
//!
//! The plans use the `bench.delay` builtin, which the registry passed in must provide (the
//! stdlib registers it; the criterion benches register a stand-in).

use std::io::{BufRead, Read, Write};
use std::path::Path;

use mars_plan::{
    Arg, BatchPolicy, BatchSpec, Device, Implementation, NodePrediction, PipelinePrediction, Plan,
    PlanInput, PlanNode, PlanOrigin, PlanOutput, PLAN_VERSION,
};

use crate::node::Registry;
use crate::run::{run_plan, RunError, RunOptions, RunReport};

/// Batching with one item per batch.
pub fn batch_none() -> BatchSpec {
    BatchSpec {
        policy: BatchPolicy::None,
        max: 1,
        wait_ms: 0.0,
    }
}

/// Dynamic batching up to `max`, waiting at most `wait_ms`.
pub fn batch_dynamic(max: u32, wait_ms: f64) -> BatchSpec {
    BatchSpec {
        policy: BatchPolicy::Dynamic,
        max,
        wait_ms,
    }
}

/// A chain of `bench.delay` nodes `s0 → s1 → …`, one per entry of `item_ms`, over an `Int`
/// input `x`; the output `y` is the last node's. Predictions: the bottleneck stage's rate.
pub fn delay_chain(name: &str, item_ms: &[f64], batch: BatchSpec, replicas: u32) -> Plan {
    let nodes: Vec<PlanNode> = item_ms
        .iter()
        .enumerate()
        .map(|(i, &ms)| {
            let arg = if i == 0 {
                Arg::input("x")
            } else {
                Arg::node(format!("s{}", i - 1), 0)
            };
            let rate = if ms > 0.0 {
                1000.0 * f64::from(replicas) / ms
            } else {
                f64::INFINITY
            };
            PlanNode {
                id: format!("s{i}"),
                kind: "delay".into(),
                implementation: Implementation {
                    builtin: Some("bench.delay".into()),
                    exec: None,
                    model: None,
                },
                map_over: None,
                args: vec![arg],
                params: [
                    ("batch_ms".to_string(), 0.0.into()),
                    ("item_ms".to_string(), ms.into()),
                ]
                .into_iter()
                .collect(),
                in_types: vec!["Int".into()],
                out_types: vec!["Int".into()],
                device: Device::Cpu,
                worker: "local".into(),
                gpu: None,
                replicas,
                replica_range: None,
                batch: batch.clone(),
                timeout_ms: None,
                predicted: NodePrediction {
                    latency_ms: ms,
                    p99_ms: ms,
                    throughput: rate,
                    utilization: 0.0,
                },
            }
        })
        .collect();
    let bottleneck = nodes
        .iter()
        .min_by(|a, b| a.predicted.throughput.total_cmp(&b.predicted.throughput))
        .map(|n| (n.id.clone(), n.predicted.throughput))
        .unwrap_or(("none".into(), f64::INFINITY));
    let last = nodes.last().map(|n| n.id.clone()).unwrap_or_default();
    Plan {
        mars_plan: PLAN_VERSION,
        workers: Vec::new(),
        budget: Vec::new(),
        gpu_shares: Vec::new(),
        mars_version: env!("CARGO_PKG_VERSION").into(),
        pipeline: name.into(),
        inputs_of_plan: PlanOrigin {
            source: format!("{name}.mars"),
            source_hash: "sha256:built-in-benchmark".into(),
            profile_hash: None,
            target_hash: None,
        },
        inputs: vec![PlanInput {
            name: "x".into(),
            ty: "Int".into(),
            default: None,
        }],
        outputs: vec![PlanOutput {
            name: "y".into(),
            ty: "Int".into(),
            from: Arg::node(last, 0),
        }],
        rate: None,
        predicted: PipelinePrediction {
            throughput: if bottleneck.1.is_finite() {
                bottleneck.1
            } else {
                0.0
            },
            latency_p50_ms: item_ms.iter().sum(),
            latency_p99_ms: item_ms.iter().sum(),
            bottleneck: bottleneck.0,
        },
        nodes,
        slos: vec![],
        notes: vec![],
        inline: vec![],
    }
}

/// `n` request lines `{"x": i}` for i = 1..=n, generated as they are read.
pub struct SyntheticInput {
    next: u64,
    n: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl SyntheticInput {
    pub fn new(n: u64) -> SyntheticInput {
        SyntheticInput {
            next: 1,
            n,
            buf: Vec::with_capacity(1 << 16),
            pos: 0,
        }
    }
}

impl Read for SyntheticInput {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let avail = self.fill_buf()?;
        let k = avail.len().min(out.len());
        out[..k].copy_from_slice(&avail[..k]);
        self.consume(k);
        Ok(k)
    }
}

impl BufRead for SyntheticInput {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            while self.next <= self.n && self.buf.len() < (1 << 16) - 32 {
                let _ = writeln!(self.buf, "{{\"x\": {}}}", self.next);
                self.next += 1;
            }
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.buf.len());
    }
}

/// Counts the bytes written and drops them.
#[derive(Debug, Default)]
pub struct CountingSink {
    pub bytes: u64,
}

impl Write for CountingSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.bytes += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Run `plan` over `n` synthetic requests; output is encoded in full and discarded.
pub fn measure(
    plan: &Plan,
    registry: &Registry,
    n: u64,
    opts: RunOptions,
) -> Result<(RunReport, u64), RunError> {
    let mut sink = CountingSink::default();
    let report = run_plan(
        plan,
        Path::new("."),
        registry,
        opts,
        SyntheticInput::new(n),
        &mut sink,
    )?;
    Ok((report, sink.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_input_yields_n_numbered_lines() {
        let lines: Vec<String> = SyntheticInput::new(5000)
            .lines()
            .map(|l| l.expect("line"))
            .collect();
        assert_eq!(lines.len(), 5000);
        assert_eq!(lines[0], "{\"x\": 1}");
        assert_eq!(lines[4999], "{\"x\": 5000}");
    }

    #[test]
    fn a_delay_chain_predicts_its_slowest_stage() {
        let p = delay_chain("stages", &[2.0, 8.0, 4.0, 1.0], batch_none(), 1);
        assert_eq!(p.nodes.len(), 4);
        assert_eq!(p.predicted.bottleneck, "s1");
        assert_eq!(p.predicted.throughput, 125.0);
        assert_eq!(p.outputs[0].from, Arg::node("s3", 0));
    }
}
