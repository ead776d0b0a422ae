//! Tests of `run::service` (a file of their own to keep `service.rs` short).
use super::*;
use crate::node::{per_item, NodeContext};
use crate::value::NodeError;
use std::sync::mpsc;

fn registry() -> Registry {
    let mut r = Registry::new();
    r.builtin(
        "t.slow_inc",
        Arc::new(|_: &NodeContext| {
            Ok(per_item(|it| match it.first() {
                Some(Value::Int(i)) => {
                    std::thread::sleep(Duration::from_millis(2));
                    Ok(vec![Value::Int(i + 1)])
                }
                _ => Err(NodeError::new("expected an Int")),
            }))
        }),
    );
    r
}

fn plan() -> Plan {
    Plan::from_yaml(
        r#"
mars_plan: 1
mars_version: test
pipeline: p
inputs_of_plan: {source: p.mars, source_hash: "sha256:0"}
inputs: [{name: x, type: Int}, {name: b, type: Bytes, default: {"$base64": ""}}]
outputs: [{name: y, type: Int, from: {node: a}}]
nodes:
  - id: a
    kind: inc
    implementation: {builtin: t.slow_inc}
    args: [{input: x}]
    in_types: [Int]
    out_types: [Int]
    device: cpu
    worker: local
    replicas: 1
    batch: {policy: none, max: 1, wait_ms: 0.0}
    predicted: {latency_ms: 1.0, p99_ms: 1.0, throughput: 1000.0, utilization: 0.1}
predicted: {throughput: 1000.0, latency_p50_ms: 1.0, latency_p99_ms: 1.0, bottleneck: a}
"#,
        "p.plan.yaml",
    )
    .expect("a valid plan")
}

fn start(opts: ServiceOptions) -> Service {
    Service::start(&plan(), Path::new("."), &registry(), opts).expect("starts")
}

#[test]
fn every_request_gets_its_own_outcome_from_many_threads() {
    let s = Arc::new(start(ServiceOptions::default()));
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        for t in 0..4i64 {
            let s = Arc::clone(&s);
            let tx = tx.clone();
            scope.spawn(move || {
                for k in 0..50i64 {
                    let x = t * 1000 + k;
                    let values = s.decode(&serde_json::json!({ "x": x })).expect("decodes");
                    let tx = tx.clone();
                    let reply: Reply = Box::new(move |o: Outcome| {
                        let _ = tx.send((x, o));
                    });
                    // The queue holds 1024: nothing is refused here.
                    s.submit(values, Ticket::default(), reply)
                        .expect("admitted");
                }
            });
        }
    });
    drop(tx);
    let got: Vec<(i64, Outcome)> = rx.iter().collect();
    assert_eq!(got.len(), 200);
    for (x, o) in got {
        assert_eq!(o.result, Ok(vec![Value::Int(x + 1)]));
    }
    assert!(s.drain(Duration::from_secs(10)));
    assert_eq!(s.node_stats()[0].1.items, 200);
}

#[test]
fn a_full_queue_refuses_and_a_passed_deadline_never_reaches_the_node() {
    let s = start(ServiceOptions {
        queue: 2,
        max_inflight: 1,
        ..ServiceOptions::default()
    });
    let (tx, rx) = mpsc::channel();
    let mut refused = 0;
    let mut admitted = 0;
    for x in 0..200 {
        let tx = tx.clone();
        let values = s.decode(&serde_json::json!({ "x": x })).expect("decodes");
        match s.submit(
            values,
            Ticket::default(),
            Box::new(move |o| drop(tx.send(o))),
        ) {
            Ok(_) => admitted += 1,
            Err(Refused::Full) => refused += 1,
            Err(Refused::Closed) => panic!("not closing"),
        }
    }
    assert!(
        refused > 0,
        "a queue of 2 before a 2 ms node refuses some of 200"
    );
    let past = Some(Instant::now() - Duration::from_millis(1));
    let values = s.decode(&serde_json::json!({"x": 1})).expect("decodes");
    let (dtx, drx) = mpsc::channel();
    let mut late = None;
    // Wait for room in the queue without sleeping on a clock: retry while refused.
    while late.is_none() {
        let dtx = dtx.clone();
        let v = values.clone();
        let t = Ticket {
            deadline: past,
            partial: None,
        };
        late = s.submit(v, t, Box::new(move |o| drop(dtx.send(o)))).ok();
        std::thread::yield_now();
    }
    let o = drx.recv().expect("answered");
    let f = o.result.expect_err("dropped");
    assert_eq!(f.node, crate::watch::DEADLINE_NODE);
    drop(tx);
    assert_eq!(rx.iter().count(), admitted);
    assert!(s.drain(Duration::from_secs(10)));
    assert_eq!(s.node_stats()[0].1.items, admitted as u64);
    let after = s.decode(&serde_json::json!({"x": 1})).expect("decodes");
    assert_eq!(
        s.submit(after, Ticket::default(), Box::new(|_| {})),
        Err(Refused::Closed)
    );
}

