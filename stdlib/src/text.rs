//! `std.text` implementations: `lower`, `normalize` (Unicode NFKC, whitespace collapsed and
//! trimmed), `truncate` (to at most `max_chars` characters), `split` and `join`; and the
//! title pipeline's `text.split_numbers` / `text.fill` (number phrases out of a text and back);
//! and `text.compress_prompt` (a small LM drops a prompt's least informative context words:
//! [`crate::models::compress`]).

use std::sync::Arc;

use mars_runtime::node::per_item;
use mars_runtime::{Item, Node, NodeContext, NodeError, Outputs, Registry, Value};
use unicode_normalization::UnicodeNormalization;

use crate::params::{int_param, text_param};

/// Register this module's nodes under `text.lower`, `text.normalize`, `text.truncate`,
/// `text.split`, `text.join`, `text.split_numbers` and `text.fill`.
pub fn register(registry: &mut Registry) {
    registry.builtin("text.compress_prompt", Arc::new(compress_prompt));
    registry.builtin(
        "text.lower",
        Arc::new(|_: &NodeContext| Ok(per_item(|i| one_text(i, |t| t.to_lowercase())))),
    );
    registry.builtin(
        "text.normalize",
        Arc::new(|_: &NodeContext| Ok(per_item(|i| one_text(i, normalize)))),
    );
    registry.builtin(
        "text.truncate",
        Arc::new(|ctx: &NodeContext| {
            let max = int_param(ctx, "max_chars", None)?;
            let max = usize::try_from(max).map_err(|_| {
                NodeError::new(format!(
                    "node `{}`: parameter `max_chars` must be non-negative",
                    ctx.node.id
                ))
            })?;
            Ok(per_item(move |i| {
                one_text(i, |t| t.chars().take(max).collect())
            }))
        }),
    );
    registry.builtin(
        "text.split",
        Arc::new(|ctx: &NodeContext| {
            let sep = text_param(ctx, "sep", Some(" "))?;
            if sep.is_empty() {
                return Err(NodeError::new(format!(
                    "node `{}`: parameter `sep` must not be empty",
                    ctx.node.id
                )));
            }
            Ok(per_item(move |i| {
                let t = arg(&i, 0)?.as_text()?;
                Ok(vec![Value::List(
                    t.split(sep.as_str())
                        .map(|s| Value::Text(s.to_string()))
                        .collect(),
                )])
            }))
        }),
    );
    registry.builtin(
        "text.join",
        Arc::new(|ctx: &NodeContext| {
            let sep = text_param(ctx, "sep", Some(" "))?;
            Ok(per_item(move |i| {
                let parts = arg(&i, 0)?.as_list()?;
                let texts = parts
                    .iter()
                    .map(Value::as_text)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(vec![Value::Text(texts.join(&sep))])
            }))
        }),
    );
    registry.builtin(
        "text.split_numbers",
        Arc::new(|_: &NodeContext| {
            Ok(per_item(|i| {
                let (template, phrases) = split_numbers(arg(&i, 0)?.as_text()?);
                Ok(vec![
                    Value::Text(template),
                    Value::List(phrases.into_iter().map(Value::Text).collect()),
                ])
            }))
        }),
    );
    registry.builtin(
        "text.fill",
        Arc::new(|_: &NodeContext| Ok(Box::new(Fill) as Box<dyn Node>)),
    );
}

fn arg(item: &Item, i: usize) -> Result<&Value, NodeError> {
    item.get(i)
        .ok_or_else(|| NodeError::new(format!("missing argument {i}")))
}

fn one_text(item: Item, f: impl Fn(&str) -> String) -> Result<Outputs, NodeError> {
    Ok(vec![Value::Text(f(arg(&item, 0)?.as_text()?))])
}

/// NFKC, then every run of whitespace becomes one space, trimmed at both ends.
pub fn normalize(t: &str) -> String {
    let nfkc: String = t.nfkc().collect();
    nfkc.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// English number words the title pipeline recognises.
const NUMBER_WORDS: &[&str] = &[
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
    "thirty",
    "forty",
    "fifty",
    "sixty",
    "seventy",
    "eighty",
    "ninety",
    "hundred",
    "thousand",
];

/// Replace each maximal run of English number words in `t` (space-separated, compared in lower
/// case) by a placeholder `{0}`, `{1}`, …; returns the template and the phrases, in order.
pub fn split_numbers(t: &str) -> (String, Vec<String>) {
    let mut out: Vec<String> = Vec::new();
    let mut phrases: Vec<String> = Vec::new();
    let mut run: Vec<String> = Vec::new();
    let flush = |run: &mut Vec<String>, out: &mut Vec<String>, phrases: &mut Vec<String>| {
        if !run.is_empty() {
            out.push(format!("{{{}}}", phrases.len()));
            phrases.push(run.join(" "));
            run.clear();
        }
    };
    for w in t.split(' ') {
        let lw = w.to_lowercase();
        if NUMBER_WORDS.contains(&lw.as_str()) {
            run.push(lw);
        } else {
            flush(&mut run, &mut out, &mut phrases);
            out.push(w.to_string());
        }
    }
    flush(&mut run, &mut out, &mut phrases);
    (out.join(" "), phrases)
}

/// `text.fill(template, parts)`: the inverse of `split_numbers`, placeholder `{i}` ← `parts[i]`.
struct Fill;

impl Node for Fill {
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        batch
            .into_iter()
            .map(|i| {
                let template = arg(&i, 0)?.as_text()?;
                let parts = arg(&i, 1)?
                    .as_list()?
                    .iter()
                    .map(Value::as_text)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(vec![Value::Text(fill(template, &parts)?)])
            })
            .collect()
    }
}

