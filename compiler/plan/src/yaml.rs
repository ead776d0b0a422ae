//! What every YAML file of Mars goes through before serde sees it: a byte-order mark is
//! dropped, the file's size and its nesting are bounded (serde_yaml takes quadratic time on
//! deeply nested input, so depth is measured by a linear scan first), and maps keyed by
//! name refuse a key given twice instead of keeping the last.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use crate::limits::{MAX_YAML_BYTES, MAX_YAML_DEPTH};

/// The text without a leading byte-order mark (editors on Windows write one).
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Why a YAML text is refused before parsing: the 1-based line and the message.
pub fn precheck(text: &str) -> Result<(), (Option<usize>, String)> {
    if text.len() as u64 > MAX_YAML_BYTES {
        return Err((
            None,
            format!(
                "the file is {} bytes; at most {MAX_YAML_BYTES} are read (SPEC 7.1)",
                text.len()
            ),
        ));
    }
    match too_deep(text) {
        Some(line) => Err((
            Some(line),
            format!("collections nest deeper than {MAX_YAML_DEPTH} levels (SPEC 7.1)"),
        )),
        None => Ok(()),
    }
}

/// The first line (1-based) where collections nest deeper than [`MAX_YAML_DEPTH`]: block
/// nesting by indentation and `- ` markers, plus flow nesting by `[` and `{`. Text is not
/// nesting: quoted scalars (which may span lines), comments, block scalars (`|`, `>`: the
/// lines indented past their key) and plain scalars (a bracket inside one, such as
/// `a: b [c`, or on a line continuing one) are skipped. In block context a bracket opens a
/// flow collection only where a value starts (after `key: `, `- `, `? `, a tag or an anchor,
/// or at the start of a line). It overestimates a little (a sequence item's keys count as a
/// level of their own), never underestimates what serde_yaml accepts.
pub fn too_deep(text: &str) -> Option<usize> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    // The open quote, carried across lines (quoted scalars may span lines).
    let mut quote: Option<u8> = None;
    // Lines indented past this column are text: the content of a block scalar or the
    // continuation of a plain scalar opened on a line whose first token is at the column.
    let mut text_past: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let bytes = line.as_bytes();
        let mut i = 0;
        // The column of the line's first token after its `- ` markers.
        let mut first = 0;
        // The column of the line's last `- ` marker, if it has one.
        let mut last_dash = None;
        if quote.is_none() && flow == 0 {
            let indent = bytes.iter().take_while(|&&b| b == b' ').count();
            let rest = &bytes[indent..];
            if rest.is_empty() {
                continue;
            }
            if let Some(col) = text_past {
                if indent > col {
                    continue;
                }
                text_past = None;
            }
            if rest[0] == b'#' {
                continue;
            }
            while indents.last().is_some_and(|&top| top > indent) {
                indents.pop();
            }
            if indents.last().is_none_or(|&top| top < indent) {
                indents.push(indent);
            }
            // `- - - x`: each marker opens a sequence inside the last.
            i = indent;
            let mut dashes = 0;
            while bytes.get(i) == Some(&b'-') && matches!(bytes.get(i + 1), Some(b' ') | None) {
                last_dash = Some(i);
                dashes += 1;
                i += 2;
                while bytes.get(i) == Some(&b' ') {
                    i += 1;
                }
            }
            if indents.len() + dashes > MAX_YAML_DEPTH {
                return Some(n + 1);
            }
            first = i;
        }
        let block = indents.len();
        let starts_in_block = quote.is_none() && flow == 0;
        let mut prev = b' ';
        // Block context: whether a value may start here, whether a tag or anchor is being
        // read (a value may start after it), and whether a plain scalar is open.
        let mut at_value = starts_in_block;
        let mut props = false;
        let mut plain = false;
        // Where the line's text ends (before a comment).
        let mut end = bytes.len();
        while i < bytes.len() {
            let c = bytes[i];
            match quote {
                Some(b'"') => match c {
                    b'\\' => i += 1,
                    b'"' => quote = None,
                    _ => {}
                },
                Some(_) => {
                    if c == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            quote = None;
                        }
                    }
                }
                None if flow > 0 => {
                    let token_start = matches!(prev, b' ' | b'\t' | b'[' | b'{' | b',' | b':');
                    match c {
                        b'"' | b'\'' if token_start => quote = Some(c),
                        b'#' if matches!(prev, b' ' | b'\t') => {
                            end = i;
                            break;
                        }
                        b'[' | b'{' => {
                            flow += 1;
                            if block + flow > MAX_YAML_DEPTH {
                                return Some(n + 1);
                            }
                        }
                        b']' | b'}' => flow = flow.saturating_sub(1),
                        _ => {}
                    }
                }
                None => match c {
                    b'#' if matches!(prev, b' ' | b'\t') => {
                        end = i;
                        break;
                    }
                    b' ' | b'\t' => {
                        if props || matches!(prev, b':' | b'?') {
                            at_value = true;
                            props = false;
                            plain = false;
                        }
                    }
                    b'"' | b'\'' if at_value => {
                        quote = Some(c);
                        at_value = false;
                    }
                    b'[' | b'{' if at_value => {
                        at_value = false;
                        flow += 1;
                        if block + flow > MAX_YAML_DEPTH {
                            return Some(n + 1);
                        }
                    }
                    b'&' | b'!' if at_value => {
                        at_value = false;
                        props = true;
                    }
                    _ => {
                        if at_value {
                            plain = true;
                        }
                        if !props {
                            at_value = false;
                        }
                    }
                },
            }
            prev = c;
            i += 1;
        }
        if starts_in_block && quote.is_none() && flow == 0 {
            let tail = line[..end].trim_end();
            // A scalar after `key: ` is text on the lines indented past the key; one right
            // after a `- ` marker, on the lines indented past the marker.
            let (value, col) = match tail.rsplit_once(": ") {
                Some((_, v)) => (v, first),
                None => (&tail[first.min(tail.len())..], last_dash.unwrap_or(first)),
            };
            if is_block_indicator(value.trim()) || (plain && !tail.ends_with(':')) {
                text_past = Some(col);
            }
        }
    }
    None
}

