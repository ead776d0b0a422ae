//! A `map` node's items: one per element of the mapped-over argument, and the request's output
//! ports assembled back from the elements' outputs, in element order. The dataflow's
//! operators and the profiler share these rules.

use crate::node::{Item, Outputs};
use crate::value::Value;

/// The list an argument of a map node holds, or why it is not one.
pub fn mapped_list(value: Value) -> Result<Vec<Value>, String> {
    match value {
        Value::List(l) => Ok(l),
        Value::Json(serde_json::Value::Array(a)) => Ok(a.into_iter().map(Value::Json).collect()),
        other => Err(format!("map over a {}, expected a List", other.kind())),
    }
}

/// One item per element of argument `k` of `item` (the other arguments are copied into each).
pub fn expand(mut item: Item, k: usize) -> Result<Vec<Item>, String> {
    let Some(slot) = item.get_mut(k) else {
        return Err(format!(
            "map over argument {k} of an item of {}",
            item.len()
        ));
    };
    let list = mapped_list(std::mem::replace(slot, Value::Bool(false)))?;
    Ok(list
        .into_iter()
        .map(|elem| {
            let mut it = item.clone();
            it[k] = elem;
            it
        })
        .collect())
}

/// The output ports of a map request from its elements' outputs: one list per port, in
/// element order (an empty list per port for no elements).
pub fn assemble(outs: impl IntoIterator<Item = Outputs>, ports: usize) -> Vec<Value> {
    let mut lists: Vec<Vec<Value>> = vec![Vec::new(); ports];
    for o in outs {
        for (j, v) in o.into_iter().enumerate().take(ports) {
            lists[j].push(v);
        }
    }
    lists.into_iter().map(Value::List).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_then_assemble_keeps_element_order() {
        let item = vec![
            Value::List(vec![Value::Int(1), Value::Int(2)]),
            Value::Int(9),
        ];
        let items = expand(item, 0).expect("a list");
        assert_eq!(items[1], vec![Value::Int(2), Value::Int(9)]);
        let outs = items.into_iter().map(|it| vec![it[0].clone()]);
        assert_eq!(
            assemble(outs, 1),
            vec![Value::List(vec![Value::Int(1), Value::Int(2)])]
        );
        assert_eq!(assemble(Vec::new(), 2), vec![Value::List(vec![]); 2]);
        assert!(expand(vec![Value::Int(1)], 0)
            .unwrap_err()
            .contains("expected a List"));
    }
}
