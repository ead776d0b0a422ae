//! Conformance: every `tests/conformance/ok/*.mars` checks clean (no errors, no warnings)
//! and every `tests/conformance/err/*.mars` renders exactly the diagnostics in its
//! `*.stderr` golden. `MARS_BLESS=1 cargo test -p mars-compiler --test conformance` rewrites
//! the goldens. Every file is also formatted twice: formatting must be idempotent.

use std::path::{Path, PathBuf};

use mars_compiler::format::format_file;
use mars_compiler::{check_program, SourceFile};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stdlib() -> Vec<SourceFile> {
    let dir = root().join("stdlib/mars/std");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("stdlib/mars/std exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "mars"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| SourceFile {
            path: format!("std/{}", p.file_name().expect("a file").to_string_lossy()),
            text: std::fs::read_to_string(&p).expect("stdlib is UTF-8"),
        })
        .collect()
}

fn cases(kind: &str) -> Vec<PathBuf> {
    let dir = root().join("tests/conformance").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("conformance folder exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "mars"))
        .collect();
    files.sort();
    files
}

/// Check one file as `marsc check` would: from bytes, named by its path from the root.
fn render(path: &Path) -> (String, Option<SourceFile>) {
    let shown = format!(
        "tests/conformance/{}",
        path.strip_prefix(root().join("tests/conformance"))
            .expect("under the root")
            .display()
    );
    let bytes = std::fs::read(path).expect("readable");
    match SourceFile::from_bytes(&shown, &bytes) {
        Ok(file) => (
            check_program(&file, &stdlib()).problems.render(),
            Some(file),
        ),
        Err(problems) => (problems.render(), None),
    }
}

fn assert_idempotent_format(file: &SourceFile) {
    if let Ok(once) = format_file(file) {
        let twice = format_file(&SourceFile {
            path: file.path.clone(),
            text: once.clone(),
        })
        .expect("formatted output parses");
        assert_eq!(once, twice, "formatting {} is not idempotent", file.path);
        let before = check_program(file, &stdlib())
            .problems
            .iter()
            .map(|p| p.code)
            .collect::<Vec<_>>();
        let after = check_program(
            &SourceFile {
                path: file.path.clone(),
                text: once,
            },
            &stdlib(),
        )
        .problems
        .iter()
        .map(|p| p.code)
        .collect::<Vec<_>>();
        assert_eq!(
            before, after,
            "formatting {} changed what it means",
            file.path
        );
    }
}

#[test]
fn ok_cases_check_clean() {
    let mut files = cases("ok");
    files.push(root().join("pipelines/image_translate.mars"));
    assert!(files.len() > 5, "the ok cases are there");
    for path in files {
        let file = SourceFile {
            path: path.display().to_string(),
            text: std::fs::read_to_string(&path).expect("UTF-8"),
        };
        let checked = check_program(&file, &stdlib());
        assert!(
            checked.problems.is_empty(),
            "{}:\n{}",
            path.display(),
            checked.problems.render()
        );
        assert!(checked.program.is_some());
        assert_idempotent_format(&file);
    }
}

#[test]
fn the_stdlib_declarations_are_canonical_and_check_clean_alone() {
    for file in stdlib() {
        assert_eq!(
            format_file(&file).expect("parses"),
            file.text,
            "{} is not in canonical layout",
            file.path
        );
        let alone = check_program(
            &SourceFile {
                path: file.path.clone(),
                text: String::new(),
            },
            std::slice::from_ref(&file),
        );
        assert!(alone.problems.is_empty(), "{}", alone.problems.render());
    }
}

#[test]
fn err_cases_match_their_goldens() {
    let bless = std::env::var_os("MARS_BLESS").is_some();
    let mut failures = Vec::new();
    let files = cases("err");
    assert!(files.len() > 40, "the err cases are there");
    for path in files {
        let (rendered, file) = render(&path);
        assert!(
            rendered.contains("mars::"),
            "{} produced no diagnostic",
            path.display()
        );
        let golden = path.with_extension("stderr");
        if bless {
            std::fs::write(&golden, &rendered).expect("write golden");
        } else {
            let expected = std::fs::read_to_string(&golden).unwrap_or_default();
            if expected != rendered {
                failures.push(format!(
                    "{}:\n--- expected\n{expected}\n--- got\n{rendered}",
                    path.display()
                ));
            }
        }
        if let Some(file) = file {
            assert_idempotent_format(&file);
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden mismatches (MARS_BLESS=1 to accept):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every error code the checker can report appears in at least one err case's golden.
#[test]
fn every_error_code_has_a_case() {
    let source: String = [
        "src/check/decls.rs",
        "src/check/pipeline.rs",
        "src/check/types.rs",
        "src/check/annotations.rs",
        "src/syntax/mod.rs",
        "src/syntax/convert.rs",
        "src/lib.rs",
    ]
    .iter()
    .map(|f| {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(f)).expect("source")
    })
    .collect();
    let mut codes: Vec<&str> = source
        .match_indices("\"mars::")
        .map(|(i, _)| {
            let rest = &source[i + 1..];
            &rest[..rest.find('"').expect("closing quote")]
        })
        .collect();
    codes.sort();
    codes.dedup();
    let goldens: String = cases("err")
        .iter()
        .map(|p| std::fs::read_to_string(p.with_extension("stderr")).unwrap_or_default())
        .collect();
    let missing: Vec<&&str> = codes.iter().filter(|c| !goldens.contains(**c)).collect();
    assert!(
        missing.is_empty(),
        "codes without a conformance case: {missing:?}"
    );
}
