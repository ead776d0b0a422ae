//! Tests of [`super::run_plan`] and the replica set-up.

use super::*;
use crate::node::per_item;
use crate::value::{NodeError, Value};
use mars_plan::{
    Arg, BatchPolicy, BatchSpec, Device, Implementation, NodePrediction, PipelinePrediction,
    PlanInput, PlanNode, PlanOrigin, PlanOutput,
};

fn int(item: &[Value], k: usize) -> Result<i64, NodeError> {
    match item.get(k) {
        Some(Value::Int(i)) => Ok(*i),
        other => Err(NodeError::new(format!("expected Int, got {other:?}"))),
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.builtin(
        "t.inc",
        Arc::new(|_: &NodeContext| Ok(per_item(|it| Ok(vec![Value::Int(int(&it, 0)? + 1)])))),
    );
    r.builtin(
        "t.double",
        Arc::new(|_: &NodeContext| Ok(per_item(|it| Ok(vec![Value::Int(int(&it, 0)? * 2)])))),
    );
    r.builtin(
        "t.add",
        Arc::new(|_: &NodeContext| {
            Ok(per_item(|it| {
                Ok(vec![Value::Int(int(&it, 0)? + int(&it, 1)?)])
            }))
        }),
    );
    r.builtin(
        "t.odd_fails",
        Arc::new(|_: &NodeContext| {
            Ok(per_item(|it| {
                let i = int(&it, 0)?;
                if i % 2 == 1 {
                    Err(NodeError::new(format!("{i} is odd")))
                } else {
                    Ok(vec![Value::Int(i)])
                }
            }))
        }),
    );
    r.builtin(
        "t.panics_on_7",
        Arc::new(|_: &NodeContext| {
            Ok(per_item(|it| {
                let i = int(&it, 0)?;
                assert!(i != 7, "seven");
                Ok(vec![Value::Int(i)])
            }))
        }),
    );
    r
}

fn node(id: &str, builtin: &str, args: Vec<Arg>, batch: BatchSpec, replicas: u32) -> PlanNode {
    PlanNode {
        id: id.into(),
        kind: builtin.into(),
        implementation: Implementation {
            builtin: Some(builtin.into()),
            exec: None,
            model: None,
        },
        map_over: None,
        in_types: vec!["Int".into(); args.len()],
        args,
        params: Default::default(),
        out_types: vec!["Int".into()],
        device: Device::Cpu,
        worker: "w0".into(),
        gpu: None,
        replicas,
        replica_range: None,
        batch,
        timeout_ms: None,
        predicted: NodePrediction {
            latency_ms: 0.0,
            p99_ms: 0.0,
            throughput: 0.0,
            utilization: 0.0,
        },
    }
}

fn none() -> BatchSpec {
    BatchSpec {
        policy: BatchPolicy::None,
        max: 1,
        wait_ms: 0.0,
    }
}

fn dynamic(max: u32, wait_ms: f64) -> BatchSpec {
    BatchSpec {
        policy: BatchPolicy::Dynamic,
        max,
        wait_ms,
    }
}

fn plan(inputs: &[(&str, &str)], nodes: Vec<PlanNode>, outputs: Vec<(&str, &str, Arg)>) -> Plan {
    Plan {
        mars_plan: mars_plan::PLAN_VERSION,
        workers: Vec::new(),
        budget: Vec::new(),
        gpu_shares: Vec::new(),
        mars_version: "test".into(),
        pipeline: "p".into(),
        inputs_of_plan: PlanOrigin {
            source: "p.mars".into(),
            source_hash: "sha256:0".into(),
            profile_hash: None,
            target_hash: None,
        },
        inputs: inputs
            .iter()
            .map(|(n, t)| PlanInput {
                name: (*n).into(),
                ty: (*t).into(),
                default: None,
            })
            .collect(),
        outputs: outputs
            .into_iter()
            .map(|(n, t, from)| PlanOutput {
                name: n.into(),
                ty: t.into(),
                from,
            })
            .collect(),
        nodes,
        rate: None,
        predicted: PipelinePrediction {
            throughput: 1.0,
            latency_p50_ms: 0.0,
            latency_p99_ms: 0.0,
            bottleneck: "none".into(),
        },
        slos: vec![],
        notes: vec![],
        inline: vec![],
    }
}

fn run(plan: &Plan, input: &str, opts: RunOptions) -> (Vec<serde_json::Value>, RunReport) {
    let mut out = Vec::new();
    let report = run_plan(
        plan,
        Path::new("."),
        &registry(),
        opts,
        input.as_bytes(),
        &mut out,
    )
    .expect("the run finishes");
    let lines = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    (lines, report)
}

fn by_id(lines: &[serde_json::Value]) -> BTreeMap<u64, serde_json::Value> {
    let mut m = BTreeMap::new();
    for l in lines {
        let id = l["id"].as_u64().expect("id");
        assert!(
            m.insert(id, l.clone()).is_none(),
            "request {id} written twice"
        );
    }
    m
}

use std::collections::BTreeMap;

fn xs(n: i64) -> String {
    (0..n).map(|i| format!("{{\"x\": {i}}}\n")).collect()
}

#[test]
fn a_chain_runs_every_request_once_in_order_when_asked() {
    let p = plan(
        &[("x", "Int")],
        vec![
            node("inc", "t.inc", vec![Arg::input("x")], dynamic(16, 1.0), 2),
            node("double", "t.double", vec![Arg::node("inc", 0)], none(), 1),
        ],
        vec![("y", "Int", Arg::node("double", 0))],
    );
    let opts = RunOptions {
        ordered: true,
        max_inflight: 7,
        trace: true,
        ..RunOptions::default()
    };
    let (lines, report) = run(&p, &xs(500), opts);
    assert_eq!(lines.len(), 500);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], i as u64 + 1);
        assert_eq!(l["ok"]["y"], (i as i64 + 1) * 2);
        assert!(l["latency_ms"].as_f64().is_some());
    }
    assert_eq!(
        (report.stats.requests, report.stats.ok, report.stats.errors),
        (500, 500, 0)
    );
    assert_eq!(report.stats.nodes["inc"].items, 500);
    let trace = report.trace.expect("trace");
    let slices = trace["traceEvents"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["ph"] == "X")
        .count();
    assert_eq!(
        slices as u64,
        report.stats.nodes["inc"].batches + report.stats.nodes["double"].batches
    );
}

