//! `std.list` implementations: `len`, `take` (the first `n` elements), `concat` and `flatten`.

use std::sync::Arc;

use mars_runtime::node::per_item;
use mars_runtime::{Item, NodeContext, NodeError, Registry, Value};

use crate::params::int_param;

/// Register this module's nodes under `list.len`, `list.take`, `list.concat`, `list.flatten`.
pub fn register(registry: &mut Registry) {
    registry.builtin(
        "list.len",
        Arc::new(|_: &NodeContext| {
            Ok(per_item(|i| {
                Ok(vec![Value::Int(list(&i, 0)?.len() as i64)])
            }))
        }),
    );
    registry.builtin(
        "list.take",
        Arc::new(|ctx: &NodeContext| {
            let n = int_param(ctx, "n", None)?;
            let n = usize::try_from(n).map_err(|_| {
                NodeError::new(format!(
                    "node `{}`: parameter `n` must be non-negative",
                    ctx.node.id
                ))
            })?;
            Ok(per_item(move |i| {
                Ok(vec![Value::List(
                    list(&i, 0)?.iter().take(n).cloned().collect(),
                )])
            }))
        }),
    );
    registry.builtin(
        "list.concat",
        Arc::new(|_: &NodeContext| {
            Ok(per_item(|i| {
                let mut out = list(&i, 0)?.to_vec();
                out.extend_from_slice(list(&i, 1)?);
                Ok(vec![Value::List(out)])
            }))
        }),
    );
    registry.builtin(
        "list.flatten",
        Arc::new(|_: &NodeContext| {
            Ok(per_item(|i| {
                let mut out = Vec::new();
                for inner in list(&i, 0)? {
                    out.extend_from_slice(inner.as_list()?);
                }
                Ok(vec![Value::List(out)])
            }))
        }),
    );
}

fn list(item: &Item, i: usize) -> Result<&[Value], NodeError> {
    item.get(i)
        .ok_or_else(|| NodeError::new(format!("missing argument {i}")))?
        .as_list()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::build;
    use serde_json::json;

    fn ints(xs: &[i64]) -> Value {
        Value::List(xs.iter().map(|&x| Value::Int(x)).collect())
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        register(&mut r);
        r
    }

    #[test]
    fn len_take_concat_flatten() {
        let r = registry();
        let run = |id: &str, params: &[(&str, serde_json::Value)], item: Item| {
            build(&r, id, params)
                .expect("builds")
                .run_batch(vec![item])
                .remove(0)
        };
        assert_eq!(
            run("list.len", &[], vec![ints(&[1, 2, 3])]),
            Ok(vec![Value::Int(3)])
        );
        assert_eq!(
            run("list.take", &[("n", json!(2))], vec![ints(&[1, 2, 3])]),
            Ok(vec![ints(&[1, 2])])
        );
        assert_eq!(
            run("list.take", &[("n", json!(9))], vec![ints(&[1])]),
            Ok(vec![ints(&[1])])
        );
        assert_eq!(
            run("list.concat", &[], vec![ints(&[1]), ints(&[2, 3])]),
            Ok(vec![ints(&[1, 2, 3])])
        );
        let nested = Value::List(vec![ints(&[1]), ints(&[]), ints(&[2, 3])]);
        assert_eq!(
            run("list.flatten", &[], vec![nested]),
            Ok(vec![ints(&[1, 2, 3])])
        );
        assert!(run("list.len", &[], vec![Value::Int(1)]).is_err());
        assert!(build(&r, "list.take", &[("n", json!(-1))]).is_err());
    }
}
