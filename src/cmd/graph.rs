//! `marsc graph FILE [--pipeline P] [--format dot|json]`: print a checked pipeline's DAG.

use std::path::PathBuf;
use std::process::ExitCode;

use mars_compiler::graph::{to_dot, to_json};

use super::check::check_file;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Graphviz DOT (`marsc graph app.mars | dot -Tsvg > app.svg`).
    Dot,
    /// JSON: inputs, outputs, nodes (topological order), edges, SLOs.
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    /// The .mars file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The pipeline to print (needed when the file has several).
    #[arg(long, short)]
    pub pipeline: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "dot")]
    pub format: Format,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    let checked = check_file(&args.file);
    eprint!("{}", checked.problems.render());
    let Some(program) = checked.program else {
        return Ok(ExitCode::FAILURE);
    };
    let names: Vec<&str> = program.pipelines.iter().map(|p| p.name.as_str()).collect();
    let pipeline = match &args.pipeline {
        Some(name) => program.pipeline(name).ok_or_else(|| {
            miette::miette!(
                help = format!(
                    "the pipelines of {} are: {}",
                    args.file.display(),
                    names.join(", ")
                ),
                "no pipeline named `{name}`"
            )
        })?,
        None => match program.pipelines.as_slice() {
            [one] => one,
            [] => {
                return Err(miette::miette!(
                    "{} declares no pipeline",
                    args.file.display()
                ))
            }
            _ => {
                return Err(miette::miette!(
                    help = format!("pass --pipeline with one of: {}", names.join(", ")),
                    "{} declares several pipelines",
                    args.file.display()
                ))
            }
        },
    };
    let text = match args.format {
        Format::Dot => to_dot(pipeline),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&to_json(pipeline))
                .map_err(|e| miette::miette!("{e}"))?;
            s.push('\n');
            s
        }
    };
    match &args.output {
        Some(path) => {
            super::file_io::check_output(path, &[args.file.as_path()])?;
            super::file_io::write_whole(path, text.as_bytes())?;
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
