//! `std.json` implementations: `get` and `set` at a dotted path (`user.names.0`: object keys and
//! list indices). `get` of a missing path is an error naming the first missing step; `set`
//! creates missing object keys, and may replace a list element or append at index `len`.

use std::sync::Arc;

use mars_runtime::node::per_item;
use mars_runtime::{NodeContext, NodeError, Registry, Value};

use crate::params::text_param;

/// Register this module's nodes under `json.get` and `json.set`.
pub fn register(registry: &mut Registry) {
    registry.builtin(
        "json.get",
        Arc::new(|ctx: &NodeContext| {
            let path = text_param(ctx, "path", None)?;
            Ok(per_item(move |i| {
                let v = json_arg(i.first())?;
                Ok(vec![Value::Json(get(v, &path)?.clone())])
            }))
        }),
    );
    registry.builtin(
        "json.set",
        Arc::new(|ctx: &NodeContext| {
            let path = text_param(ctx, "path", None)?;
            Ok(per_item(move |i| {
                let mut v = json_arg(i.first())?.clone();
                set(&mut v, &path, json_arg(i.get(1))?.clone())?;
                Ok(vec![Value::Json(v)])
            }))
        }),
    );
}

fn json_arg(v: Option<&Value>) -> Result<&serde_json::Value, NodeError> {
    match v {
        Some(Value::Json(j)) => Ok(j),
        Some(other) => Err(NodeError::new(format!(
            "expected Json, got {}",
            other.kind()
        ))),
        None => Err(NodeError::new("missing argument")),
    }
}

fn steps(path: &str) -> impl Iterator<Item = &str> {
    path.split('.').filter(|s| !s.is_empty())
}

/// The value at `path` in `v`.
pub fn get<'a>(v: &'a serde_json::Value, path: &str) -> Result<&'a serde_json::Value, NodeError> {
    let mut cur = v;
    for step in steps(path) {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(step),
            serde_json::Value::Array(a) => step.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or_else(|| {
            NodeError::new(format!("path `{path}`: no `{step}` in {}", type_name(cur)))
        })?;
    }
    Ok(cur)
}

/// Set the value at `path` in `v` to `new`.
pub fn set(v: &mut serde_json::Value, path: &str, new: serde_json::Value) -> Result<(), NodeError> {
    let mut cur = v;
    for step in steps(path) {
        let kind = type_name(cur);
        cur = match cur {
            serde_json::Value::Object(m) => {
                m.entry(step.to_string()).or_insert(serde_json::Value::Null)
            }
            serde_json::Value::Array(a) => {
                let i = step
                    .parse::<usize>()
                    .ok()
                    .filter(|&i| i <= a.len())
                    .ok_or_else(|| {
                        NodeError::new(format!(
                            "path `{path}`: `{step}` is not an index of a list of {}",
                            a.len()
                        ))
                    })?;
                if i == a.len() {
                    a.push(serde_json::Value::Null);
                }
                &mut a[i]
            }
            serde_json::Value::Null => {
                *cur = serde_json::Value::Object(serde_json::Map::new());
                match cur {
                    serde_json::Value::Object(m) => {
                        m.entry(step.to_string()).or_insert(serde_json::Value::Null)
                    }
                    _ => unreachable!("just made an object"),
                }
            }
            _ => {
                return Err(NodeError::new(format!(
                    "path `{path}`: cannot step into `{step}` of {kind}"
                )))
            }
        };
    }
    *cur = new;
    Ok(())
}

fn type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn get_paths() {
        let v = json!({"user": {"names": ["ann", "bo"]}});
        assert_eq!(get(&v, "user.names.1").expect("present"), &json!("bo"));
        assert_eq!(get(&v, "").expect("root"), &v);
        let e = get(&v, "user.age").expect_err("missing");
        assert!(e.message.contains("no `age` in an object"), "{}", e.message);
        assert!(get(&v, "user.names.7").is_err());
    }

    #[test]
    fn set_paths() {
        let mut v = json!({"a": [1]});
        set(&mut v, "a.1", json!(2)).expect("append");
        set(&mut v, "b.c", json!(true)).expect("create");
        set(&mut v, "a.0", json!(0)).expect("replace");
        assert_eq!(v, json!({"a": [0, 2], "b": {"c": true}}));
        assert!(set(&mut v, "a.5", json!(1)).is_err());
        assert!(set(&mut v, "b.c.d", json!(1)).is_err());
    }

    #[test]
    fn through_the_registry() {
        let mut r = Registry::new();
        register(&mut r);
        let mut g = crate::params::build(&r, "json.get", &[("path", json!("k"))]).expect("builds");
        let out = g.run_batch(vec![
            vec![Value::Json(json!({"k": 1}))],
            vec![Value::Text("x".into())],
        ]);
        assert_eq!(out[0], Ok(vec![Value::Json(json!(1))]));
        assert!(out[1].is_err());
        assert!(crate::params::build(&r, "json.get", &[]).is_err());
    }
}
