//! Property tests: random and mutated sources never make the front end panic, every
//! problem's spans lie inside the file, and formatting what parses is idempotent.

use proptest::prelude::*;

use mars_compiler::format::format_file;
use mars_compiler::{check_program, SourceFile};

fn stdlib() -> Vec<SourceFile> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../stdlib/mars/std");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("stdlib")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| SourceFile {
            path: format!("std/{}", p.file_name().expect("file").to_string_lossy()),
            text: std::fs::read_to_string(&p).expect("UTF-8"),
        })
        .collect()
}

fn seeds() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = vec![
        std::fs::read_to_string(root.join("pipelines/image_translate.mars")).expect("example"),
    ];
    for kind in ["ok", "err"] {
        let mut paths: Vec<_> = std::fs::read_dir(root.join("tests/conformance").join(kind))
            .expect("conformance")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "mars"))
            .collect();
        paths.sort();
        out.extend(paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
    }
    out
}

const TOKENS: &[&str] = &[
    "use",
    "std",
    ".",
    "image",
    "{",
    "}",
    "(",
    ")",
    "<",
    ">",
    "[",
    "]",
    ",",
    ";",
    ":",
    "=",
    "->",
    "@",
    "const",
    "model",
    "arch",
    "fn",
    "pipeline",
    "let",
    "slo",
    "map",
    "builtin",
    "exec",
    "in",
    "out",
    "x",
    "y",
    "T",
    "List",
    "Tensor",
    "f32",
    "Text",
    "Int",
    "Image",
    "Box",
    "Bytes",
    "1",
    "0.5",
    "5ms",
    "50/s",
    "\"s\"",
    "true",
    "int8",
    "@device(gpu)",
    "@batch(continuous)",
    "latency.p99",
    "<",
    ">=",
    "//c\n",
    "\n",
    " ",
    "é",
    "\"",
    "from",
    "weights",
    "|",
    "_",
    "lower",
    "decode",
    "std.list.len",
    "-",
    "99999999999999999999",
];

fn check_invariants(text: &str) {
    let file = SourceFile {
        path: "fuzz.mars".into(),
        text: text.to_string(),
    };
    let checked = check_program(&file, &stdlib());
    for p in checked.problems.iter() {
        assert!(p.code.starts_with("mars::"), "code {}", p.code);
        if p.file_name() == "fuzz.mars" {
            for (span, _) in &p.labels {
                assert!(
                    span.offset() + span.len() <= text.len(),
                    "span {span:?} outside a file of {} bytes: {}",
                    text.len(),
                    p.message
                );
                assert!(
                    text.is_char_boundary(span.offset())
                        && text.is_char_boundary(span.offset() + span.len())
                );
            }
        }
        // Rendering must not fail either.
        let _ = mars_compiler::diagnostics::render_problem(p);
    }
    assert_eq!(checked.program.is_some(), !checked.problems.has_errors());
    if let Ok(once) = format_file(&file) {
        let twice = format_file(&SourceFile {
            path: "fuzz.mars".into(),
            text: once.clone(),
        })
        .expect("formatted output parses");
        assert_eq!(once, twice, "not idempotent for:\n{text}");
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, usize),
    Duplicate(usize, usize),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_token_soup(tokens in prop::collection::vec(0..TOKENS.len(), 0..80), spaces in prop::collection::vec(any::<bool>(), 80)) {
        let mut text = String::new();
        for (i, t) in tokens.iter().enumerate() {
            text.push_str(TOKENS[*t]);
            if spaces[i] {
                text.push(' ');
            }
        }
        check_invariants(&text);
    }

    #[test]
    fn mutated_real_sources(seed in any::<prop::sample::Index>(), edits in prop::collection::vec((0..3u8, any::<prop::sample::Index>(), 1..12usize, any::<prop::sample::Index>()), 1..4)) {
        let seeds = seeds();
        let mut chars: Vec<char> = seed.get(&seeds).chars().collect();
        for (kind, at, len, tok) in edits {
            let n = chars.len();
            let at = if n == 0 { 0 } else { at.index(n) };
            let edit = match kind {
                0 => Edit::Delete(at, (at + len).min(n)),
                1 => Edit::Insert(at, tok.index(TOKENS.len())),
                _ => Edit::Duplicate(at, (at + len).min(n)),
            };
            match edit {
                Edit::Delete(a, b) => { chars.drain(a..b); }
                Edit::Insert(a, t) => { for (k, c) in TOKENS[t].chars().enumerate() { chars.insert(a + k, c); } }
                Edit::Duplicate(a, b) => { let piece: Vec<char> = chars[a..b].to_vec(); for (k, c) in piece.into_iter().enumerate() { chars.insert(b + k, c); } }
            }
        }
        let text: String = chars.into_iter().collect();
        check_invariants(&text);
    }
}

#[test]
fn deep_nesting_gets_an_answer() {
    for depth in [50, 100, 101, 3000] {
        let text = format!(
            "use std.text.{{lower}}\npipeline p(x: Text) -> (y: Text) {{\n  y = {}x{}\n}}\n",
            "lower(".repeat(depth),
            ")".repeat(depth)
        );
        let checked = check_program(
            &SourceFile {
                path: "deep.mars".into(),
                text,
            },
            &stdlib(),
        );
        let codes: Vec<&str> = checked.problems.iter().map(|p| p.code).collect();
        if depth <= 100 {
            assert!(codes.is_empty(), "{depth}: {codes:?}");
        } else {
            assert_eq!(codes, ["mars::syntax::too_deep"], "{depth}");
        }
    }
}

/// A pipeline at the node limit (SPEC 7.1: 10,000) checks clean; the golden
/// `pipeline_too_many_nodes` covers one past it.
#[test]
fn a_pipeline_at_the_node_limit_checks() {
    let mut text = String::from(
        "use std.text.{lower}\npipeline big(x: Text) -> (y: Text) {\n  let a0 = lower(x)\n",
    );
    for i in 1..9_999 {
        text.push_str(&format!("  let a{i} = lower(a{})\n", i - 1));
    }
    text.push_str("  y = lower(a9998)\n}\n");
    let checked = check_program(
        &SourceFile {
            path: "big.mars".into(),
            text,
        },
        &stdlib(),
    );
    assert!(checked.problems.is_empty(), "{}", checked.problems.render());
    let program = checked.program.expect("clean");
    assert_eq!(program.pipelines[0].graph.node_count(), 10_000);
    assert_eq!(program.pipelines[0].topo_order().len(), 10_000);
}