/// Replace each `{i}` in `template` by `parts[i]`; an index with no part is an error.
pub fn fill(template: &str, parts: &[&str]) -> Result<String, NodeError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after
            .find('}')
            .and_then(|close| after[..close].parse::<usize>().ok().map(|i| (close, i)))
        {
            Some((close, i)) => {
                let part = parts.get(i).ok_or_else(|| {
                    NodeError::new(format!(
                        "placeholder {{{i}}} but only {} parts",
                        parts.len()
                    ))
                })?;
                out.push_str(part);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_nfkc_and_whitespace() {
        assert_eq!(normalize("  ﬁve\u{3000}Ｐack \t of  2 "), "five Pack of 2");
        assert_eq!(normalize(""), "");
    }

    #[test]
    fn split_numbers_and_fill_round_trip() {
        let (t, p) = split_numbers("Pack of Twenty Four batteries, three hundred sheets");
        assert_eq!(t, "Pack of {0} batteries, {1} sheets");
        assert_eq!(p, vec!["twenty four", "three hundred"]);
        assert_eq!(
            fill(&t, &["vingt-quatre", "trois cents"]).expect("fills"),
            "Pack of vingt-quatre batteries, trois cents sheets"
        );
        assert!(fill("{3}", &["a"]).is_err());
        assert_eq!(fill("a {b} {", &[]).expect("no placeholders"), "a {b} {");
    }

    #[test]
    fn builtins_through_the_registry() {
        let r = {
            let mut r = Registry::new();
            register(&mut r);
            r
        };
        let mut split = crate::params::build(&r, "text.split", &[("sep", serde_json::json!(","))])
            .expect("builds");
        let out = split.run_batch(vec![vec![Value::Text("a,b".into())], vec![Value::Int(3)]]);
        assert_eq!(
            out[0],
            Ok(vec![Value::List(vec![
                Value::Text("a".into()),
                Value::Text("b".into())
            ])])
        );
        assert!(out[1].is_err());
        let mut trunc =
            crate::params::build(&r, "text.truncate", &[("max_chars", serde_json::json!(2))])
                .expect("builds");
        assert_eq!(
            trunc.run_batch(vec![vec![Value::Text("héllo".into())]])[0],
            Ok(vec![Value::Text("hé".into())])
        );
        assert!(crate::params::build(&r, "text.truncate", &[]).is_err());
        let mut join = crate::params::build(&r, "text.join", &[]).expect("builds");
        let parts = Value::List(vec![Value::Text("a".into()), Value::Text("b".into())]);
        assert_eq!(
            join.run_batch(vec![vec![parts]])[0],
            Ok(vec![Value::Text("a b".into())])
        );
    }
}

/// The default scorer of `compress_prompt`.
pub const COMPRESS_WEIGHTS: &str = "model:smollm2-135m-instruct";

/// `text.compress_prompt(prompt; ratio, keep_digits, weights)`: the scorer loads with the node (one per
/// replica, its cache of passage scores with it).
fn compress_prompt(ctx: &NodeContext) -> Result<Box<dyn Node>, NodeError> {
    let fail = |m: String| NodeError::new(format!("node `{}`: {m}", ctx.node.id));
    let ratio = match ctx.node.params.get("ratio") {
        None | Some(serde_json::Value::Null) => 0.4,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| fail(format!("parameter `ratio` must be a number, got `{v}`")))?,
    };
    let ratio = crate::models::compress::check_ratio(ratio)
        .map_err(|m| fail(format!("parameter `ratio`: {m}")))?;
    let weights = text_param(ctx, "weights", Some(COMPRESS_WEIGHTS))?;
    let keep_digits = match ctx.node.params.get("keep_digits") {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(v) => {
            return Err(fail(format!(
                "parameter `keep_digits` must be true or false, got `{v}`"
            )))
        }
    };
    let path = if weights.starts_with(crate::store::MODEL_PREFIX) {
        crate::store::Store::from_env()
            .and_then(|s| s.resolve(&weights))
            .map_err(|e| fail(e.0))?
            .path
    } else {
        ctx.base_dir.join(&weights)
    };
    let mut c = crate::models::compress::Compressor::load(&path, ratio, keep_digits)
        .map_err(|m| fail(format!("{weights}: {m}")))?;
    Ok(per_item(move |item| {
        let text = item
            .first()
            .ok_or_else(|| NodeError::new("compress_prompt: no prompt"))?
            .as_text()?;
        c.compress(text)
            .map(|t| vec![Value::Text(t)])
            .map_err(NodeError::new)
    }))
}
