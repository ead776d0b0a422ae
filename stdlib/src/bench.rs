//! `std.bench` implementations: calibration nodes of known cost (language.md §7).
//!
//! Each passes its input through unchanged. `bench.delay` sleeps (a device-bound stage that
//! leaves the CPU idle), `bench.spin` burns one CPU core for as long, `bench.fail` fails a
//! deterministic, seeded share of items. Their static parameters come from the plan node's
//! `params`; a parameter of the wrong type or out of range fails the node's construction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mars_runtime::{Item, Node, NodeContext, NodeError, Outputs, Registry, Value};

/// Register this module's nodes under the builtin ids `bench.delay`, `bench.spin` and
/// `bench.fail`.
pub fn register(registry: &mut Registry) {
    registry.builtin(
        "bench.delay",
        Arc::new(|ctx: &NodeContext| {
            Ok(Box::new(Cost::from_ctx(ctx, Burn::Sleep)?) as Box<dyn Node>)
        }),
    );
    registry.builtin(
        "bench.spin",
        Arc::new(|ctx: &NodeContext| {
            Ok(Box::new(Cost::from_ctx(ctx, Burn::Spin)?) as Box<dyn Node>)
        }),
    );
    registry.builtin(
        "bench.fail",
        Arc::new(|ctx: &NodeContext| Ok(Box::new(Fail::from_ctx(ctx)?) as Box<dyn Node>)),
    );
    crate::bench_shift::register(registry);
}

/// How a cost node spends its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Burn {
    /// Sleep: the thread is parked, no CPU is used.
    Sleep,
    /// Busy-loop on the calling thread: one core at 100%.
    Spin,
}

/// `bench.delay` / `bench.spin`: `batch_ms + item_ms × batch size` per batch.
#[derive(Debug)]
struct Cost {
    batch_ms: f64,
    item_ms: f64,
    burn: Burn,
}

impl Cost {
    fn from_ctx(ctx: &NodeContext, burn: Burn) -> Result<Cost, NodeError> {
        let batch_ms = float_param(ctx, "batch_ms", 0.0)?;
        let item_ms = float_param(ctx, "item_ms", 0.0)?;
        for (name, v) in [("batch_ms", batch_ms), ("item_ms", item_ms)] {
            if v < 0.0 {
                return Err(NodeError::new(format!(
                    "node `{}`: parameter `{name}` is {v}; it must be non-negative",
                    ctx.node.id
                )));
            }
        }
        Ok(Cost {
            batch_ms,
            item_ms,
            burn,
        })
    }

    fn cost(&self, batch_size: usize) -> Duration {
        Duration::from_secs_f64((self.batch_ms + self.item_ms * batch_size as f64) / 1000.0)
    }
}

impl Node for Cost {
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        if batch.is_empty() {
            return Vec::new();
        }
        let cost = self.cost(batch.len());
        match self.burn {
            Burn::Sleep => sleep_for(cost),
            Burn::Spin => spin_for(cost),
        }
        batch.into_iter().map(Ok).collect()
    }
}

/// Sleep for `d`, resuming the sleep if the OS wakes the thread early.
pub(crate) fn sleep_for(d: Duration) {
    let deadline = Instant::now() + d;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep(deadline - now);
    }
}

/// Keep one core busy until this thread has used `d` of CPU time. Counting CPU time rather than
/// wall time makes the stage's CPU cost exact whatever else the machine is doing: on a busy
/// machine it takes longer, but it never costs less CPU than it says (which the planner's CPU
/// budget relies on).
fn spin_for(d: Duration) {
    let cpu_start = thread_cpu_time();
    let wall_start = Instant::now();
    // Where the thread's CPU clock is unavailable, wall time is the next best measure.
    let done = || match cpu_start {
        Some(start) => thread_cpu_time().is_none_or(|now| now >= start + d),
        None => wall_start.elapsed() >= d,
    };
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while !done() {
        // A little arithmetic between clock reads so the loop is CPU work, not only clock calls.
        for _ in 0..64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
        std::hint::black_box(x);
    }
}

