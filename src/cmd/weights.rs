//! `marsc weights`: `init` writes deterministic random weights for `unet_tiny` / `crnn_tiny`
//! (cost stand-ins: their outputs mean nothing); `samples` renders the demo images of
//! `pipelines/image_translate.mars` (text drawn onto plain backgrounds) and their requests;
//! `calibrate` adds the activation statistics that `quantize = awq_int4` and
//! `smoothquant_int8` need to a `transformer_lm` weights file (see
//! `mars_stdlib::models::quant`); `calibrate-llm` the statistics of a `llama` GGUF's block
//! inputs (`mars_stdlib::models::llm_quant`), for the node's `calibration` key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mars_stdlib::models::quant::{calibrate_weights, calibration_phrases};
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
    /// Run a `transformer_lm` in f32 over calibration prompts and store, for every linear
    /// layer's input, per channel mean of x² and max |x| (`<layer>.act_sq_mean`,
    /// `<layer>.act_abs_max`): what `quantize = awq_int4` / `smoothquant_int8` need.
    Calibrate {
        /// The weights to calibrate (safetensors, `transformer_lm`).
        #[arg(long)]
        weights: PathBuf,
        /// Calibration prompts, one JSON value a line: a string, or an object whose string
        /// values are each a prompt. Default: `--samples` English number phrases.
        #[arg(long)]
        input: Option<PathBuf>,
        /// How many number phrases to generate when no --input is given.
        #[arg(long, default_value_t = 512, conflicts_with = "input")]
        samples: usize,
        /// Seed of the generated phrases.
        #[arg(long, default_value_t = 7, conflicts_with = "input")]
        seed: u64,
        /// Output file; may be the --weights file itself.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Run a `llama` GGUF in f32 over a text and store, for every block's layer inputs, per
    /// channel mean of x² and max |x|: what the node's `quantize = awq_int4` /
    /// `smoothquant_int8` read from the file its `calibration` key names.
    CalibrateLlm {
        /// `model:NAME` from the store, or a GGUF path.
        #[arg(long, default_value = "model:smollm2-135m-instruct")]
        weights: String,
        /// Calibration text: plain text, or JSONL of strings or `{"text"}` objects.
        #[arg(long)]
        text: PathBuf,
        /// Tokens of the text to run (its first ones), in windows of 512.
        #[arg(long, default_value_t = 4096)]
        tokens: usize,
        /// Output file (safetensors).
        #[arg(short, long)]
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
        Command::Calibrate {
            weights,
            input,
            samples,
            seed,
            out,
        } => {
            let (phrases, source) = match &input {
                Some(path) => (read_phrases(path)?, file_label(path)),
                None if samples == 0 => return Err(miette::miette!("--samples must be positive")),
                None => (
                    calibration_phrases(samples, seed),
                    format!("number phrases, seed {seed}"),
                ),
            };
            create_parent(&out)?;
            let c = calibrate_weights(&weights, &phrases, &source, &out)
                .map_err(|e| miette::miette!(code = "mars::weights::calibrate", "{e}"))?;
            println!(
                "calibrated {} linear layers on {} prompts ({} tokens); wrote {}",
                c.layers,
                c.phrases,
                c.tokens,
                out.display()
            );
        }
        Command::CalibrateLlm {
            weights,
            text,
            tokens,
            out,
        } => calibrate_llm(&weights, &text, tokens, &out)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn calibrate_llm(weights: &str, text: &Path, tokens: usize, out: &Path) -> miette::Result<()> {
    use mars_stdlib::models::{chat::ChatModel, llm_eval::read_text, llm_quant};
    let fail = |e: String| miette::miette!(code = "mars::weights::calibrate", "{e}");
    let path = match weights.strip_prefix("model:") {
        Some(_) => {
            let store = mars_stdlib::store::Store::from_env().map_err(|e| fail(e.0))?;
            store.resolve(weights).map_err(|e| fail(e.0))?.path
        }
        None => PathBuf::from(weights),
    };
    let model = ChatModel::load(&path, 512).map_err(fail)?;
    // About 4 characters a token: tokenize only what the first `tokens` need.
    let body: String = read_text(text)
        .map_err(fail)?
        .chars()
        .take(tokens * 8)
        .collect();
    let ids = model.encode(&body).map_err(fail)?;
    let ids = &ids[..tokens.min(ids.len())];
    let windows: Vec<Vec<u32>> = ids.chunks(512).map(|c| c.to_vec()).collect();
    let (stats, n) = llm_quant::calibrate(
        model.llama.as_llama().ok_or_else(|| {
            miette::miette!(
                "calibrate-llm calibrates `arch = \"llama\"` models; this one is gemma3"
            )
        })?,
        &windows,
    )
    .map_err(fail)?;
    create_parent(out)?;
    let about = serde_json::json!({ "tokens": n, "source": file_label(text), "weights": weights });
    llm_quant::save_stats(out, &stats, about).map_err(fail)?;
    println!(
        "calibrated {} input sites on {n} tokens; wrote {}",
        stats.len(),
        out.display()
    );
    Ok(())
}

fn create_parent(path: &std::path::Path) -> miette::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| miette::miette!("cannot create `{}`: {e}", dir.display()))?;
    }
    Ok(())
}

/// Calibration prompts from a JSON-lines file: each non-blank line a string, or an object whose
/// string values are each a prompt.
fn read_phrases(path: &Path) -> miette::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| miette::miette!("cannot read `{}`: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("`{}` line {}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| miette::miette!("{}: not JSON: {e}", at()))?;
        match v {
            serde_json::Value::String(s) => out.push(s),
            serde_json::Value::Object(m) => {
                let before = out.len();
                out.extend(m.values().filter_map(|v| v.as_str().map(str::to_string)));
                if out.len() == before {
                    return Err(miette::miette!("{}: the object has no text values", at()));
                }
            }
            other => {
                return Err(miette::miette!(
                    "{}: expected a string or an object, got `{other}`",
                    at()
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(miette::miette!(
            "`{}` has no calibration prompts",
            path.display()
        ));
    }
    Ok(out)
}

/// A file's name without its folders, so the recorded source does not depend on where the
/// command ran.
fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
