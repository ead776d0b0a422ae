use std::collections::BTreeMap;

use crate::ir::{BatchHint, DataType, DeviceHint, Implementation, Literal, SloKind, Source};
use crate::{check_program, Checked, SourceFile};

pub(crate) fn stdlib() -> Vec<SourceFile> {
    [
        (
            "std/bench.mars",
            include_str!("../../../stdlib/mars/std/bench.mars"),
        ),
        (
            "std/image.mars",
            include_str!("../../../stdlib/mars/std/image.mars"),
        ),
        (
            "std/json.mars",
            include_str!("../../../stdlib/mars/std/json.mars"),
        ),
        (
            "std/list.mars",
            include_str!("../../../stdlib/mars/std/list.mars"),
        ),
        (
            "std/models.mars",
            include_str!("../../../stdlib/mars/std/models.mars"),
        ),
        (
            "std/text.mars",
            include_str!("../../../stdlib/mars/std/text.mars"),
        ),
    ]
    .into_iter()
    .map(|(p, t)| SourceFile {
        path: p.into(),
        text: t.into(),
    })
    .collect()
}

fn check(text: &str) -> Checked {
    check_program(
        &SourceFile {
            path: "t.mars".into(),
            text: text.into(),
        },
        &stdlib(),
    )
}

fn codes(text: &str) -> Vec<&'static str> {
    check(text).problems.iter().map(|p| p.code).collect()
}

const EXAMPLE: &str = include_str!("../testdata/sketch.mars");

#[test]
fn the_language_sketch_example_builds_the_documented_ir() {
    let checked = check(EXAMPLE);
    assert!(checked.problems.is_empty(), "{}", checked.problems.render());
    let program = checked.program.expect("clean");
    let p = program.pipeline("image_translate").expect("declared");
    let mut ids: Vec<&str> = p.graph.node_weights().map(|n| n.id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "boxes",
            "clean",
            "image",
            "mask",
            "n_boxes",
            "out",
            "out.draw_text",
            "trans",
            "words",
            "words.crop"
        ]
    );
    let node = |id: &str| &p.graph[p.node_by_id(id).expect(id)];
    assert_eq!(
        node("image").implementation,
        Implementation::Builtin("image.decode".into())
    );
    assert_eq!(node("image").args, vec![Source::Input("img".into())]);
    assert_eq!(node("mask").annotations.device, Some(DeviceHint::Gpu));
    assert!(node("mask").annotations.device_span.is_some());
    assert_eq!(
        node("mask").out_types,
        vec!["Tensor<f32, [1, H, W]>".parse::<DataType>().expect("type")]
    );
    let words = node("words");
    assert_eq!(words.kind, "OcrReader");
    assert_eq!(words.map_over, Some(0));
    assert_eq!(words.in_types, vec![DataType::Image]);
    assert_eq!(
        words.annotations.batch,
        Some(BatchHint::Dynamic {
            max: Some(32),
            wait_ms: Some(5.0)
        })
    );
    let trans = node("trans");
    assert!(trans.generates);
    assert_eq!(
        trans.annotations.batch,
        Some(BatchHint::Continuous { max: Some(64) })
    );
    let Implementation::Model { arch, config } = &trans.implementation else {
        panic!("a model")
    };
    assert_eq!(arch, "transformer_lm");
    assert_eq!(config.get("max_tokens"), Some(&Literal::Int(128)));
    assert_eq!(
        config.get("quantize"),
        Some(&Literal::Symbol("int8".into()))
    );
    assert_eq!(config.get("top_p"), Some(&Literal::Float(1.0)));
    assert!(
        !config.contains_key("d_model"),
        "read from the weights file"
    );
    assert_eq!(node("clean").annotations.replicas, Some(2));
    assert_eq!(
        node("clean").implementation,
        Implementation::Exec("python3 nodes/inpaint.py".into())
    );
    let out = node("out");
    assert_eq!(
        out.params,
        BTreeMap::from([("format".to_string(), Literal::Text("png".into()))])
    );
    assert_eq!(node("n_boxes").kind, "std.list.len");
    assert_eq!(
        node("n_boxes").in_types,
        vec![DataType::List(Box::new(DataType::Box))]
    );
    // Edges carry the types of the values on them: the list into the map.
    let crop = p.node_by_id("words.crop").expect("nested call");
    let e = p
        .graph
        .edges_connecting(crop, p.node_by_id("words").expect("words"))
        .next()
        .expect("edge");
    assert_eq!(e.weight().ty, DataType::List(Box::new(DataType::Image)));
    assert_eq!(p.inputs[1].default, Some(Literal::Text("en".into())));
    assert_eq!(p.outputs.len(), 2);
    assert_eq!(p.slos.len(), 2);
    assert_eq!(p.slos[0].kind, SloKind::LatencyP99Ms(300.0));
    assert_eq!(p.slos[1].text, "throughput >= 50/s");
    assert_eq!(p.topo_order().len(), 10);
}

