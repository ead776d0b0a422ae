//! `marsc bench translate`: zh→en translators scored with chrF on a test set (SPEC §4.9).
//!
//! The candidates are the `llama` and `gemma3` model nodes of the given `.mars` files, built
//! exactly as a run builds them (their prompt, system message, stop text and sampling keys),
//! and fed every Chinese line of the set in batches through the node's own `run_batch`. chrF is
//! sacrebleu's default `chrF2`: character n-grams of orders 1 to 6 with whitespace removed,
//! statistics summed over the corpus, precision and recall averaged over the orders that occur,
//! then F with β = 2, times 100. A candidate whose model is not pulled is reported as skipped,
//! with the command that pulls it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use miette::{miette, IntoDiagnostic, WrapErr};

use mars_runtime::{NodeContext, Value};

#[derive(clap::Args)]
pub struct Args {
    /// The test set: JSON lines with the Chinese text under `zh` and the reference under `en`.
    #[arg(long, default_value = "tests/translate/zh_en.jsonl")]
    pub set: PathBuf,
    /// `.mars` files whose `llama` and `gemma3` model nodes are the candidates.
    #[arg(long = "source", default_values = ["pipelines/product_image_translate.mars", "tests/translate/smollm2.mars", "tests/translate/gemma_zero_shot.mars"])]
    pub sources: Vec<PathBuf>,
    /// Score only the first N lines.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Lines per `run_batch` call.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Print every translation.
    #[arg(long)]
    pub show: bool,
}

/// chrF (β = 2, character orders 1–6, whitespace excluded) of `hyps` against `refs`, 0–100.
pub fn chrf(hyps: &[String], refs: &[String]) -> f64 {
    const ORDER: usize = 6;
    const BETA: f64 = 2.0;
    // Per order: hypothesis n-grams, reference n-grams, matches.
    let mut stats = [[0usize; 3]; ORDER];
    for (h, r) in hyps.iter().zip(refs) {
        let h: Vec<char> = h.chars().filter(|c| !c.is_whitespace()).collect();
        let r: Vec<char> = r.chars().filter(|c| !c.is_whitespace()).collect();
        for (n, s) in (1..=ORDER).zip(stats.iter_mut()) {
            let grams = |t: &[char]| {
                let mut m: HashMap<Vec<char>, usize> = HashMap::new();
                for g in t.windows(n) {
                    *m.entry(g.to_vec()).or_default() += 1;
                }
                m
            };
            let (hg, rg) = (grams(&h), grams(&r));
            s[0] += h.len().saturating_sub(n - 1);
            s[1] += r.len().saturating_sub(n - 1);
            s[2] += hg
                .iter()
                .map(|(g, c)| (*c).min(rg.get(g).copied().unwrap_or(0)))
                .sum::<usize>();
        }
    }
    let (mut p, mut r, mut orders) = (0.0, 0.0, 0usize);
    for [nh, nr, nm] in stats {
        if nh > 0 && nr > 0 {
            p += nm as f64 / nh as f64;
            r += nm as f64 / nr as f64;
            orders += 1;
        }
    }
    if orders == 0 {
        return 0.0;
    }
    let (p, r) = (p / orders as f64, r / orders as f64);
    let f = BETA * BETA;
    match p + r > 0.0 {
        true => 100.0 * (1.0 + f) * p * r / (f * p + r),
        false => 0.0,
    }
}

/// The test set's (Chinese, reference) pairs; errors name the file and line.
pub fn read_set(path: &Path) -> miette::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read the test set {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| miette!(code = "mars::bench::translate", "{}: not JSON: {e}", at()))?;
        let field = |k: &str| {
            v[k].as_str().map(str::to_string).ok_or_else(|| {
                miette!(
                    code = "mars::bench::translate",
                    "{}: no text under `{k}`",
                    at()
                )
            })
        };
        out.push((field("zh")?, field("en")?));
    }
    if out.is_empty() {
        return Err(miette!(
            code = "mars::bench::translate",
            "{} holds no lines",
            path.display()
        ));
    }
    Ok(out)
}

/// Check a `.mars` file and plan its only pipeline without a profile: the nodes as a run
/// builds them.
pub(crate) fn plan_of(file: &Path) -> miette::Result<mars_plan::Plan> {
    use mars_compiler::plan::{plan_pipeline, PlanOptions};
    use mars_compiler::SourceFile;
    let name = file.display().to_string();
    let bytes = std::fs::read(file)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {name}"))?;
    let source = SourceFile::from_bytes(&name, &bytes)
        .map_err(|p| miette!(code = "mars::bench::translate", "{name}:\n{}", p.render()))?;
    let stdlib: Vec<SourceFile> = mars_stdlib::declarations::DECLARATIONS
        .iter()
        .map(|(path, text)| SourceFile {
            path: (*path).to_string(),
            text: (*text).to_string(),
        })
        .collect();
    let checked = mars_compiler::check_program(&source, &stdlib);
    let program = checked.program.ok_or_else(|| {
        miette!(
            code = "mars::bench::translate",
            "{name}:\n{}",
            checked.problems.render()
        )
    })?;
    let pipeline = program.pipelines.first().ok_or_else(|| {
        miette!(
            code = "mars::bench::translate",
            "{name} declares no pipeline"
        )
    })?;
    let options = PlanOptions {
        allow_slo_miss: true,
        ..PlanOptions::default()
    };
    let target = mars_plan::Target {
        mars_target: 1,
        workers: vec![mars_plan::Worker {
            name: "local".to_string(),
            cpus: 1.0,
            memory_gb: 0.0,
            gpus: Vec::new(),
        }],
    };
    plan_pipeline(pipeline, None, &target, &options).map_err(|errors| {
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        miette!(
            code = "mars::bench::translate",
            "{name}: {}",
            text.join("; ")
        )
    })
}

