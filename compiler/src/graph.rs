//! `marsc graph`: a checked pipeline as Graphviz DOT or as JSON. Nodes come in topological
//! order (ties by id) and edges sorted, so the output is deterministic.

use serde_json::{json, Value as Json};

use crate::ir::{Annotations, BatchHint, DeviceHint, Implementation, Literal, Pipeline, Source};

/// The pipeline as a DOT digraph: inputs and outputs as ellipses, each node a box labelled
/// with its id, kind, implementation and annotations, each edge with its type.
pub fn to_dot(p: &Pipeline) -> String {
    let mut out = String::new();
    out.push_str(&format!("digraph {} {{\n", quote(&p.name)));
    out.push_str("  rankdir=LR;\n");
    out.push_str("  fontname=\"Helvetica\";\n");
    out.push_str("  node [shape=box, fontname=\"Helvetica\", fontsize=11];\n");
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=9];\n");
    for i in &p.inputs {
        let label = match &i.default {
            Some(d) => format!("{}: {} = {}", i.name, i.ty, literal_text(d)),
            None => format!("{}: {}", i.name, i.ty),
        };
        out.push_str(&format!(
            "  {} [shape=ellipse, label={}];\n",
            quote(&format!("input:{}", i.name)),
            quote(&label)
        ));
    }
    let order = p.topo_order();
    let mut consts = Vec::new();
    for &n in &order {
        let node = &p.graph[n];
        let mut lines = vec![node.id.clone()];
        let kind = match node.map_over {
            Some(_) => format!("map({})", node.kind),
            None => node.kind.clone(),
        };
        lines.push(format!(
            "{kind} · {}",
            implementation_text(&node.implementation)
        ));
        let anns = annotations_text(&node.annotations);
        if !anns.is_empty() {
            lines.push(anns);
        }
        let style = match node.annotations.device {
            Some(DeviceHint::Gpu) => ", style=filled, fillcolor=\"#d5e8d4\"",
            Some(DeviceHint::Cpu) => ", style=filled, fillcolor=\"#dae8fc\"",
            _ => "",
        };
        out.push_str(&format!(
            "  {} [label={}{style}];\n",
            quote(&node.id),
            quote(&lines.join("\n"))
        ));
        for (k, arg) in node.args.iter().enumerate() {
            let ty = node
                .in_types
                .get(k)
                .map(|t| t.to_string())
                .unwrap_or_default();
            match arg {
                Source::Input(name) => {
                    let ty = if node.map_over == Some(k) {
                        format!("List<{ty}>")
                    } else {
                        ty
                    };
                    consts.push(format!(
                        "  {} -> {} [label={}];\n",
                        quote(&format!("input:{name}")),
                        quote(&node.id),
                        quote(&ty)
                    ));
                }
                Source::Const(l) => {
                    let id = format!("const:{}:{k}", node.id);
                    consts.push(format!(
                        "  {} [shape=plaintext, label={}];\n",
                        quote(&id),
                        quote(&literal_text(l))
                    ));
                    consts.push(format!(
                        "  {} -> {} [label={}];\n",
                        quote(&id),
                        quote(&node.id),
                        quote(&ty)
                    ));
                }
                Source::Node(..) => {}
            }
        }
    }
    out.push_str(&consts.concat());
    let mut edges: Vec<(String, String, usize, String)> = p
        .graph
        .edge_indices()
        .filter_map(|e| {
            let (a, b) = p.graph.edge_endpoints(e)?;
            let w = &p.graph[e];
            Some((
                p.graph[a].id.clone(),
                p.graph[b].id.clone(),
                w.to_port,
                w.ty.to_string(),
            ))
        })
        .collect();
    edges.sort();
    for (a, b, _, ty) in edges {
        out.push_str(&format!(
            "  {} -> {} [label={}];\n",
            quote(&a),
            quote(&b),
            quote(&ty)
        ));
    }
    for o in &p.outputs {
        let id = format!("output:{}", o.name);
        out.push_str(&format!(
            "  {} [shape=ellipse, label={}];\n",
            quote(&id),
            quote(&format!("{}: {}", o.name, o.ty))
        ));
        let from = match &o.from {
            Source::Input(name) => format!("input:{name}"),
            Source::Node(n, _) => p.graph[*n].id.clone(),
            Source::Const(l) => {
                let cid = format!("const:{id}");
                out.push_str(&format!(
                    "  {} [shape=plaintext, label={}];\n",
                    quote(&cid),
                    quote(&literal_text(l))
                ));
                cid
            }
        };
        out.push_str(&format!(
            "  {} -> {} [label={}];\n",
            quote(&from),
            quote(&id),
            quote(&o.ty.to_string())
        ));
    }
    if !p.slos.is_empty() {
        let slos: Vec<&str> = p.slos.iter().map(|s| s.text.as_str()).collect();
        out.push_str(&format!(
            "  label={};\n  labelloc=b;\n",
            quote(&format!("slo: {}", slos.join(", ")))
        ));
    }
    out.push_str("}\n");
    out
}