/// CPU time used by the calling thread, where the OS can tell.
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// `bench.fail`: fails the items whose seeded hash falls below `rate`.
#[derive(Debug)]
struct Fail {
    rate: f64,
    seed: u64,
}

impl Fail {
    fn from_ctx(ctx: &NodeContext) -> Result<Fail, NodeError> {
        let rate = float_param(ctx, "rate", 0.0)?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(NodeError::new(format!(
                "node `{}`: parameter `rate` is {rate}; it must be in [0, 1]",
                ctx.node.id
            )));
        }
        let seed = int_param(ctx, "seed", 0)?;
        Ok(Fail {
            rate,
            seed: seed as u64,
        })
    }

    /// Whether this item fails: a function of the item's content and the seed only, so a rerun
    /// (or another replica) fails exactly the same items.
    fn fails(&self, item: &Item) -> bool {
        let mut h = Fnv::new();
        h.u64(self.seed);
        for v in item {
            hash_value(&mut h, v);
        }
        // Top 53 bits as a uniform number in [0, 1).
        let u = (mix(h.0) >> 11) as f64 / (1u64 << 53) as f64;
        u < self.rate
    }
}

impl Node for Fail {
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        batch
            .into_iter()
            .map(|item| {
                if self.fails(&item) {
                    Err(NodeError::new(format!(
                        "injected failure (std.bench.fail, rate {}, seed {})",
                        self.rate, self.seed
                    )))
                } else {
                    Ok(item)
                }
            })
            .collect()
    }
}

/// 64-bit FNV-1a: stable across Rust versions and platforms, unlike `DefaultHasher`.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn u64(&mut self, x: u64) {
        self.bytes(&x.to_le_bytes());
    }
    fn tag(&mut self, t: u8) {
        self.bytes(&[t]);
    }
}

/// Final avalanche (splitmix64's), so nearby inputs give unrelated fractions.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash a value's content, with a tag per variant and lengths before sequences so that
/// different values do not collide by concatenation.
fn hash_value(h: &mut Fnv, v: &Value) {
    match v {
        Value::Bytes(b) => {
            h.tag(0);
            h.u64(b.len() as u64);
            h.bytes(b);
        }
        Value::Text(s) => {
            h.tag(1);
            h.u64(s.len() as u64);
            h.bytes(s.as_bytes());
        }
        Value::Int(i) => {
            h.tag(2);
            h.u64(*i as u64);
        }
        Value::Float(f) => {
            h.tag(3);
            h.u64(f.to_bits());
        }
        Value::Bool(b) => {
            h.tag(4);
            h.tag(u8::from(*b));
        }
        Value::Json(j) => {
            h.tag(5);
            // serde_json's map is ordered by key, so this text is canonical.
            let s = j.to_string();
            h.u64(s.len() as u64);
            h.bytes(s.as_bytes());
        }
        Value::Image(img) => {
            h.tag(6);
            h.u64(u64::from(img.width));
            h.u64(u64::from(img.height));
            h.bytes(&img.rgb);
        }
        Value::Box(b) => {
            h.tag(7);
            for x in [b.x, b.y, b.w, b.h] {
                h.u64(x.to_bits());
            }
        }
        Value::List(items) => {
            h.tag(8);
            h.u64(items.len() as u64);
            for x in items {
                hash_value(h, x);
            }
        }
        Value::Tensor(t) => {
            h.tag(9);
            h.bytes(t.dtype.as_bytes());
            h.u64(t.shape.len() as u64);
            for &d in &t.shape {
                h.u64(d as u64);
            }
            for x in &t.data {
                h.bytes(&x.to_bits().to_le_bytes());
            }
        }
    }
}

