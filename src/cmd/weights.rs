//! `marsc weights`: `init` writes deterministic random weights for `unet_tiny` / `crnn_tiny`
//! (cost stand-ins: their outputs mean nothing); `samples` renders the demo images of
//! `pipelines/image_translate.mars` (text drawn onto plain backgrounds) and their requests.

use std::path::PathBuf;
use std::process::ExitCode;

use mars_stdlib::models::{init_vision_weights, Vision};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Write deterministic random weights for an architecture (a stand-in for compute cost).
    Init {
        /// unet_tiny or crnn_tiny.
        #[arg(long)]
        arch: String,
        /// Output file (safetensors).
        #[arg(short, long)]
        out: PathBuf,
        /// unet_tiny: channels of the first level.
        #[arg(long, default_value_t = 8)]
        channels: usize,
        /// crnn_tiny: crop height (a multiple of 4).
        #[arg(long, default_value_t = 32)]
        image_size: usize,
        /// crnn_tiny: the characters it reads.
        #[arg(long, default_value = "abcdefghijklmnopqrstuvwxyz ")]
        alphabet: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Render the demo images (text on coloured backgrounds) and a requests file naming them
    /// (`$file` paths relative to the requests file).
    Samples {
        /// Folder for the PNG files and `images.jsonl`.
        #[arg(short, long, default_value = "pipelines/data")]
        out: PathBuf,
    },
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    match args.command {
        Command::Init {
            arch,
            out,
            channels,
            image_size,
            alphabet,
            seed,
        } => {
            let arch = match arch.as_str() {
                "unet_tiny" => Vision::Unet,
                "crnn_tiny" => Vision::Crnn,
                other => {
                    return Err(miette::miette!(
                        "unknown --arch `{other}`; expected unet_tiny or crnn_tiny"
                    ))
                }
            };
            if channels == 0 || image_size < 4 || image_size % 4 != 0 || alphabet.is_empty() {
                return Err(miette::miette!(
                    "--channels must be positive, --image-size a multiple of 4 (at least 4), --alphabet non-empty"
                ));
            }
            create_parent(&out)?;
            init_vision_weights(&out, arch, channels, image_size, &alphabet, seed)
                .map_err(|e| miette::miette!("cannot write `{}`: {e}", out.display()))?;
            println!(
                "wrote random {} weights (a cost stand-in) to {}",
                arch.arch(),
                out.display()
            );
        }
        Command::Samples { out } => {
            std::fs::create_dir_all(&out)
                .map_err(|e| miette::miette!("cannot create `{}`: {e}", out.display()))?;
            let samples: [(&str, [u8; 3], &[&str]); 4] = [
                ("sample_1.png", [250, 240, 200], &["twenty four", "pens"]),
                ("sample_2.png", [210, 230, 250], &["three hundred", "pages"]),
                ("sample_3.png", [230, 250, 220], &["seventy one"]),
                (
                    "sample_4.png",
                    [245, 245, 245],
                    &["one thousand", "two hundred", "sheets"],
                ),
            ];
            let mut requests = String::new();
            for (name, bg, lines) in samples {
                let (img, _) = mars_stdlib::image::render_sample(256, 160, bg, lines);
                let png = mars_stdlib::image::encode(&img, mars_stdlib::image::Format::Png)
                    .map_err(|e| miette::miette!("{e}"))?;
                let path = out.join(name);
                std::fs::write(&path, png)
                    .map_err(|e| miette::miette!("cannot write `{}`: {e}", path.display()))?;
                requests.push_str(
                    &serde_json::json!({ "img": { "$file": name }, "lang": "fr" }).to_string(),
                );
                requests.push('\n');
            }
            let path = out.join("images.jsonl");
            std::fs::write(&path, requests)
                .map_err(|e| miette::miette!("cannot write `{}`: {e}", path.display()))?;
            println!("wrote 4 images and {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn create_parent(path: &std::path::Path) -> miette::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| miette::miette!("cannot create `{}`: {e}", dir.display()))?;
    }
    Ok(())
}