/// A generating node that spells its input out one character per step.
#[derive(Default)]
struct Spell {
    seqs: HashMap<u64, (Vec<char>, usize)>,
    forgotten: Arc<AtomicU64>,
}

impl crate::node::Node for Spell {
    fn run_batch(
        &mut self,
        _: Vec<crate::node::Item>,
    ) -> Vec<Result<crate::node::Outputs, NodeError>> {
        unreachable!("driven step by step")
    }
    fn generator(&mut self) -> Option<&mut dyn crate::node::Generate> {
        Some(self)
    }
}

impl crate::node::Generate for Spell {
    fn admit(&mut self, seq: u64, item: crate::node::Item) -> Result<usize, NodeError> {
        let text = item[0].as_text()?.chars().collect();
        self.seqs.insert(seq, (text, 0));
        Ok(1)
    }
    fn prefill(&mut self, seqs: &[u64]) -> Vec<(u64, crate::node::Step)> {
        seqs.iter()
            .map(|&s| (s, crate::node::Step::Running { cached: 1 }))
            .collect()
    }
    fn step(&mut self, seqs: &[u64]) -> Vec<(u64, crate::node::Step)> {
        seqs.iter()
            .map(|&s| {
                let e = self.seqs.get_mut(&s).expect("admitted");
                e.1 += 1;
                if e.1 > e.0.len() {
                    let (t, _) = self.seqs.remove(&s).expect("present");
                    let out = t.into_iter().collect::<String>();
                    (s, crate::node::Step::Done(Ok(vec![Value::Text(out)])))
                } else {
                    (s, crate::node::Step::Running { cached: 1 + e.1 })
                }
            })
            .collect()
    }
    fn preempt(&mut self, _: u64) -> usize {
        0
    }
    fn forget(&mut self, seq: u64) {
        if self.seqs.remove(&seq).is_some() {
            self.forgotten.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn max_sequence_tokens(&self) -> usize {
        64
    }
    fn generated_text(&self, seq: u64) -> Option<String> {
        self.seqs
            .get(&seq)
            .map(|(t, n)| t[..(*n).min(t.len())].iter().collect())
    }
}

fn spell_plan() -> Plan {
    Plan::from_yaml(
        r#"
mars_plan: 1
mars_version: test
pipeline: spell
inputs_of_plan: {source: p.mars, source_hash: "sha256:0"}
inputs: [{name: text, type: Text}]
outputs: [{name: out, type: Text, from: {node: g}}]
nodes:
  - id: g
    kind: Speller
    implementation: {model: {arch: t.spell, config: {generate: true}}}
    args: [{input: text}]
    in_types: [Text]
    out_types: [Text]
    device: cpu
    worker: local
    replicas: 1
    batch: {policy: continuous, max: 4, wait_ms: 0.0}
    predicted: {latency_ms: 1.0, p99_ms: 1.0, throughput: 1000.0, utilization: 0.1}
predicted: {throughput: 1000.0, latency_p50_ms: 1.0, latency_p99_ms: 1.0, bottleneck: g}
"#,
        "spell.plan.yaml",
    )
    .expect("a valid plan")
}

#[test]
fn a_streamed_request_sees_its_text_grow_and_a_cancelled_one_frees_its_sequence() {
    let forgotten = Arc::new(AtomicU64::new(0));
    let mut r = Registry::new();
    let f = Arc::clone(&forgotten);
    r.model(
        "t.spell",
        Arc::new(move |_: &NodeContext| {
            Ok(Box::new(Spell {
                forgotten: Arc::clone(&f),
                ..Spell::default()
            }) as Box<dyn crate::node::Node>)
        }),
    );
    let s = Service::start(&spell_plan(), Path::new("."), &r, ServiceOptions::default())
        .expect("starts");
    assert_eq!(s.streamed_output(), Some(0));
    let (ptx, prx) = mpsc::channel::<String>();
    let (tx, rx) = mpsc::channel();
    let ticket = Ticket {
        deadline: None,
        partial: Some(Box::new(move |t: &str| drop(ptx.send(t.to_string())))),
    };
    let v = s
        .decode(&serde_json::json!({"text": "hello"}))
        .expect("decodes");
    let tx2 = tx.clone();
    s.submit(v, ticket, Box::new(move |o| drop(tx2.send(o))))
        .expect("admitted");
    let o = rx.recv().expect("answered");
    assert_eq!(o.result, Ok(vec![Value::Text("hello".into())]));
    let seen: Vec<String> = prx.try_iter().collect();
    assert_eq!(seen, vec!["h", "he", "hel", "hell", "hello"]);

    // Cancelled after its first piece of text: it leaves as an error and the node forgets it.
    // The replica waits in the callback until the test has cancelled, so the sequence is
    // still running when it is cancelled.
    let long = "x".repeat(60);
    let (ptx, prx) = mpsc::channel::<String>();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let gate = Mutex::new(gate_rx);
    let ticket = Ticket {
        deadline: None,
        partial: Some(Box::new(move |t: &str| {
            if ptx.send(t.to_string()).is_ok() {
                let _ = gate.lock().map(|g| g.recv());
            }
        })),
    };
    let v = s
        .decode(&serde_json::json!({ "text": long }))
        .expect("decodes");
    let id = s
        .submit(v, ticket, Box::new(move |o| drop(tx.send(o))))
        .expect("admitted");
    prx.recv().expect("a first piece");
    s.cancel(id);
    drop(prx);
    drop(gate_tx);
    let o = rx.recv().expect("answered");
    let f = o.result.expect_err("cancelled");
    assert!(f.message.contains("the caller went away"), "{f:?}");
    assert_eq!(forgotten.load(Ordering::SeqCst), 1);
    assert!(s.drain(Duration::from_secs(10)));
}

#[test]
fn the_warm_up_request_runs_every_node_once_with_defaults_or_samples() {
    let s = start(ServiceOptions::default());
    // `x` has no default (a sample Int), `b` has one (empty bytes).
    assert_eq!(
        s.warm_up_values(),
        vec![Value::Int(1), Value::Bytes(Arc::new(Vec::new()))]
    );
    let w = s.warm_up(Duration::from_secs(10)).expect("warms up");
    assert_eq!(w.failure, None);
    assert_eq!(s.node_stats()[0].1.items, 1);
    assert!(w.took >= Duration::from_millis(2), "{w:?}");
    assert_eq!(
        sample(&"List<Tensor<f32, [2, N]>>".parse().expect("a type")),
        Value::List(vec![Value::Tensor(Arc::new(crate::value::TensorData {
            dtype: "f32".into(),
            shape: vec![2, 1],
            data: vec![0.0; 2],
        }))])
    );
    assert!(s.drain(Duration::from_secs(10)));
}

#[test]
fn file_references_are_refused_unless_a_folder_allows_them() {
    let s = start(ServiceOptions::default());
    let e = s
        .decode(&serde_json::json!({"x": 1, "b": {"$file": "/etc/passwd"}}))
        .expect_err("refused");
    assert!(
        e.starts_with("field `b`: `$file` inputs are refused"),
        "{e}"
    );
    let dir = std::env::temp_dir().join(format!("mars-serve-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("a.bin"), b"abc").expect("writes");
    let s = start(ServiceOptions {
        allow_files: Some(dir.clone()),
        ..ServiceOptions::default()
    });
    let ok = s
        .decode(&serde_json::json!({"x": 1, "b": {"$file": "a.bin"}}))
        .expect("allowed");
    assert_eq!(ok[1], Value::Bytes(Arc::new(b"abc".to_vec())));
    let e = s
        .decode(&serde_json::json!({"x": 1, "b": {"$file": "../a.bin"}}))
        .expect_err("outside");
    assert!(e.contains("only relative paths inside"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
