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
/// nesting by indentation and `- ` markers, plus flow nesting by `[` and `{` outside quoted
/// scalars and comments. It overestimates a little (a sequence item's keys count as a level
/// of their own), never underestimates.
pub fn too_deep(text: &str) -> Option<usize> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    // The open quote, carried across lines (quoted scalars may span lines).
    let mut quote: Option<u8> = None;
    for (n, line) in text.lines().enumerate() {
        let bytes = line.as_bytes();
        let mut i = 0;
        if quote.is_none() && flow == 0 {
            let indent = bytes.iter().take_while(|&&b| b == b' ').count();
            let rest = &bytes[indent..];
            if rest.is_empty() || rest[0] == b'#' {
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
                dashes += 1;
                i += 2;
                while bytes.get(i) == Some(&b' ') {
                    i += 1;
                }
            }
            if indents.len() + dashes > MAX_YAML_DEPTH {
                return Some(n + 1);
            }
        }
        let block = indents.len();
        let mut prev = b' ';
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
                None => {
                    let token_start = matches!(prev, b' ' | b'\t' | b'[' | b'{' | b',' | b':');
                    match c {
                        b'"' | b'\'' if token_start => quote = Some(c),
                        b'#' if matches!(prev, b' ' | b'\t') => break,
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
            }
            prev = c;
            i += 1;
        }
    }
    None
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
