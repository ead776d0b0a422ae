//! Syntax: the pest grammar (`grammar.pest`) and its conversion into the owned,
//! span-carrying AST of [`ast`]. No other module sees pest's `Rule` or `Pair`.
//!
//! The parser reads a file item by item: a syntax error skips to the next line that starts
//! an item, so every broken item of a file is reported in one run. Nesting deeper than
//! [`MAX_NESTING`] brackets is an error before pest sees the text, which bounds the
//! recursion of every later phase.

pub mod ast;
mod convert;

use crate::diagnostics::Problem;
use ast::{Comment, File, Span};

/// The deepest nesting of `(`, `[` and `<…>` a file may have (blocks `{…}` do not nest).
pub const MAX_NESTING: usize = 100;

#[derive(pest_derive::Parser)]
#[grammar = "syntax/grammar.pest"]
struct MarsParser;

/// Parse a whole file. Returns the items that parsed and one problem per broken item.
pub fn parse_file(text: &str) -> (File, Vec<Problem>) {
    let comments = scan_comments(text);
    let mut problems = Vec::new();
    if let Some(at) = too_deep(text) {
        problems.push(
            Problem::error(
                "mars::syntax::too_deep",
                format!("brackets nest deeper than {MAX_NESTING} levels"),
            )
            .label(Span::new(at, at + 1), "this bracket is too deep")
            .help("bind the inner calls to names with `let` and pass the names"),
        );
        return (
            File {
                items: Vec::new(),
                comments,
            },
            problems,
        );
    }
    let mut items = Vec::new();
    let mut offset = skip_layout(text, 0);
    while offset < text.len() {
        match convert::parse_item(&text[offset..], offset) {
            Ok((item, end)) => {
                items.push(item);
                offset = skip_layout(text, end);
            }
            Err(problem) => {
                let at = problem.offset();
                problems.push(problem);
                offset = skip_layout(text, next_item_start(text, at.max(offset), offset));
            }
        }
    }
    (File { items, comments }, problems)
}

/// Parse one type written alone (`List<Tensor<f32, [1, H, W]>>`).
pub fn parse_type(text: &str) -> Result<ast::TypeExpr, Problem> {
    convert::parse_type(text)
}

/// Every `//` comment of the text (outside string literals).
pub fn scan_comments(text: &str) -> Vec<Comment> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let c = bytes[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' | b'\n' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                let end = text[i..].find('\n').map(|n| i + n).unwrap_or(text.len());
                let raw = text[i..end].trim_end();
                out.push(Comment {
                    text: raw.to_string(),
                    span: Span::new(i, i + raw.len()),
                });
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Skip whitespace and comments from `at`.
fn skip_layout(text: &str, mut at: usize) -> usize {
    let bytes = text.as_bytes();
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if bytes.get(at) == Some(&b'/') && bytes.get(at + 1) == Some(&b'/') {
            at = text[at..].find('\n').map(|n| at + n).unwrap_or(text.len());
        } else {
            return at;
        }
    }
}

const ITEM_KEYWORDS: [&str; 7] = ["use", "const", "model", "arch", "fn", "pipeline", "@gpu"];

/// Where to resume after a syntax error at `at` in the item starting at `item_start`: the
/// first line that begins with an item keyword at its first column, from the line of `at`
/// on (that line itself only when it is not the broken item's first line), else the end.
fn next_item_start(text: &str, at: usize, item_start: usize) -> usize {
    let at = at.min(text.len());
    let mut line_start = text[..at].rfind('\n').map(|n| n + 1).unwrap_or(0);
    if line_start <= item_start {
        line_start = match text[at..].find('\n') {
            Some(n) => at + n + 1,
            None => return text.len(),
        };
    }
    while line_start < text.len() {
        let line_end = text[line_start..]
            .find('\n')
            .map(|n| line_start + n)
            .unwrap_or(text.len());
        // Items start at the left margin; `arch = …` inside a model does not.
        let line = &text[line_start..line_end];
        let starts_item = ITEM_KEYWORDS.iter().any(|k| {
            line.strip_prefix(k).is_some_and(|rest| {
                rest.starts_with(|c: char| c.is_whitespace()) || rest.is_empty()
            })
        });
        if starts_item {
            return line_start;
        }
        line_start = line_end + 1;
    }
    text.len()
}

/// The position of the first bracket nested deeper than [`MAX_NESTING`], if any.
fn too_deep(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let c = bytes[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' | b'\n' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = text[i..].find('\n').map(|n| i + n).unwrap_or(text.len());
                continue;
            }
            b'(' | b'[' => depth += 1,
            // `<` opens a type argument list only right after a name (`List<`), not as the
            // `<` of an SLO.
            b'<' if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') => {
                depth += 1
            }
            b')' | b']' => depth = depth.saturating_sub(1),
            b'>' if i > 0 && bytes[i - 1] != b'-' && bytes.get(i + 1) != Some(&b'=') => {
                depth = depth.saturating_sub(1)
            }
            _ => {}
        }
        if depth > MAX_NESTING {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_shows_the_grammar_as_it_is() {
        let spec = include_str!("../../../SPEC.md");
        assert!(
            spec.contains(include_str!("grammar.pest")),
            "SPEC.md §1.2 must hold grammar.pest verbatim"
        );
    }

    #[test]
    fn spans_stop_at_the_code_not_the_layout_after_it() {
        let text = "model M {\n  quantize = int8   // c\n  generate = true\n}\n";
        let (file, problems) = parse_file(text);
        assert!(problems.is_empty());
        let ast::Item::Model(m) = &file.items[0] else {
            panic!("a model")
        };
        let s = m.entries[0].span();
        assert_eq!(&text[s.start..s.end], "quantize = int8");
        assert_eq!(file.comments[0].text, "// c");
    }

    #[test]
    fn one_broken_item_does_not_hide_the_next() {
        let text = "fn f(x: Text) -> = builtin \"a\"\nconst A = 1\nfn g(x: Text) -> Text = builtin\nconst B = 2\n";
        let (file, problems) = parse_file(text);
        assert_eq!(problems.len(), 2);
        let names: Vec<&str> = file
            .items
            .iter()
            .filter_map(|i| i.name())
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(names, ["A", "B"]);
    }

    #[test]
    fn literals_carry_their_values() {
        let text = "const A = 5ms\nconst B = 2s\nconst C = 150us\nconst D = 50/s\nconst E = \"a\\\"b\\n\"\nconst F = -3\n";
        let (file, problems) = parse_file(text);
        assert!(problems.is_empty());
        let kinds: Vec<ast::LitKind> = file
            .items
            .iter()
            .map(|i| match i {
                ast::Item::Const(c) => c.value.kind.clone(),
                _ => panic!("consts only"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ast::LitKind::Duration(5.0),
                ast::LitKind::Duration(2000.0),
                ast::LitKind::Duration(0.15),
                ast::LitKind::Rate(50.0),
                ast::LitKind::Text("a\"b\n".into()),
                ast::LitKind::Int(-3),
            ]
        );
    }
}
