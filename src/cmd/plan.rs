//! `marsc plan`: work with plan files. `marsc plan diff A B` prints what changed between two
//! plans, for review; like `diff`, it exits 0 when they are the same, 1 when they differ and 2
//! when a plan cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

use mars_compiler::plan::diff::diff_plans;
use mars_plan::Plan;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: PlanCommand,
}

#[derive(clap::Subcommand)]
pub enum PlanCommand {
    /// Show what changed from plan A to plan B: pipeline-level predictions, provenance, and per
    /// node device, worker, replicas, batching, predictions. Exit 0 same, 1 different, 2 error.
    Diff {
        /// The old plan.
        a: PathBuf,
        /// The new plan.
        b: PathBuf,
    },
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    match args.command {
        PlanCommand::Diff { a, b } => {
            let (plan_a, plan_b) = match (load(&a), load(&b)) {
                (Ok(x), Ok(y)) => (x, y),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let changes = diff_plans(&plan_a, &plan_b);
            if changes.is_empty() {
                println!("no changes");
                return Ok(ExitCode::SUCCESS);
            }
            println!("--- {}\n+++ {}", a.display(), b.display());
            for c in &changes {
                println!("{c}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn load(path: &PathBuf) -> Result<Plan, String> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    Plan::from_yaml(&text, &name).map_err(|e| e.to_string())
}