/// The pipeline as JSON (keys sorted).
pub fn to_json(p: &Pipeline) -> Json {
    let source = |s: &Source| match s {
        Source::Input(name) => json!({ "input": name }),
        Source::Node(n, port) => json!({ "node": p.graph[*n].id, "port": port }),
        Source::Const(l) => json!({ "const": l.to_json() }),
    };
    let nodes: Vec<Json> = p
        .topo_order()
        .into_iter()
        .map(|n| {
            let node = &p.graph[n];
            let implementation = match &node.implementation {
                Implementation::Builtin(id) => json!({ "builtin": id }),
                Implementation::Exec(cmd) => json!({ "exec": cmd }),
                Implementation::Model { arch, config } => {
                    let config: serde_json::Map<String, Json> = config
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_json()))
                        .collect();
                    json!({ "model": arch, "config": config })
                }
            };
            let params: serde_json::Map<String, Json> = node
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect();
            json!({
                "id": node.id,
                "kind": node.kind,
                "implementation": implementation,
                "map_over": node.map_over,
                "args": node.args.iter().map(source).collect::<Vec<_>>(),
                "params": params,
                "in_types": node.in_types.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                "out_types": node.out_types.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                "out_names": node.out_names,
                "generates": node.generates,
                "annotations": annotations_json(&node.annotations),
            })
        })
        .collect();
    let mut edges: Vec<Json> = p
        .graph
        .edge_indices()
        .filter_map(|e| {
            let (a, b) = p.graph.edge_endpoints(e)?;
            let w = &p.graph[e];
            Some(json!({
                "from": p.graph[a].id,
                "from_port": w.from_port,
                "to": p.graph[b].id,
                "to_port": w.to_port,
                "type": w.ty.to_string(),
            }))
        })
        .collect();
    edges.sort_by_key(|e| {
        (
            e["from"].to_string(),
            e["to"].to_string(),
            e["to_port"].as_u64(),
        )
    });
    json!({
        "pipeline": p.name,
        "inputs": p.inputs.iter().map(|i| json!({
            "name": i.name,
            "type": i.ty.to_string(),
            "default": i.default.as_ref().map(Literal::to_json),
        })).collect::<Vec<_>>(),
        "outputs": p.outputs.iter().map(|o| json!({
            "name": o.name,
            "type": o.ty.to_string(),
            "from": source(&o.from),
        })).collect::<Vec<_>>(),
        "nodes": nodes,
        "edges": edges,
        "slos": p.slos.iter().map(|s| s.text.clone()).collect::<Vec<_>>(),
    })
}

fn annotations_json(a: &Annotations) -> Json {
    let device = a.device.map(|d| match d {
        DeviceHint::Cpu => "cpu",
        DeviceHint::Gpu => "gpu",
        DeviceHint::Any => "any",
    });
    let batch = a.batch.as_ref().map(|b| match b {
        BatchHint::None => json!({ "mode": "none" }),
        BatchHint::Dynamic { max, wait_ms } => {
            json!({ "mode": "dynamic", "max": max, "wait_ms": wait_ms })
        }
        BatchHint::Continuous { max } => json!({ "mode": "continuous", "max": max }),
    });
    json!({ "device": device, "replicas": a.replicas, "batch": batch })
}

