//! `marsc check FILE…`: parse and type-check `.mars` files against the stdlib declarations.
//! Exit 0 when clean (warnings allowed), 1 on errors (or warnings, with `--deny-warnings`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mars_compiler::diagnostics::{Problem, Problems};
use mars_compiler::{check_program, Checked, SourceFile};

#[derive(clap::Args)]
pub struct Args {
    /// The .mars files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Fail on warnings too (e.g. a binding that is never used).
    #[arg(long)]
    pub deny_warnings: bool,
}

/// The stdlib's declarations as source files (`std/image.mars` is the module `std.image`).
pub fn stdlib_sources() -> Vec<SourceFile> {
    mars_stdlib::declarations::DECLARATIONS
        .iter()
        .map(|(path, text)| SourceFile {
            path: (*path).to_string(),
            text: (*text).to_string(),
        })
        .collect()
}

/// Read a source file: unreadable files and invalid UTF-8 become problems.
pub fn read_source(path: &Path) -> Result<SourceFile, Problems> {
    let shown = path.display().to_string();
    match mars_runtime::files::read_regular(path, super::file_io::MAX_SOURCE_BYTES) {
        Ok(bytes) => SourceFile::from_bytes(&shown, &bytes),
        Err(e) => {
            let mut problems = Problems::new();
            problems.push(Problem::error(
                "mars::io::read",
                format!("cannot read `{shown}`: {e}"),
            ));
            Err(problems)
        }
    }
}

/// Read and check one file.
pub fn check_file(path: &Path) -> Checked {
    match read_source(path) {
        Ok(file) => check_program(&file, &stdlib_sources()),
        Err(problems) => Checked {
            program: None,
            problems,
        },
    }
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    let mut errors = 0;
    let mut warnings = 0;
    for path in &args.files {
        let checked = check_file(path);
        eprint!("{}", checked.problems.render());
        errors += checked.problems.error_count();
        warnings += checked.problems.warning_count();
    }
    let files = args.files.len();
    let s = |n: usize| if n == 1 { "" } else { "s" };
    eprintln!(
        "checked {files} file{}: {errors} error{}, {warnings} warning{}",
        s(files),
        s(errors),
        s(warnings)
    );
    let failed = errors > 0 || (args.deny_warnings && warnings > 0);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