/// `|` or `>` with optional chomping (`+`, `-`) and indentation (`1`–`9`) indicators.
fn is_block_indicator(v: &str) -> bool {
    let mut b = v.bytes();
    matches!(b.next(), Some(b'|' | b'>')) && b.all(|c| matches!(c, b'+' | b'-' | b'1'..=b'9'))
}

/// A map that refuses a key given twice (serde's own maps keep the last): for the maps of
/// Mars's files that are keyed by name (`nodes:` of a profile, `fanout:`).
pub fn unique_keys<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map keyed by name")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "the key `{key}` is given twice"
                    )));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Unique(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_measured_in_flow_and_block_style() {
        assert_eq!(too_deep("a: [1, {b: [2]}]\nc:\n  d:\n    - e\n"), None);
        let flow = format!("a: {}1{}\n", "[".repeat(100), "]".repeat(100));
        assert_eq!(too_deep(&flow), Some(1));
        let block: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert_eq!(too_deep(&block), Some(MAX_YAML_DEPTH + 1));
        let dashes = format!("{}x\n", "- ".repeat(100));
        assert_eq!(too_deep(&dashes), Some(1));
        // Brackets inside quotes and comments are text.
        let quoted = format!(
            "a: \"{}\" # {}\nb: '{}'\n",
            "[".repeat(99),
            "{".repeat(99),
            "[".repeat(99)
        );
        assert_eq!(too_deep(&quoted), None);
    }

    #[test]
    fn brackets_in_block_and_plain_scalars_are_text() {
        let deep = "[".repeat(100);
        // A block scalar's lines, whatever they hold, down to the next key.
        let literal = format!("a: |-\n  x\n  {deep}\n\n  {deep}\nb: 1\n");
        assert_eq!(too_deep(&literal), None);
        let item = format!("- >2\n   {deep}\n- c\n- |-\n  {deep}\n- plain\n  {deep}\n");
        assert_eq!(too_deep(&item), None);
        // A plain scalar holding brackets, and the lines that continue it.
        let plain = format!("a: b {deep}\nc: x\n  {deep}\nd: e{deep}\n");
        assert_eq!(too_deep(&plain), None);
        // After a block scalar ends, nesting counts again; a tag or an anchor may precede
        // a flow collection.
        let after = format!("a: |\n  t\nb: {deep}1\n");
        assert_eq!(too_deep(&after), Some(3));
        assert_eq!(too_deep(&format!("a: !!seq {deep}\n")), Some(1));
        assert_eq!(too_deep(&format!("a: &x {deep}\n")), Some(1));
        assert_eq!(too_deep(&format!("- {deep}\n")), Some(1));
        // A key line opens no text: what is indented under it is nesting.
        let keys: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert_eq!(
            too_deep(&format!("a: |\n  t\n{keys}")),
            Some(MAX_YAML_DEPTH + 3)
        );
    }

    /// Found by `fuzz/run.sh` (load_plan): a plan whose note holds a quoted run of brackets
    /// loaded, but the plan as written (the note as a block scalar) was refused as too deep.
    #[test]
    fn a_plan_with_brackets_in_its_notes_loads_again_once_written() {
        for text in [
            include_str!("testdata/fuzz_notes_brackets.plan.yaml"),
            include_str!("testdata/fuzz_notes_brackets2.plan.yaml"),
        ] {
            let plan = crate::Plan::from_yaml(text, "fuzz.plan.yaml").expect("loads");
            let written = plan.to_yaml();
            let again = crate::Plan::from_yaml(&written, "again.plan.yaml")
                .unwrap_or_else(|e| panic!("{e:?}\n{written}"));
            assert_eq!(plan, again);
        }
    }

    #[test]
    fn a_key_given_twice_is_refused() {
        #[derive(serde::Deserialize, Debug)]
        struct M {
            #[serde(deserialize_with = "unique_keys")]
            #[allow(dead_code)]
            nodes: BTreeMap<String, u32>,
        }
        assert!(serde_yaml::from_str::<M>("nodes: {a: 1, b: 2}").is_ok());
        let e = serde_yaml::from_str::<M>("nodes:\n  a: 1\n  a: 2\n").expect_err("twice");
        assert!(e.to_string().contains("the key `a` is given twice"), "{e}");
    }
}
