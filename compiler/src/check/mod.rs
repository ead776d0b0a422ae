//! Checking: name resolution, declarations, types, and the IR.
//!
//! The passes, in order:
//! 1. parse the stdlib files and the user's file ([`crate::syntax`]);
//! 2. [`decls::collect`]: every module's items by name (two items with one name is an error);
//! 3. [`decls::lower_all`]: fn signatures, arch schemas, constants, then models (checked
//!    against their arch's schema);
//! 4. [`decls::resolve_uses`]: the user's `use` lists;
//! 5. [`pipeline::check_pipeline`] for each pipeline: statements in dependency order, every
//!    call a node, every data dependency an edge, annotations and SLOs validated.
//!
//! Problems from every pass are collected; the program is returned only without errors.

mod annotations;
mod decls;
mod pipeline;
pub mod types;

use crate::diagnostics::{source_of, Problem, Problems, Source};
use crate::ir;
use crate::syntax::ast;
use crate::{Checked, SourceFile};

pub use decls::{Env, ModuleId};

/// The module path of a stdlib file: `std/image.mars` → `std.image`.
pub fn module_path_of(path: &str) -> String {
    let p = path.strip_suffix(".mars").unwrap_or(path);
    let p = p
        .rsplit_once("stdlib/mars/")
        .map(|(_, rest)| rest)
        .unwrap_or(p);
    p.trim_start_matches("./").replace(['/', '\\'], ".")
}

/// One parsed file and the shared text its problems point into.
pub(crate) struct Parsed {
    pub ast: ast::File,
    pub source: Source,
}

/// See [`crate::check_program`].
pub fn check_program(file: &SourceFile, stdlib: &[SourceFile]) -> Checked {
    // Problems pushed later without a source (the planner's) point into the user's file.
    let mut problems = Problems::for_file(file);
    let mut syntax_broken = false;
    let mut parse = |f: &SourceFile, problems: &mut Problems| -> Parsed {
        let source = source_of(f);
        let (ast, ps) = crate::syntax::parse_file(&f.text);
        for p in ps {
            syntax_broken = true;
            problems.push(p.in_source(&source));
        }
        Parsed { ast, source }
    };
    let std_files: Vec<(String, Parsed)> = stdlib
        .iter()
        .map(|f| (module_path_of(&f.path), parse(f, &mut problems)))
        .collect();
    let user = parse(file, &mut problems);
    if syntax_broken {
        // Names declared by a broken item would all be reported as unknown: stop here.
        return Checked {
            program: None,
            problems,
        };
    }
    let program = check_parsed(&user, &std_files, &mut problems);
    let program = if problems.has_errors() {
        None
    } else {
        Some(program)
    };
    Checked { program, problems }
}

fn check_parsed(
    user: &Parsed,
    std_files: &[(String, Parsed)],
    problems: &mut Problems,
) -> ir::Program {
    let mut sink = Sink {
        problems,
        source: user.source.clone(),
    };
    let mut env = decls::collect(user, std_files, &mut sink);
    decls::lower_all(&mut env, user, std_files, &mut sink);
    let scope = decls::resolve_uses(&env, user, &mut sink);
    let mut pipelines = Vec::new();
    for item in &user.ast.items {
        if let ast::Item::Pipeline(p) = item {
            sink.source = user.source.clone();
            pipelines.push(pipeline::check_pipeline(&env, &scope, p, &mut sink));
        }
    }
    ir::Program { pipelines }
}

/// Where the passes put problems: each is attached to the file being checked.
pub(crate) struct Sink<'a> {
    pub problems: &'a mut Problems,
    pub source: Source,
}

impl Sink<'_> {
    pub fn push(&mut self, p: Problem) {
        let p = if p.source.is_none() {
            p.in_source(&self.source)
        } else {
            p
        };
        self.problems.push(p);
    }
    pub fn extend(&mut self, ps: Vec<Problem>) {
        for p in ps {
            self.push(p);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