pub(crate) fn float_param(ctx: &NodeContext, name: &str, default: f64) -> Result<f64, NodeError> {
    match ctx.node.params.get(name) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(v) => match v.as_f64() {
            Some(f) if f.is_finite() => Ok(f),
            _ => Err(NodeError::new(format!(
                "node `{}`: parameter `{name}` must be a number, got `{v}`",
                ctx.node.id
            ))),
        },
    }
}

pub(crate) fn int_param(ctx: &NodeContext, name: &str, default: i64) -> Result<i64, NodeError> {
    match ctx.node.params.get(name) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(v) => v.as_i64().ok_or_else(|| {
            NodeError::new(format!(
                "node `{}`: parameter `{name}` must be an integer, got `{v}`",
                ctx.node.id
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mars_plan::{BatchPolicy, BatchSpec, Device, Implementation, NodePrediction, PlanNode};
    use std::collections::BTreeMap;

    fn ctx(builtin: &str, params: &[(&str, serde_json::Value)]) -> NodeContext {
        NodeContext {
            node: PlanNode {
                id: "n".into(),
                kind: format!("std.{builtin}"),
                implementation: Implementation {
                    builtin: Some(builtin.into()),
                    exec: None,
                    model: None,
                },
                map_over: None,
                args: vec![],
                params: params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect::<BTreeMap<_, _>>(),
                in_types: vec!["Int".into()],
                out_types: vec!["Int".into()],
                device: Device::Cpu,
                worker: "w0".into(),
                gpu: None,
                replicas: 1,
                replica_range: None,
                batch: BatchSpec {
                    policy: BatchPolicy::None,
                    max: 1,
                    wait_ms: 0.0,
                },
                timeout_ms: None,
                predicted: NodePrediction {
                    latency_ms: 0.0,
                    p99_ms: 0.0,
                    throughput: 0.0,
                    utilization: 0.0,
                },
            },
            replica: 0,
            base_dir: std::path::PathBuf::from("."),
        }
    }

    fn build(
        builtin: &str,
        params: &[(&str, serde_json::Value)],
    ) -> Result<Box<dyn Node>, NodeError> {
        let mut r = Registry::new();
        register(&mut r);
        r.instantiate(&ctx(builtin, params))
    }

    fn ints(n: i64) -> Vec<Item> {
        (0..n).map(|i| vec![Value::Int(i)]).collect()
    }

    #[test]
    fn delay_passes_items_through_and_takes_at_least_its_cost() {
        let mut node = build(
            "bench.delay",
            &[("batch_ms", 2.0.into()), ("item_ms", 1.0.into())],
        )
        .expect("builds");
        let start = Instant::now();
        let out = node.run_batch(ints(3));
        // A lower bound only: sleeping never returns early.
        assert!(start.elapsed() >= Duration::from_millis(5));
        let got: Vec<_> = out.into_iter().map(|r| r.expect("ok")).collect();
        assert_eq!(got, ints(3));
    }

    // CPU-time bounds below are far from the expected values, so that a loaded machine (where
    // the spinning thread gets only part of a core) cannot make them fail.
    #[test]
    fn spin_burns_cpu_time_not_just_wall_time() {
        let mut node = build("bench.spin", &[("item_ms", 100.0.into())]).expect("builds");
        let cpu_before = thread_cpu_time();
        let out = node.run_batch(ints(2));
        let cpu = thread_cpu_time() - cpu_before;
        // spin counts this thread's CPU time, so this holds however busy the machine is.
        assert!(
            cpu >= Duration::from_millis(199),
            "spin used only {cpu:?} of CPU for 200 ms"
        );
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn delay_does_not_burn_cpu() {
        let mut node = build("bench.delay", &[("item_ms", 50.0.into())]).expect("builds");
        let cpu_before = thread_cpu_time();
        node.run_batch(ints(1));
        let cpu = thread_cpu_time() - cpu_before;
        assert!(
            cpu < Duration::from_millis(25),
            "delay used {cpu:?} of CPU in 50 ms"
        );
    }

    /// CPU time of the calling thread, in nanoseconds from `/proc/thread-self/schedstat`.
    fn thread_cpu_time() -> Duration {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("procfs");
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .expect("schedstat run time");
        Duration::from_nanos(ns)
    }

    #[test]
    fn fail_is_deterministic_and_near_its_rate() {
        let mut a =
            build("bench.fail", &[("rate", 0.3.into()), ("seed", 7.into())]).expect("builds");
        let mut b =
            build("bench.fail", &[("rate", 0.3.into()), ("seed", 7.into())]).expect("builds");
        let ra: Vec<bool> = a.run_batch(ints(2000)).iter().map(Result::is_err).collect();
        // Same items in another order and another batching: the same ones fail.
        let mut rb = vec![false; 2000];
        for chunk in (0..2000i64).rev().collect::<Vec<_>>().chunks(37) {
            let items: Vec<Item> = chunk.iter().map(|&i| vec![Value::Int(i)]).collect();
            for (&i, r) in chunk.iter().zip(b.run_batch(items)) {
                rb[i as usize] = r.is_err();
            }
        }
        assert_eq!(ra, rb);
        let failed = ra.iter().filter(|&&f| f).count();
        assert!(
            (500..700).contains(&failed),
            "{failed} of 2000 failed at rate 0.3"
        );
    }

    #[test]
    fn fail_depends_on_seed_and_passes_the_rest_through() {
        let mut a =
            build("bench.fail", &[("rate", 0.5.into()), ("seed", 1.into())]).expect("builds");
        let mut b =
            build("bench.fail", &[("rate", 0.5.into()), ("seed", 2.into())]).expect("builds");
        let ra: Vec<bool> = a.run_batch(ints(200)).iter().map(Result::is_err).collect();
        let rb = b.run_batch(ints(200));
        assert_ne!(ra, rb.iter().map(Result::is_err).collect::<Vec<_>>());
        for (i, r) in rb.into_iter().enumerate() {
            if let Ok(v) = r {
                assert_eq!(v, vec![Value::Int(i as i64)]);
            }
        }
    }

    #[test]
    fn fail_rate_edges() {
        let mut never = build("bench.fail", &[("rate", 0.0.into())]).expect("builds");
        assert!(never.run_batch(ints(100)).iter().all(Result::is_ok));
        let mut always = build("bench.fail", &[("rate", 1.0.into())]).expect("builds");
        let out = always.run_batch(ints(100));
        assert!(out.iter().all(Result::is_err));
        assert!(out[0]
            .as_ref()
            .expect_err("err")
            .message
            .contains("injected failure"));
    }

    #[test]
    fn bad_params_are_errors() {
        let e = build("bench.delay", &[("item_ms", "slow".into())])
            .err()
            .expect("fails");
        assert!(e.message.contains("item_ms"), "{}", e.message);
        assert!(build("bench.spin", &[("batch_ms", (-1.0).into())]).is_err());
        assert!(build("bench.fail", &[("rate", 1.5.into())]).is_err());
        assert!(build("bench.fail", &[("seed", 1.5.into())]).is_err());
    }

    #[test]
    fn content_hash_distinguishes_structure() {
        let f = |v: Vec<Value>| {
            let mut h = Fnv::new();
            for x in &v {
                hash_value(&mut h, x);
            }
            h.0
        };
        assert_ne!(
            f(vec![Value::Text("ab".into()), Value::Text("c".into())]),
            f(vec![Value::Text("a".into()), Value::Text("bc".into())])
        );
        assert_ne!(f(vec![Value::Int(1)]), f(vec![Value::Float(1.0)]));
        assert_eq!(
            f(vec![Value::List(vec![Value::Int(3)])]),
            f(vec![Value::List(vec![Value::Int(3)])])
        );
    }
}
