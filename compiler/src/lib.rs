//! The Mars compiler: `.mars` source → AST → checked IR → plan. Pure and deterministic: it
//! takes text and returns results plus problems; only `marsc` touches files.
//!
//! The stages, in order: [`syntax`] (grammar, span-carrying AST), [`check`] (name
//! resolution, types, the IR of [`ir`]), [`plan`] (cost model and planner); [`diagnostics`]
//! collects the problems of every stage; [`format`] and [`graph`] print a file back as
//! canonical source, DOT or JSON.
//!
//! ```
//! use mars_compiler::{check_program, SourceFile};
//!
//! let stdlib = [SourceFile {
//!     path: "std/text.mars".into(),
//!     text: "fn lower(text: Text) -> Text = builtin \"text.lower\"".into(),
//! }];
//! let file = SourceFile {
//!     path: "hello.mars".into(),
//!     text: "use std.text.{lower}\n\
//!            pipeline hello(t: Text) -> (out: Text) {\n  out = lower(t)\n}\n".into(),
//! };
//! let checked = check_program(&file, &stdlib);
//! assert!(!checked.problems.has_errors(), "{}", checked.problems.render());
//! let program = checked.program.expect("no errors");
//! let pipeline = program.pipeline("hello").expect("declared");
//! assert_eq!(pipeline.graph.node_count(), 1);
//! ```

pub mod check;
pub mod diagnostics;
pub mod format;
pub mod graph;

pub mod ir;
pub mod plan;
pub mod syntax;

use diagnostics::{Problem, Problems};

/// One source file: its path (as shown in diagnostics) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
}

impl SourceFile {
    /// A file from raw bytes: text that is not UTF-8 is a `mars::syntax::invalid_utf8`
    /// problem pointing at the first bad byte.
    pub fn from_bytes(path: &str, bytes: &[u8]) -> Result<SourceFile, Problems> {
        // A UTF-8 byte-order mark says nothing the text does not.
        let bytes = bytes
            .strip_prefix(b"\xEF\xBB\xBF".as_slice())
            .unwrap_or(bytes);
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(SourceFile {
                path: path.to_string(),
                text: text.to_string(),
            }),
            Err(e) => {
                let good = e.valid_up_to();
                // Show the file up to the bad byte, so the position still renders.
                let shown = SourceFile {
                    path: path.to_string(),
                    text: String::from_utf8_lossy(&bytes[..good]).into_owned() + "\u{FFFD}",
                };
                let line = shown.text[..good].matches('\n').count() + 1;
                let mut problems = Problems::for_file(&shown);
                problems.push(
                    Problem::error("mars::syntax::invalid_utf8", "the file is not valid UTF-8")
                        .label(
                            miette::SourceSpan::new(good.into(), "\u{FFFD}".len()),
                            format!("invalid byte on line {line}"),
                        )
                        .help("save the file as UTF-8"),
                );
                Err(problems)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_from_bytes() {
        let bom = SourceFile::from_bytes("a.mars", b"\xEF\xBB\xBFconst A = 1\n").expect("UTF-8");
        assert_eq!(bom.text, "const A = 1\n");
        let bad = SourceFile::from_bytes("b.mars", b"const A = 1\n// \xE9\n").expect_err("Latin-1");
        let p = bad.iter().next().expect("one problem");
        assert_eq!(p.code, "mars::syntax::invalid_utf8");
        assert_eq!(p.offset(), 15);
        assert!(bad.render().contains("[b.mars:2:4]"), "{}", bad.render());
    }
}

/// The result of [`check_program`]. A later phase adds its own problems with
/// `checked.problems.push(Problem::error(code, message).label(span, text))`: a problem
/// pushed without a source points into the checked file.
#[derive(Debug, Clone)]
pub struct Checked {
    /// `Some` when there are no errors (warnings allowed).
    pub program: Option<ir::Program>,
    pub problems: Problems,
}

/// Parse, resolve and type-check `file`, with the stdlib declarations (`stdlib`) visible as
/// `std.*` (a stdlib file `std/image.mars` is the module `std.image`).
pub fn check_program(file: &SourceFile, stdlib: &[SourceFile]) -> Checked {
    check::check_program(file, stdlib)
}

/// The static parameters of every builtin implementation the `stdlib` files declare, by
/// builtin id (`fn split(text: Text; sep: Text = ",") -> … = builtin "text.split"` gives
/// `text.split` → `{sep}`). Plans are checked against it when they load (SPEC 7.1).
pub fn builtin_params(stdlib: &[SourceFile]) -> mars_plan::validate::BuiltinParams {
    let mut out = mars_plan::validate::BuiltinParams::new();
    for file in stdlib {
        let (ast, _) = syntax::parse_file(&file.text);
        for item in &ast.items {
            let syntax::ast::Item::Fn(f) = item else {
                continue;
            };
            let syntax::ast::FnBody::Builtin(lit) = &f.body else {
                continue;
            };
            let syntax::ast::LitKind::Text(id) = &lit.kind else {
                continue;
            };
            let names = out.entry(id.clone()).or_default();
            for s in f.statics.iter().flatten() {
                names.insert(s.name.name.clone());
            }
        }
    }
    out
}

/// Parse a file into its AST, with its syntax problems.
pub fn parse(file: &SourceFile) -> (syntax::ast::File, Problems) {
    let (ast, problems) = syntax::parse_file(&file.text);
    let mut sink = Problems::for_file(file);
    for p in problems {
        sink.push(p);
    }
    (ast, sink)
}
