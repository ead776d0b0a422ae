//! `marsc fmt [--check] FILE…`: rewrite .mars files in canonical layout, comments kept.
//! With `--check`, change nothing and exit 1 if any file is not already canonical.

use std::path::PathBuf;
use std::process::ExitCode;

use mars_compiler::format::format_file;

use super::check::read_source;

#[derive(clap::Args)]
pub struct Args {
    /// The .mars files to format in place.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Only report the files that would change (exit 1 if any); write nothing.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    let mut failed = false;
    for path in &args.files {
        let file = match read_source(path) {
            Ok(f) => f,
            Err(problems) => {
                eprint!("{}", problems.render());
                failed = true;
                continue;
            }
        };
        let formatted = match format_file(&file) {
            Ok(text) => text,
            Err(problems) => {
                eprint!("{}", problems.render());
                failed = true;
                continue;
            }
        };
        if formatted == file.text {
            continue;
        }
        if args.check {
            println!("would reformat {}", path.display());
            failed = true;
        } else {
            // Whole or not at all: a source is never left half written.
            super::file_io::write_whole(path, formatted.as_bytes())?;
            println!("formatted {}", path.display());
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