#[test]
fn generic_fns_take_static_parameters_with_defaults() {
    let checked = check(
        "use std.bench\npipeline p(x: Text) -> (y: Text) {\n  y = bench.delay(std.bench.fail(x, rate = 0.5), item_ms = 2)\n}\n",
    );
    assert!(checked.problems.is_empty(), "{}", checked.problems.render());
    let program = checked.program.expect("clean");
    let p = &program.pipelines[0];
    let y = &p.graph[p.node_by_id("y").expect("y")];
    assert_eq!(y.params.get("item_ms"), Some(&Literal::Float(2.0)));
    assert_eq!(y.params.get("batch_ms"), Some(&Literal::Float(0.0)));
    assert_eq!(y.out_types, vec![DataType::Text]);
    let f = &p.graph[p.node_by_id("y.fail").expect("nested")];
    assert_eq!(f.params.get("seed"), Some(&Literal::Int(0)));
}

#[test]
fn nested_calls_of_one_kind_get_numbered_ids() {
    let checked = check("use std.text.{lower}\npipeline p(x: Text) -> (y: Text) {\n  y = lower(lower(lower(x)))\n}\n");
    let program = checked.program.expect("clean");
    let mut ids: Vec<String> = program.pipelines[0]
        .graph
        .node_weights()
        .map(|n| n.id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["y", "y.lower", "y.lower_2"]);
}

#[test]
fn every_independent_error_is_reported_in_one_run() {
    let c = codes(
        "use std.text.{lower}\npipeline p(x: Text) -> (y: Text, z: Int) {\n  let a = lowr(x)\n  let b = lower(3)\n  y = lower(x)\n  y = lower(x)\n}\n",
    );
    assert_eq!(
        c,
        [
            "mars::pipeline::output_missing",
            "mars::lint::unused_binding",
            "mars::resolve::unknown_name",
            "mars::lint::unused_binding",
            "mars::type::mismatch",
            "mars::pipeline::output_twice",
        ],
    );
}

#[test]
fn cycles_are_errors_and_forward_references_are_not() {
    assert_eq!(
        codes("use std.text.{lower}\npipeline p(x: Text) -> (y: Text) {\n  let a = lower(b)\n  let b = lower(a)\n  y = lower(x)\n}\n"),
        ["mars::graph::cycle"],
    );
    let ok = check("use std.text.{lower}\npipeline p(x: Text) -> (y: Text) {\n  y = lower(b)\n  let b = lower(x)\n}\n");
    assert!(ok.problems.is_empty(), "{}", ok.problems.render());
}

#[test]
fn continuous_batching_needs_a_generating_model() {
    let text = EXAMPLE.replace("generate   = true", "generate   = false");
    assert_eq!(
        codes(&text),
        ["mars::annotation::continuous_without_generate"]
    );
}

#[test]
fn model_keys_are_checked_against_the_arch_schema() {
    let text = EXAMPLE
        .replace("max_tokens = MAX_TOKENS", "max_tokns = MAX_TOKENS")
        .replace("quantize   = int8", "quantize   = Int8");
    let checked = check(&text);
    let c: Vec<_> = checked
        .problems
        .iter()
        .map(|p| (p.code, p.help.clone()))
        .collect();
    assert_eq!(
        c[0],
        ("mars::model::key_type", Some("did you mean `int8`?".into()))
    );
    assert_eq!(
        c[1],
        (
            "mars::model::unknown_key",
            Some("did you mean `max_tokens`?".into())
        )
    );
}

#[test]
fn warnings_alone_still_give_a_program() {
    let checked = check("use std.text.{lower}\npipeline p(x: Text) -> (y: Text) {\n  let unused = lower(x)\n  y = lower(x)\n}\n");
    assert!(checked.problems.has_warnings() && !checked.problems.has_errors());
    assert!(checked.program.is_some());
}

#[test]
fn a_later_phase_reports_through_the_same_problems() {
    let mut checked = check(EXAMPLE);
    let program = checked.program.clone().expect("clean");
    let p = &program.pipelines[0];
    let mask = &p.graph[p.node_by_id("mask").expect("mask")];
    let span = mask.annotations.device_span.expect("annotated");
    checked.problems.push(
        crate::diagnostics::Problem::error(
            "mars::plan::device_unavailable",
            "`mask` must run on a GPU, but the target has none",
        )
        .label(span, "asks for a GPU")
        .help("remove `@device(gpu)` or use a target with a GPU"),
    );
    let text = checked.problems.render();
    assert!(text.contains("mars::plan::device_unavailable"), "{text}");
    assert!(text.contains("[t.mars:"), "{text}");
    assert!(text.contains("@device(gpu)"), "{text}");
}

#[test]
fn a_long_cycle_is_reported_once_by_its_first_steps() {
    let mut text = String::from("use std.text.{lower}\npipeline p(x: Text) -> (y: Text) {\n");
    for i in 0..20 {
        text.push_str(&format!("  let a{i} = lower(a{})\n", (i + 1) % 20));
    }
    text.push_str("  y = lower(x)\n}\n");
    let checked = check(&text);
    let problems: Vec<_> = checked.problems.iter().collect();
    assert_eq!(problems.len(), 1, "{}", checked.problems.render());
    assert_eq!(problems[0].code, "mars::graph::cycle");
    assert!(
        problems[0]
            .message
            .starts_with("a cycle of 20 bindings: `a0` → `a1`"),
        "{}",
        problems[0].message
    );
    assert_eq!(problems[0].labels.len(), 8);
}
