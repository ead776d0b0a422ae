//! `marsc plan diff A B`: what changed between two plans, for review. Pipeline-level changes
//! first, then one line per changed field of each node (in B's node order; nodes only in A
//! last), then the SLO verdicts. Provenance hashes are reported too: a plan built from other
//! inputs is a different plan even if nothing else moved.

use std::fmt::Write;

use mars_plan::{BatchPolicy, BatchSpec, Plan, PlanNode};

/// The changes from `a` to `b`, one per line; empty when the plans are the same.
pub fn diff_plans(a: &Plan, b: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |what: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{what}: {x} → {y}"));
        }
    };
    field("pipeline", a.pipeline.clone(), b.pipeline.clone());
    field(
        "mars_version",
        a.mars_version.clone(),
        b.mars_version.clone(),
    );
    field(
        "source",
        a.inputs_of_plan.source.clone(),
        b.inputs_of_plan.source.clone(),
    );
    field(
        "source_hash",
        a.inputs_of_plan.source_hash.clone(),
        b.inputs_of_plan.source_hash.clone(),
    );
    field(
        "profile_hash",
        opt(&a.inputs_of_plan.profile_hash),
        opt(&b.inputs_of_plan.profile_hash),
    );
    field(
        "target_hash",
        opt(&a.inputs_of_plan.target_hash),
        opt(&b.inputs_of_plan.target_hash),
    );
    let (ta, tb) = (a.predicted.throughput, b.predicted.throughput);
    field(
        "throughput",
        rate(ta),
        if ta == tb {
            rate(ta)
        } else {
            rate_change(ta, tb)
        },
    );
    field(
        "latency_p50_ms",
        a.predicted.latency_p50_ms.to_string(),
        b.predicted.latency_p50_ms.to_string(),
    );
    field(
        "latency_p99_ms",
        a.predicted.latency_p99_ms.to_string(),
        b.predicted.latency_p99_ms.to_string(),
    );
    field(
        "bottleneck",
        a.predicted.bottleneck.clone(),
        b.predicted.bottleneck.clone(),
    );
    field(
        "inputs",
        format!("{:?}", sig_inputs(a)),
        format!("{:?}", sig_inputs(b)),
    );
    field(
        "outputs",
        format!("{:?}", sig_outputs(a)),
        format!("{:?}", sig_outputs(b)),
    );

    for nb in &b.nodes {
        match a.node(&nb.id) {
            None => out.push(format!(
                "+ node {}: {} on {}",
                nb.id,
                nb.kind,
                placement(nb)
            )),
            Some(na) => out.extend(
                diff_node(na, nb)
                    .into_iter()
                    .map(|c| format!("node {}: {c}", nb.id)),
            ),
        }
    }
    for na in &a.nodes {
        if b.node(&na.id).is_none() {
            out.push(format!(
                "- node {}: {} on {}",
                na.id,
                na.kind,
                placement(na)
            ));
        }
    }
    let a_order: Vec<&str> = a
        .nodes
        .iter()
        .map(|n| n.id.as_str())
        .filter(|id| b.node(id).is_some())
        .collect();
    let b_order: Vec<&str> = b
        .nodes
        .iter()
        .map(|n| n.id.as_str())
        .filter(|id| a.node(id).is_some())
        .collect();
    if a_order != b_order {
        out.push("node order changed".to_string());
    }

    for vb in &b.slos {
        match a.slos.iter().find(|va| va.slo == vb.slo) {
            None => out.push(format!(
                "+ slo {}: predicted {} ({})",
                vb.slo,
                vb.predicted,
                met(vb.met)
            )),
            Some(va) if va != vb => out.push(format!(
                "slo {}: predicted {} → {}; {} → {}",
                vb.slo,
                va.predicted,
                vb.predicted,
                met(va.met),
                met(vb.met)
            )),
            Some(_) => {}
        }
    }
    for va in &a.slos {
        if !b.slos.iter().any(|vb| vb.slo == va.slo) {
            out.push(format!("- slo {}", va.slo));
        }
    }
    if a.notes != b.notes {
        out.push(format!("notes: {:?} → {:?}", a.notes, b.notes));
    }
    out
}

