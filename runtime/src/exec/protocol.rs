//! The exec protocol's lines (SPEC 5.1): request lines, response lines and the JSON encoding
//! of values on them.

use mars_plan::DataType;

use crate::codec::{decode, encode, EdgeContext};
use crate::value::Value;

/// One item's answer in a response line.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Ok(serde_json::Value),
    Error(String),
}

/// Whether a line has the shape of a response (a JSON object with `results`), checked
/// cheaply: start-up chatter before a program's first response is skipped by this test.
pub fn looks_like_response(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with('{') && t.contains("\"results\"")
}

/// Parse `{"results": [{"id": N, "ok": V} | {"id": N, "error": "..."}]}`.
pub fn parse_response(line: &str) -> Result<Vec<(u64, Answer)>, String> {
    let json: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let results = json
        .get("results")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| "expected an object with a `results` array".to_string())?;
    let mut answers = Vec::with_capacity(results.len());
    for (i, r) in results.iter().enumerate() {
        let id = r
            .get("id")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| format!("results[{i}] has no integer `id`"))?;
        let answer = match (r.get("ok"), r.get("error")) {
            (Some(v), None) => Answer::Ok(v.clone()),
            (None, Some(serde_json::Value::String(m))) => Answer::Error(m.clone()),
            (None, Some(other)) => Answer::Error(other.to_string()),
            (Some(_), Some(_)) => return Err(format!("results[{i}] has both `ok` and `error`")),
            (None, None) => return Err(format!("results[{i}] has neither `ok` nor `error`")),
        };
        answers.push((id, answer));
    }
    Ok(answers)
}

/// The request line for `entries` (`(id, args)`), newline included.
pub fn request_line(entries: &[(u64, &serde_json::Value)]) -> String {
    let batch: Vec<serde_json::Value> = entries
        .iter()
        .map(|(id, args)| serde_json::json!({"id": id, "args": args}))
        .collect();
    let mut line = serde_json::json!({ "batch": batch }).to_string();
    line.push('\n');
    line
}

pub fn truncate(s: &str, max: usize) -> String {
    let s = s.trim_end();
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// An item's arguments as the JSON array of a request entry.
pub fn encode_args(item: &[Value], cx: &EdgeContext) -> Result<serde_json::Value, String> {
    item.iter()
        .map(|v| encode(v, cx))
        .collect::<Result<Vec<_>, _>>()
        .map(serde_json::Value::Array)
}

/// `ok` of a result: the value itself for one output port, an array of them for several.
pub fn decode_outputs(
    json: &serde_json::Value,
    types: &[DataType],
    cx: &EdgeContext,
) -> Result<Vec<Value>, String> {
    match types {
        [one] => Ok(vec![
            decode(json, one, cx).map_err(|e| format!("output: {e}"))?
        ]),
        many => {
            let arr = json.as_array().ok_or_else(|| {
                format!(
                    "expected an array of {} outputs, got `{}`",
                    many.len(),
                    truncate(&json.to_string(), 60)
                )
            })?;
            if arr.len() != many.len() {
                return Err(format!(
                    "expected {} outputs, got {}",
                    many.len(),
                    arr.len()
                ));
            }
            arr.iter()
                .zip(many)
                .enumerate()
                .map(|(i, (j, t))| decode(j, t, cx).map_err(|e| format!("output {i}: {e}")))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_and_malformed_ones_say_why() {
        let a = parse_response(r#"{"results": [{"id": 2, "error": "no"}, {"id": 1, "ok": 5}]}"#)
            .expect("parses");
        assert_eq!(
            a,
            vec![
                (2, Answer::Error("no".into())),
                (1, Answer::Ok(serde_json::json!(5)))
            ]
        );
        assert!(parse_response("nope")
            .expect_err("fails")
            .contains("not JSON"));
        assert!(parse_response(r#"{"results": [{"ok": 1}]}"#)
            .expect_err("fails")
            .contains("no integer `id`"));
        assert!(looks_like_response(r#" {"results": []}"#));
        assert!(!looks_like_response("loading model…"));
        assert!(!looks_like_response(r#"{"ready": true}"#));
    }
}