struct Scored {
    name: String,
    weights: String,
    license: String,
    chrf: f64,
    exact: usize,
    load_s: f64,
    lines_per_s: f64,
    hyps: Vec<String>,
}

pub fn run(args: Args, json: Option<PathBuf>) -> miette::Result<ExitCode> {
    let mut set = read_set(&args.set)?;
    if let Some(n) = args.limit {
        set.truncate(n.max(1));
    }
    let refs: Vec<String> = set.iter().map(|(_, en)| en.clone()).collect();
    let registry = mars_stdlib::registry();
    let store = mars_stdlib::store::Store::from_env().map_err(|e| miette!("{}", e.0))?;
    let mut scored = Vec::new();
    let mut skipped = Vec::new();
    println!(
        "translate: {} zh→en lines of {}, chrF2 (sacrebleu's default), greedy as configured",
        set.len(),
        args.set.display()
    );
    for source in &args.sources {
        let plan = plan_of(source)?;
        let base = source.parent().map(Path::to_path_buf).unwrap_or_default();
        for node in &plan.nodes {
            let Some(model) = &node.implementation.model else {
                continue;
            };
            if !matches!(model.arch.as_str(), "llama" | "gemma3") {
                continue;
            }
            let name = format!("{}:{}", source.display(), node.kind);
            let weights = model
                .config
                .get("weights")
                .and_then(|w| w.as_str())
                .unwrap_or("");
            let license = weights
                .strip_prefix("model:")
                .and_then(|m| store.manifest.get(m.split('/').next().unwrap_or(m)))
                .map(|m| match m.open_source {
                    true => m.license.clone(),
                    false => format!("{} [NOT OPEN SOURCE]", m.license),
                })
                .unwrap_or_else(|| "(a file, not from the model store)".into());
            let ctx = NodeContext {
                node: node.clone(),
                replica: 0,
                base_dir: base.clone(),
            };
            let t0 = Instant::now();
            let mut built = match registry.instantiate(&ctx) {
                Ok(n) => n,
                Err(e) => {
                    println!("  {name}: SKIPPED: {e}");
                    skipped.push(serde_json::json!({"candidate": name, "reason": e.to_string()}));
                    continue;
                }
            };
            let load_s = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let mut hyps = Vec::with_capacity(set.len());
            for chunk in set.chunks(args.batch.max(1)) {
                let items = chunk
                    .iter()
                    .map(|(zh, _)| vec![Value::Text(zh.clone())])
                    .collect();
                for r in built.run_batch(items) {
                    let out =
                        r.map_err(|e| miette!(code = "mars::bench::translate", "{name}: {e}"))?;
                    hyps.push(match out.first() {
                        Some(Value::Text(t)) => t.clone(),
                        _ => String::new(),
                    });
                }
            }
            let secs = t1.elapsed().as_secs_f64();
            let exact = hyps
                .iter()
                .zip(&refs)
                .filter(|(h, r)| h.trim().eq_ignore_ascii_case(r.trim()))
                .count();
            scored.push(Scored {
                name,
                weights: weights.to_string(),
                license,
                chrf: chrf(&hyps, &refs),
                exact,
                load_s,
                lines_per_s: set.len() as f64 / secs,
                hyps,
            });
        }
    }
    for s in &scored {
        println!(
            "  {:<52} chrF {:>5.1}   exact {:>2}/{}   {:>5.2} lines/s   load {:.1} s",
            s.name,
            s.chrf,
            s.exact,
            set.len(),
            s.lines_per_s,
            s.load_s
        );
        println!("      weights {} — license: {}", s.weights, s.license);
        let shown = if args.show {
            set.len()
        } else {
            4.min(set.len())
        };
        for ((zh, en), h) in set.iter().zip(&s.hyps).take(shown) {
            println!("      {zh} → {h:?}   (ref: {en})");
        }
    }
    if scored.is_empty() {
        println!("  no candidate could be built (see SKIPPED above)");
    }
    if let Some(path) = json {
        let v = serde_json::json!({
            "bench": "translate",
            "set": args.set,
            "lines": set.len(),
            "metric": "chrF2 (character orders 1-6, beta 2, whitespace excluded)",
            "candidates": scored.iter().map(|s| serde_json::json!({
                "candidate": s.name, "weights": s.weights, "license": s.license, "chrf": s.chrf,
                "exact": s.exact, "lines_per_s": s.lines_per_s, "load_s": s.load_s,
                "translations": s.hyps,
            })).collect::<Vec<_>>(),
            "skipped": skipped,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&v).into_diagnostic()?)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::chrf;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn chrf_equals_sacrebleu() {
        // Values from sacrebleu 2.6.0: `sacrebleu.corpus_chrf(hyps, [refs]).score`.
        let h = s(&[
            "This is a small test.",
            "Buy one get one free",
            "Cotton shirt",
        ]);
        let r = s(&[
            "This is a tiny test.",
            "Buy one, get one free",
            "Cotton short-sleeve T-shirt",
        ]);
        assert!(
            (chrf(&h, &r) - 51.88036544726833).abs() < 1e-9,
            "{}",
            chrf(&h, &r)
        );
        assert!((chrf(&s(&["abc"]), &s(&["abd"])) - 38.888888888888886).abs() < 1e-9);
        assert_eq!(chrf(&s(&[""]), &s(&["abd"])), 0.0);
        assert!((chrf(&s(&["Rave reviews"]), &s(&["Rave reviews"])) - 100.0).abs() < 1e-9);
    }
}