/// The changed fields of one node, as `field: old → new`.
fn diff_node(a: &PlanNode, b: &PlanNode) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |what: &str, x: String, y: String| {
        if x != y {
            let mut s = String::new();
            let _ = write!(s, "{what} {x} → {y}");
            out.push(s);
        }
    };
    field("kind", a.kind.clone(), b.kind.clone());
    field(
        "implementation",
        json(&a.implementation),
        json(&b.implementation),
    );
    field("placement", placement(a), placement(b));
    field("replicas", a.replicas.to_string(), b.replicas.to_string());
    let range = |n: &PlanNode| {
        n.replica_range.as_ref().map_or_else(
            || "fixed".to_string(),
            |r| format!("{}..{} ({} cores)", r.min, r.max, r.cores),
        )
    };
    field("replica_range", range(a), range(b));
    field("batch", batch(&a.batch), batch(&b.batch));
    field("args", json(&a.args), json(&b.args));
    field("params", json(&a.params), json(&b.params));
    field(
        "map_over",
        format!("{:?}", a.map_over),
        format!("{:?}", b.map_over),
    );
    field("in_types", a.in_types.join(", "), b.in_types.join(", "));
    field("out_types", a.out_types.join(", "), b.out_types.join(", "));
    field(
        "timeout_ms",
        format!("{:?}", a.timeout_ms),
        format!("{:?}", b.timeout_ms),
    );
    field(
        "latency_ms",
        a.predicted.latency_ms.to_string(),
        b.predicted.latency_ms.to_string(),
    );
    field(
        "p99_ms",
        a.predicted.p99_ms.to_string(),
        b.predicted.p99_ms.to_string(),
    );
    field(
        "throughput",
        a.predicted.throughput.to_string(),
        b.predicted.throughput.to_string(),
    );
    field(
        "utilization",
        a.predicted.utilization.to_string(),
        b.predicted.utilization.to_string(),
    );
    out
}

fn placement(n: &PlanNode) -> String {
    match &n.gpu {
        Some(g) => format!("gpu {g}@{}", n.worker),
        None => format!("cpu@{}", n.worker),
    }
}

fn batch(b: &BatchSpec) -> String {
    match b.policy {
        BatchPolicy::None => "none".to_string(),
        BatchPolicy::Dynamic => format!("dynamic max {} wait {}ms", b.max, b.wait_ms),
        BatchPolicy::Continuous => format!("continuous max {}", b.max),
    }
}

fn rate(x: f64) -> String {
    format!("{x}/s")
}

fn rate_change(a: f64, b: f64) -> String {
    if a > 0.0 {
        format!("{b}/s ({:+.1}%)", 100.0 * (b - a) / a)
    } else {
        rate(b)
    }
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "none".to_string())
}

fn met(m: bool) -> &'static str {
    if m {
        "met"
    } else {
        "missed"
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn sig_inputs(p: &Plan) -> Vec<(String, String)> {
    p.inputs
        .iter()
        .map(|i| (i.name.clone(), i.ty.clone()))
        .collect()
}

fn sig_outputs(p: &Plan) -> Vec<(String, String)> {
    p.outputs
        .iter()
        .map(|o| (o.name.clone(), o.ty.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testkit::{device, pipeline, profile, spec, target};
    use crate::plan::{plan_pipeline, PlanOptions};

    fn plan() -> Plan {
        let p = pipeline(&[spec("a", &[]), spec("b", &[0])], &[]);
        let prof = profile(&[
            ("a", Some(device(&[1], &[10.0])), None),
            ("b", Some(device(&[1, 4], &[10.0, 20.0])), None),
        ]);
        plan_pipeline(&p, Some(&prof), &target(4.0, &[]), &PlanOptions::default())
            .expect("plannable")
    }

    #[test]
    fn equal_plans_have_no_changes() {
        assert_eq!(diff_plans(&plan(), &plan()), Vec::<String>::new());
    }

    #[test]
    fn changes_are_listed_per_field_and_node() {
        let a = plan();
        let mut b = plan();
        b.nodes[0].replicas += 1;
        b.nodes[1].batch.wait_ms = 7.5;
        b.predicted.throughput = a.predicted.throughput * 2.0;
        let mut extra = b.nodes[1].clone();
        extra.id = "c".to_string();
        b.nodes.push(extra);
        b.nodes.remove(0);
        let changes = diff_plans(&a, &b);
        assert!(
            changes
                .iter()
                .any(|c| c.starts_with("throughput: ") && c.ends_with("(+100.0%)")),
            "{changes:?}"
        );
        assert!(
            changes
                .iter()
                .any(|c| c.starts_with("node b: batch dynamic max 4 wait")),
            "{changes:?}"
        );
        assert!(
            changes.contains(&"+ node c: b on cpu@w0".to_string()),
            "{changes:?}"
        );
        assert!(
            changes.contains(&"- node a: a on cpu@w0".to_string()),
            "{changes:?}"
        );
    }
}
