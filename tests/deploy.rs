//! `marsc deploy k8s` (SPEC 10.6): the manifests it writes are valid Kubernetes objects under
//! strict schemas derived from the official Kubernetes Python client's models
//! (`tests/deploy/k8s-schemas.json`, written by `tests/deploy/k8s_schemas.py`): every key is
//! one the model knows, every value has the model's type, required keys are present. No
//! cluster is needed.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value as Json;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn marsc() -> Command {
    Command::cargo_bin("marsc").expect("the marsc binary is built")
}

fn schemas() -> Json {
    let text =
        std::fs::read_to_string(root().join("tests/deploy/k8s-schemas.json")).expect("schemas");
    serde_json::from_str(&text).expect("schemas are JSON")
}

/// Where `value` breaks `schema` (`$ref`s resolve in `defs`), as a path and a reason.
fn violations(value: &Json, schema: &Json, defs: &Json, at: &str, out: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Json::as_str) {
        let name = r.trim_start_matches("#/definitions/");
        let def = defs
            .get(name)
            .unwrap_or_else(|| panic!("no definition {name}"));
        return violations(value, def, defs, at, out);
    }
    let ty = schema.get("type").and_then(Json::as_str);
    let ok = match ty {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => panic!("schema type {other}"),
    };
    if !ok {
        out.push(format!("{at}: expected {}, got {value}", ty.unwrap_or("?")));
        return;
    }
    if let (Some(items), Some(a)) = (schema.get("items"), value.as_array()) {
        for (i, v) in a.iter().enumerate() {
            violations(v, items, defs, &format!("{at}[{i}]"), out);
        }
    }
    let Some(obj) = value.as_object() else { return };
    if let Some(req) = schema.get("required").and_then(Json::as_array) {
        for k in req.iter().filter_map(Json::as_str) {
            if !obj.contains_key(k) {
                out.push(format!("{at}: missing required `{k}`"));
            }
        }
    }
    let props = schema.get("properties").and_then(Json::as_object);
    for (k, v) in obj {
        match props.and_then(|p| p.get(k)) {
            Some(s) => violations(v, s, defs, &format!("{at}.{k}"), out),
            None => match schema.get("additionalProperties") {
                Some(Json::Bool(false)) => out.push(format!("{at}: unknown key `{k}`")),
                Some(s @ Json::Object(_)) => violations(v, s, defs, &format!("{at}.{k}"), out),
                _ => {}
            },
        }
    }
}

/// Validate one manifest by its `apiVersion` and `kind`; the violations.
fn validate(doc: &Json, schemas: &Json) -> Vec<String> {
    let key = format!(
        "{}/{}",
        doc["apiVersion"].as_str().unwrap_or("?"),
        doc["kind"].as_str().unwrap_or("?")
    );
    let Some(model) = schemas["kinds"].get(&key).and_then(Json::as_str) else {
        return vec![format!("no schema for {key}")];
    };
    let mut out = Vec::new();
    let defs = &schemas["definitions"];
    violations(doc, &json_ref(model), defs, &key, &mut out);
    out
}

fn json_ref(model: &str) -> Json {
    serde_json::json!({"$ref": format!("#/definitions/{model}")})
}

fn deploy(plans: &[PathBuf], extra: &[&str]) -> Vec<Json> {
    let out = marsc()
        .args(["deploy", "k8s"])
        .args(plans)
        .args(extra)
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).expect("utf-8");
    text.split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str::<Json>(d).expect("a YAML document"))
        .collect()
}

fn kinds(docs: &[Json]) -> Vec<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn served_and_batch_plans_give_valid_manifests() {
    let schemas = schemas();
    let dir = tempfile::tempdir().expect("temp dir");
    // An elastic one-worker plan, compiled here (it has a budget of 8 cores).
    let plan = dir.path().join("drift.plan.yaml");
    marsc()
        .arg("compile")
        .arg(root().join("tests/pool/drift.mars"))
        .arg("--target")
        .arg(root().join("tests/pool/target.yaml"))
        .arg("-o")
        .arg(&plan)
        .assert()
        .success();
    let served = deploy(
        &[plan.clone(), root().join("tests/serve/ab.plan.yaml")],
        &["--namespace", "ml"],
    );
    assert_eq!(
        kinds(&served),
        [
            "PriorityClass",
            "PriorityClass",
            "ConfigMap",
            "Service",
            "StatefulSet",
            "HorizontalPodAutoscaler",
            "ConfigMap",
            "Service",
            "StatefulSet",
            "HorizontalPodAutoscaler"
        ]
    );
    for d in &served {
        let v = validate(d, &schemas);
        assert!(v.is_empty(), "{v:#?}\n{d:#}");
    }
    let sts = &served[4];
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "mars-online");
    assert_eq!(
        pod["containers"][0]["resources"]["requests"]["cpu"],
        "8000m"
    );
    assert!(pod["containers"][0]["command"][2]
        .as_str()
        .expect("script")
        .contains("--elastic on"));
    let hpa = &served[5]["spec"];
    assert_eq!(
        hpa["metrics"][0]["pods"]["metric"]["name"],
        "mars_queue_depth"
    );
    assert_eq!(
        hpa["metrics"][0]["pods"]["metric"]["selector"]["matchLabels"]["pipeline"],
        "drift"
    );

    // A three-worker plan as an offline batch cluster: one pod per process, no autoscaler.
    let batch = deploy(
        &[root().join("tests/runtime/spread.plan.yaml")],
        &["--priority", "offline"],
    );
    assert_eq!(
        kinds(&batch),
        [
            "PriorityClass",
            "PriorityClass",
            "ConfigMap",
            "Service",
            "StatefulSet"
        ]
    );
    for d in &batch {
        let v = validate(d, &schemas);
        assert!(v.is_empty(), "{v:#?}\n{d:#}");
    }
    assert_eq!(batch[4]["spec"]["replicas"], 3);
    assert_eq!(
        batch[4]["spec"]["template"]["spec"]["priorityClassName"],
        "mars-offline"
    );
    let hosts = batch[2]["data"]["hosts"].as_str().expect("hosts");
    assert_eq!(hosts.lines().count(), 3);
    assert!(hosts.starts_with("mars-spread-0.mars-spread.default.svc.cluster.local:7100\n"));
}

#[test]
fn the_validator_catches_what_kubernetes_would_refuse() {
    let schemas = schemas();
    let docs = deploy(&[root().join("tests/serve/ab.plan.yaml")], &[]);
    let mut sts = docs[4].clone();
    assert!(validate(&sts, &schemas).is_empty());
    sts["spec"]["replicaz"] = 2.into();
    sts["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] =
        serde_json::json!({"nvidia.com/gpu": 1});
    sts["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .expect("container")
        .remove("name");
    let v = validate(&sts, &schemas);
    assert_eq!(v.len(), 3, "{v:#?}");
    assert!(v.iter().any(|e| e.contains("unknown key `replicaz`")));
    assert!(v
        .iter()
        .any(|e| e.contains("nvidia.com/gpu: expected string")));
    assert!(v.iter().any(|e| e.contains("missing required `name`")));
}

#[test]
fn a_multi_worker_plan_cannot_be_served_and_says_why() {
    let out = marsc()
        .args(["deploy", "k8s"])
        .arg(root().join("tests/runtime/spread.plan.yaml"))
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("runs on 3 workers") && err.contains("--priority offline"),
        "{err}"
    );
}
