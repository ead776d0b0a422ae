//! Range checks of a loaded plan (SPEC 7.1): every count and duration within the limits of
//! [`crate::limits`], every type string parseable and nested at most
//! [`crate::limits::MAX_TYPE_DEPTH`] deep. A plan that passes asks the runtime for nothing it
//! cannot give; an error names the file, the line and the key.

use crate::limits::{
    out_of_range, MAX_BATCH, MAX_BATCH_WAIT_MS, MAX_NODES, MAX_PROCESSES, MAX_REPLICAS,
    MAX_REPLICA_THREADS, MAX_TIMEOUT_MS,
};
use crate::{DataType, LoadError, Plan};

/// Check `plan`, loaded from `text` (the file `path`).
pub fn validate_plan(plan: &Plan, text: &str, path: &str) -> Result<(), LoadError> {
    let err = |keys: &[&str], key: String, message: String| {
        LoadError::invalid(path, crate::find_key_path(text, keys), &key, message)
    };
    if plan.nodes.len() > MAX_NODES {
        return Err(err(
            &["nodes"],
            "nodes".into(),
            format!(
                "{} nodes; a plan holds at most {MAX_NODES} (SPEC 7.1)",
                plan.nodes.len()
            ),
        ));
    }
    if plan.workers.len() > MAX_PROCESSES {
        return Err(err(
            &["workers"],
            "workers".into(),
            format!(
                "{} workers; a plan names at most {MAX_PROCESSES} (SPEC 7.1)",
                plan.workers.len()
            ),
        ));
    }
    let ty = |keys: &[&str], key: String, t: &str| -> Result<(), LoadError> {
        t.parse::<DataType>()
            .map(|_| ())
            .map_err(|e| err(keys, key, format!("bad type `{}`: {e}", short(t))))
    };
    for (i, input) in plan.inputs.iter().enumerate() {
        let n = i.to_string();
        ty(
            &["inputs", &n, "type"],
            format!("inputs[{i}].type"),
            &input.ty,
        )?;
    }
    for (i, output) in plan.outputs.iter().enumerate() {
        let n = i.to_string();
        ty(
            &["outputs", &n, "type"],
            format!("outputs[{i}].type"),
            &output.ty,
        )?;
    }
    for (i, node) in plan.nodes.iter().enumerate() {
        let n = i.to_string();
        let key = |field: &str| format!("nodes[{i}].{field} (node `{}`)", node.id);
        if !(1..=MAX_REPLICAS).contains(&node.replicas) {
            return Err(err(
                &["nodes", &n, "replicas"],
                key("replicas"),
                out_of_range(node.replicas, 1, MAX_REPLICAS),
            ));
        }
        let b = &node.batch;
        if !(1..=MAX_BATCH).contains(&b.max) {
            return Err(err(
                &["nodes", &n, "batch", "max"],
                key("batch.max"),
                out_of_range(b.max, 1, MAX_BATCH),
            ));
        }
        if !(b.wait_ms.is_finite() && (0.0..=MAX_BATCH_WAIT_MS).contains(&b.wait_ms)) {
            return Err(err(
                &["nodes", &n, "batch", "wait_ms"],
                key("batch.wait_ms"),
                out_of_range(b.wait_ms, 0, MAX_BATCH_WAIT_MS),
            ));
        }
        if let Some(t) = node.timeout_ms {
            if !(1..=MAX_TIMEOUT_MS).contains(&t) {
                return Err(err(
                    &["nodes", &n, "timeout_ms"],
                    key("timeout_ms"),
                    out_of_range(t, 1, MAX_TIMEOUT_MS),
                ));
            }
        }
        for (field, types) in [("in_types", &node.in_types), ("out_types", &node.out_types)] {
            for (j, t) in types.iter().enumerate() {
                ty(&["nodes", &n, field], key(&format!("{field}[{j}]")), t)?;
            }
        }
    }
    // Replica threads per worker (inline nodes have none; an elastic node may build up to
    // its range's max).
    let mut threads = std::collections::BTreeMap::<&str, usize>::new();
    for node in &plan.nodes {
        if !plan.inline.contains(&node.id) {
            let most = node.replica_range.as_ref().map_or(0, |r| r.max);
            *threads.entry(node.worker.as_str()).or_default() += node.replicas.max(most) as usize;
        }
    }
    if let Some((worker, n)) = threads.into_iter().find(|&(_, n)| n > MAX_REPLICA_THREADS) {
        return Err(err(
            &["nodes"],
            "nodes".into(),
            format!(
                "the nodes on worker `{worker}` have {n} replicas in all; a process runs at most {MAX_REPLICA_THREADS} replica threads (SPEC 7.1)"
            ),
        ));
    }
    Ok(())
}

/// The parameters each builtin implementation takes, by builtin id (`text.split` → `{sep}`),
/// as the stdlib declares them.
pub type BuiltinParams = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

/// Check that every builtin node's `params` are parameters its implementation declares
/// (`known`, from the stdlib's declarations): a hand-edited plan with a misspelt or foreign
/// key is refused with the file, line and key, instead of the key being silently ignored.
/// Builtins that `known` does not list (a user's own builtin declarations) are not checked.
pub fn check_builtin_params(
    plan: &Plan,
    text: &str,
    path: &str,
    known: &BuiltinParams,
) -> Result<(), LoadError> {
    for (i, node) in plan.nodes.iter().enumerate() {
        let Some(builtin) = node.implementation.builtin.as_deref() else {
            continue;
        };
        let Some(declared) = known.get(builtin) else {
            continue;
        };
        if let Some(key) = node.params.keys().find(|k| !declared.contains(*k)) {
            let n = i.to_string();
            let takes = if declared.is_empty() {
                "no parameters".to_string()
            } else {
                let names: Vec<&str> = declared.iter().map(String::as_str).collect();
                format!("the parameters {}", names.join(", "))
            };
            return Err(LoadError::invalid(
                path,
                crate::find_key_path(text, &["nodes", &n, "params", key])
                    .or_else(|| crate::find_key_path(text, &["nodes", &n, "params"])),
                &format!("nodes[{i}].params.{} (node `{}`)", short(key), node.id),
                format!(
                    "`{}` is not a parameter of builtin `{builtin}`, which takes {takes}",
                    short(key)
                ),
            ));
        }
    }
    Ok(())
}

