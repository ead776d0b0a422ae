//! `marsc plan` (being built; see the issue that owns it).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> miette::Result<ExitCode> {
    Err(miette::miette!("`marsc plan` is not built yet"))
}