#[test]
fn a_diamond_joins_its_branches_by_request() {
    let p = plan(
        &[("x", "Int")],
        vec![
            node("a", "t.inc", vec![Arg::input("x")], none(), 1),
            node("b", "t.double", vec![Arg::input("x")], dynamic(8, 0.5), 1),
            node(
                "sum",
                "t.add",
                vec![Arg::node("a", 0), Arg::node("b", 0)],
                none(),
                1,
            ),
        ],
        vec![
            ("s", "Int", Arg::node("sum", 0)),
            ("x", "Int", Arg::input("x")),
            ("k", "Int", Arg::value(5.into())),
        ],
    );
    for workers in [1, 3] {
        let (lines, _) = run(
            &p,
            &xs(300),
            RunOptions {
                workers,
                ..RunOptions::default()
            },
        );
        let m = by_id(&lines);
        assert_eq!(m.len(), 300);
        for (id, l) in m {
            let x = id as i64 - 1;
            assert_eq!(
                l["ok"],
                serde_json::json!({"s": 3 * x + 1, "x": x, "k": 5}),
                "workers {workers}"
            );
        }
    }
}

#[test]
fn failures_panics_and_bad_lines_are_records_exactly_once() {
    let p = plan(
        &[("x", "Int")],
        vec![
            node(
                "odd",
                "t.odd_fails",
                vec![Arg::input("x")],
                dynamic(4, 0.0),
                2,
            ),
            node("seven", "t.panics_on_7", vec![Arg::input("x")], none(), 1),
            node(
                "sum",
                "t.add",
                vec![Arg::node("odd", 0), Arg::node("seven", 0)],
                none(),
                1,
            ),
        ],
        vec![("s", "Int", Arg::node("sum", 0))],
    );
    let input = "{\"x\": 2}\n{\"x\": 3}\nnot json\n{\"x\": \"a\"}\n{}\n{\"x\": 8}\n{\"x\": 7}\n";
    let (lines, report) = run(&p, input, RunOptions::default());
    let m = by_id(&lines);
    assert_eq!(
        m.keys().copied().collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert_eq!(m[&1]["ok"]["s"], 4);
    assert_eq!(
        m[&2]["error"],
        serde_json::json!({"node": "odd", "message": "3 is odd"})
    );
    assert_eq!(m[&3]["error"]["node"], "input");
    assert_eq!(
        m[&4]["error"]["message"],
        "field `x`: expected Int, got `\"a\"`"
    );
    assert_eq!(m[&5]["error"]["message"], "missing field `x` (Int)");
    assert_eq!(m[&6]["ok"]["s"], 16);
    // 7 is odd too: the first failing producer in argument order names the request's error.
    assert_eq!(m[&7]["error"]["node"], "odd");
    assert_eq!(report.stats.errors_by_node.get("input"), Some(&3));
    assert_eq!(report.stats.nodes["seven"].item_errors, 1);
}

#[test]
fn a_panic_fails_only_its_batch() {
    let p = plan(
        &[("x", "Int")],
        vec![node(
            "seven",
            "t.panics_on_7",
            vec![Arg::input("x")],
            none(),
            1,
        )],
        vec![("y", "Int", Arg::node("seven", 0))],
    );
    let (lines, _) = run(&p, &xs(10), RunOptions::default());
    let m = by_id(&lines);
    assert_eq!(
        m[&8]["error"],
        serde_json::json!({"node": "seven", "message": "panic in node: seven"})
    );
    assert_eq!(m.values().filter(|l| l.get("ok").is_some()).count(), 9);
}

#[test]
fn a_panic_in_a_batch_fails_only_the_item_that_panics_again() {
    for inline in [false, true] {
        let mut p = plan(
            &[("x", "Int")],
            vec![node(
                "seven",
                "t.panics_on_7",
                vec![Arg::input("x")],
                dynamic(16, 50.0),
                1,
            )],
            vec![("y", "Int", Arg::node("seven", 0))],
        );
        if inline {
            p.inline = vec!["seven".into()];
        }
        let (lines, report) = run(&p, &xs(40), RunOptions::default());
        let m = by_id(&lines);
        assert_eq!(m.len(), 40, "one record per request (inline {inline})");
        let failed: Vec<u64> = m
            .iter()
            .filter(|(_, l)| l.get("error").is_some())
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(failed, vec![8], "inline {inline}");
        assert_eq!(m[&8]["error"]["message"], "panic in node: seven");
        assert_eq!(report.stats.nodes["seven"].item_errors, 1);
    }
}

/// Records without their latencies, by request id.
fn records(lines: &[serde_json::Value]) -> BTreeMap<u64, serde_json::Value> {
    by_id(lines)
        .into_iter()
        .map(|(id, mut l)| {
            l.as_object_mut().map(|o| o.remove("latency_ms"));
            (id, l)
        })
        .collect()
}

#[test]
fn inline_nodes_give_the_records_replica_threads_give() {
    let mut mapped = node(
        "each",
        "t.odd_fails",
        vec![Arg::node("inc", 0), Arg::value(0.into())],
        dynamic(5, 0.0),
        1,
    );
    mapped.map_over = Some(0);
    mapped.in_types = vec!["Int".into(), "Int".into()];
    let mut inc = node("inc", "t.inc", vec![Arg::input("xs")], none(), 1);
    inc.map_over = Some(0);
    let pool = plan(
        &[("xs", "List<Int>"), ("x", "Int")],
        vec![
            inc,
            mapped,
            node(
                "odd",
                "t.odd_fails",
                vec![Arg::input("x")],
                dynamic(4, 0.0),
                1,
            ),
            node("seven", "t.panics_on_7", vec![Arg::input("x")], none(), 1),
            node(
                "sum",
                "t.add",
                vec![Arg::node("odd", 0), Arg::node("seven", 0)],
                none(),
                1,
            ),
        ],
        vec![
            ("s", "Int", Arg::node("sum", 0)),
            ("ys", "List<Int>", Arg::node("each", 0)),
        ],
    );
    let mut inline = pool.clone();
    inline.inline = inline.nodes.iter().map(|n| n.id.clone()).collect();
    let input: String = (0..200)
        .map(|i| format!("{{\"xs\": [{}, {}], \"x\": {}}}\n", i, i + 1, 2 * (i % 5)))
        .chain([
            "{\"xs\": 3, \"x\": 7}\n".to_string(),
            "{\"xs\": [], \"x\": 7}\n".to_string(),
        ])
        .collect();
    let (want, _) = run(&pool, &input, RunOptions::default());
    let want = records(&want);
    assert_eq!(want.len(), 202);
    assert_eq!(want[&201]["error"]["node"], "input");
    assert_eq!(want[&202]["error"]["node"], "odd");
    for workers in [1, 3] {
        let opts = RunOptions {
            workers,
            ..RunOptions::default()
        };
        let (got, report) = run(&inline, &input, opts);
        assert_eq!(records(&got), want, "workers {workers}");
        assert_eq!(report.stats.nodes["inc"].items, 400);
    }
}

#[test]
fn map_nodes_keep_element_order_and_fail_as_a_whole() {
    let mut inc = node(
        "inc",
        "t.odd_fails",
        vec![Arg::input("xs"), Arg::value(0.into())],
        dynamic(5, 0.0),
        2,
    );
    inc.map_over = Some(0);
    inc.in_types = vec!["Int".into(), "Int".into()];
    let p = plan(
        &[("xs", "List<Int>")],
        vec![inc],
        vec![("ys", "List<Int>", Arg::node("inc", 0))],
    );
    let input = "{\"xs\": [2, 4, 6, 8, 10, 12, 14]}\n{\"xs\": []}\n{\"xs\": [2, 5, 7]}\n";
    let (lines, report) = run(&p, input, RunOptions::default());
    let m = by_id(&lines);
    assert_eq!(
        m[&1]["ok"]["ys"],
        serde_json::json!([2, 4, 6, 8, 10, 12, 14])
    );
    assert_eq!(m[&2]["ok"]["ys"], serde_json::json!([]));
    assert_eq!(m[&3]["error"]["message"], "element 1: 5 is odd");
    assert_eq!(report.stats.nodes["inc"].items, 10);
}

#[test]
fn fail_fast_stops_admitting_at_the_first_error() {
    let p = plan(
        &[("x", "Int")],
        vec![node("odd", "t.odd_fails", vec![Arg::input("x")], none(), 1)],
        vec![("y", "Int", Arg::node("odd", 0))],
    );
    let input: String = std::iter::once("{\"x\": 1}\n".to_string())
        .chain((0..20000).map(|_| "{\"x\": 2}\n".into()))
        .collect();
    let opts = RunOptions {
        fail_fast: true,
        max_inflight: 4,
        ..RunOptions::default()
    };
    let (lines, report) = run(&p, &input, opts);
    assert_eq!(report.stats.stopped_at, Some(1));
    assert!(lines.len() < 20001, "{} lines", lines.len());
    assert_eq!(by_id(&lines)[&1]["error"]["node"], "odd");
}

#[test]
fn records_cross_processes_through_bincode() {
    use crate::dataflow::{Failure, Rec};
    let recs = vec![
        Rec {
            id: 3,
            src: 1,
            body: Ok(vec![
                Value::Json(serde_json::json!({"a": [1, null, "x"]})),
                Value::Bytes(Arc::new(vec![0, 255])),
                Value::List(vec![Value::Float(0.5), Value::Text("t".into())]),
            ]),
        },
        Rec {
            id: 4,
            src: 2,
            body: Err(Failure::new("n", "m")),
        },
    ];
    let bytes = bincode::serialize(&recs).expect("serializes");
    let back: Vec<Rec> = bincode::deserialize(&bytes).expect("deserializes");
    assert_eq!(back, recs);
}

#[test]
fn a_plan_with_a_dangling_edge_or_unknown_builtin_does_not_start() {
    let p = plan(
        &[("x", "Int")],
        vec![node("a", "t.inc", vec![Arg::node("nope", 0)], none(), 1)],
        vec![("y", "Int", Arg::node("a", 0))],
    );
    let e = run_plan(
        &p,
        Path::new("."),
        &registry(),
        RunOptions::default(),
        &b""[..],
        &mut Vec::new(),
    );
    assert!(matches!(e, Err(RunError::Plan(m)) if m.contains("`nope`")));
    let p = plan(
        &[("x", "Int")],
        vec![node("a", "t.missing", vec![Arg::input("x")], none(), 1)],
        vec![("y", "Int", Arg::node("a", 0))],
    );
    let e = run_plan(
        &p,
        Path::new("."),
        &registry(),
        RunOptions::default(),
        &b""[..],
        &mut Vec::new(),
    );
    assert!(matches!(e, Err(RunError::Build { node, .. }) if node == "a"));
}