/// `@device(gpu) @batch(max = 32, wait = 5ms)`, as the source would say it.
fn annotations_text(a: &Annotations) -> String {
    let mut parts = Vec::new();
    if let Some(d) = a.device {
        parts.push(format!(
            "@device({})",
            match d {
                DeviceHint::Cpu => "cpu",
                DeviceHint::Gpu => "gpu",
                DeviceHint::Any => "any",
            }
        ));
    }
    if let Some(r) = a.replicas {
        parts.push(format!("@replicas({r})"));
    }
    match &a.batch {
        None => {}
        Some(BatchHint::None) => parts.push("@batch(none)".into()),
        Some(BatchHint::Dynamic { max, wait_ms }) => {
            let mut args = Vec::new();
            if let Some(m) = max {
                args.push(format!("max = {m}"));
            }
            if let Some(w) = wait_ms {
                args.push(format!("wait = {w}ms"));
            }
            parts.push(format!("@batch({})", args.join(", ")));
        }
        Some(BatchHint::Continuous { max }) => match max {
            Some(m) => parts.push(format!("@batch(continuous, max = {m})")),
            None => parts.push("@batch(continuous)".into()),
        },
    }
    parts.join(" ")
}

fn implementation_text(i: &Implementation) -> String {
    match i {
        Implementation::Builtin(id) => format!("builtin {id}"),
        Implementation::Exec(cmd) => format!("exec {cmd}"),
        Implementation::Model { arch, .. } => format!("model {arch}"),
    }
}

fn literal_text(l: &Literal) -> String {
    match l {
        Literal::Text(s) => format!("{s:?}"),
        Literal::Duration(ms) => format!("{ms}ms"),
        other => other.to_json().to_string(),
    }
}

/// A DOT quoted string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{check_program, SourceFile};

    fn example() -> Pipeline {
        let file = SourceFile {
            path: "x.mars".into(),
            text: include_str!("testdata/sketch.mars").into(),
        };
        let checked = check_program(&file, &crate::check::tests::stdlib());
        checked.program.expect("clean").pipelines.remove(0)
    }

    #[test]
    fn dot_shows_kinds_device_hints_and_edge_types() {
        let dot = to_dot(&example());
        assert!(dot.starts_with("digraph \"image_translate\" {\n"), "{dot}");
        assert!(dot.contains("\"mask\" [label=\"mask\\nSegmenter · model unet_tiny\\n@device(gpu)\", style=filled"), "{dot}");
        assert!(dot.contains("\"words\" [label=\"words\\nmap(OcrReader) · model crnn_tiny\\n@batch(max = 32, wait = 5ms)\"];"), "{dot}");
        assert!(
            dot.contains("\"words.crop\" -> \"words\" [label=\"List<Image>\"];"),
            "{dot}"
        );
        assert!(
            dot.contains("\"input:img\" -> \"image\" [label=\"Bytes\"];"),
            "{dot}"
        );
        assert!(
            dot.contains("\"n_boxes\" -> \"output:n_boxes\" [label=\"Int\"];"),
            "{dot}"
        );
        assert_eq!(dot, to_dot(&example()), "deterministic");
    }

    #[test]
    fn json_lists_nodes_in_topological_order() {
        let j = to_json(&example());
        assert_eq!(j["nodes"][0]["id"], "image");
        assert_eq!(j["nodes"].as_array().map(Vec::len), Some(10));
        let trans = j["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["id"] == "trans"))
            .expect("trans");
        assert_eq!(trans["annotations"]["batch"]["mode"], "continuous");
        assert_eq!(trans["implementation"]["config"]["max_tokens"], 128);
        assert_eq!(trans["generates"], true);
        assert_eq!(j["outputs"][0]["from"]["node"], "out");
    }
}