fn short(t: &str) -> String {
    if t.chars().count() > 60 {
        let cut: String = t.chars().take(57).collect();
        format!("{cut}...")
    } else {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use crate::Plan;

    const PLAN: &str = "mars_plan: 1
mars_version: 0.1.0
pipeline: demo
inputs_of_plan: {source: demo.mars, source_hash: \"sha256:0\"}
inputs: [{name: x, type: Int}]
outputs: [{name: y, type: Int, from: {node: d}}]
nodes:
  - id: d
    kind: double
    implementation: {builtin: demo.double}
    args: [{input: x}]
    in_types: [Int]
    out_types: [Int]
    device: cpu
    worker: local
    replicas: 2
    batch: {policy: dynamic, max: 8, wait_ms: 1.0}
    predicted: {latency_ms: 1.0, p99_ms: 1.0, throughput: 1000.0, utilization: 0.1}
predicted: {throughput: 1000.0, latency_p50_ms: 1.0, latency_p99_ms: 1.0, bottleneck: d}
";

    fn load(text: &str) -> Result<Plan, String> {
        Plan::from_yaml(text, "p.plan.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn replica_threads_of_a_worker_are_bounded() {
        // 65 nodes of 256 replicas: 16,640 threads on one worker.
        let node = PLAN[PLAN.find("  - id: d").expect("node")
            ..PLAN.find("predicted: {throughput").expect("end")]
            .replace("replicas: 2", "replicas: 256");
        let mut text = PLAN.replace(
            &PLAN[PLAN.find("  - id: d").expect("node")
                ..PLAN.find("predicted: {throughput").expect("end")],
            "",
        );
        let nodes: String = (0..65)
            .map(|i| node.replace("id: d", &format!("id: d{i}")))
            .collect();
        text = text.replace("nodes:\n", &format!("nodes:\n{nodes}"));
        let e = load(&text).expect_err("too many threads");
        assert!(
            e.contains("16640 replicas in all") && e.contains("16384"),
            "{e}"
        );
        let inline: Vec<String> = (0..65).map(|i| format!("d{i}")).collect();
        let text = text.replace(
            "nodes:\n",
            &format!("inline: [{}]\nnodes:\n", inline.join(", ")),
        );
        assert!(load(&text).is_ok(), "inline nodes have no replica threads");
    }

    #[test]
    fn unknown_builtin_params_name_the_key() {
        let plan = Plan::from_yaml(PLAN, "p.plan.yaml").expect("loads");
        let mut known = super::BuiltinParams::new();
        known.insert("demo.double".into(), ["factor".to_string()].into());
        assert!(super::check_builtin_params(&plan, PLAN, "p.plan.yaml", &known).is_ok());
        let text = PLAN.replace(
            "    args: [{input: x}]",
            "    args: [{input: x}]\n    params: {factor: 2, fator: 3}",
        );
        let plan = Plan::from_yaml(&text, "p.plan.yaml").expect("loads");
        let e = super::check_builtin_params(&plan, &text, "p.plan.yaml", &known)
            .expect_err("misspelt key")
            .to_string();
        assert_eq!(
            e,
            "p.plan.yaml:12: `nodes[0].params.fator (node `d`)`: `fator` is not a parameter of builtin `demo.double`, which takes the parameters factor"
        );
        // A builtin the stdlib does not declare is not checked.
        assert!(
            super::check_builtin_params(&plan, &text, "p.plan.yaml", &Default::default()).is_ok()
        );
    }

    #[test]
    fn out_of_range_values_name_file_line_and_key() {
        assert!(load(PLAN).is_ok());
        let e = load(&PLAN.replace("replicas: 2", "replicas: 100000")).expect_err("replicas");
        assert_eq!(
            e,
            "p.plan.yaml:16: `nodes[0].replicas (node `d`)`: value 100000 is out of range (from 1 to 256; SPEC 7.1)"
        );
        let e = load(&PLAN.replace("max: 8,", "max: 0,")).expect_err("max");
        assert!(
            e.starts_with("p.plan.yaml:17: `nodes[0].batch.max (node `d`)`"),
            "{e}"
        );
        let e = load(&PLAN.replace("wait_ms: 1.0", "wait_ms: 1.0e20")).expect_err("wait");
        assert!(
            e.contains("batch.wait_ms") && e.contains("out of range"),
            "{e}"
        );
        let e = load(&PLAN.replace("wait_ms: 1.0", "wait_ms: .nan")).expect_err("nan");
        assert!(e.contains("batch.wait_ms"), "{e}");
        let deep = format!("{}Int{}", "List<".repeat(20_000), ">".repeat(20_000));
        let e = load(&PLAN.replace("in_types: [Int]", &format!("in_types: [\"{deep}\"]")))
            .expect_err("deep");
        assert!(
            e.contains("nodes[0].in_types[0]") && e.contains("nest deeper than 100"),
            "{e}"
        );
    }

    #[test]
    fn a_bom_is_skipped() {
        assert!(load(&format!("\u{feff}{PLAN}")).is_ok());
    }
}
