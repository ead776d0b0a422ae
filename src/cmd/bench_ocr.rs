//! `marsc bench ocr`: PP-OCR detection and recognition on images the project renders itself
//! (SPEC §4.6): character accuracy, line exact match, detection recall and precision, and
//! images/s of the OCR pipeline under its plan against the same plan one image at a time.
//!
//! The images are `mars_stdlib::ocr::render::accuracy_scene_in` scenes drawn with the fonts
//! that `.ci/run` installs (fonts-dejavu-core, fonts-wqy-microhei, fonts-wqy-zenhei): one to
//! three English or Chinese lines at 18–44 px on a gradient. Each rendered line is matched to at
//! most one detected box, best IoU first, at IoU ≥ [`MATCH_IOU`]; a line without a box counts
//! as read as `""`. Character accuracy is `1 − Σ edit distance / Σ reference characters` over
//! the lines; exact match counts lines read exactly.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use miette::{miette, IntoDiagnostic, WrapErr};

use mars_runtime::run::RunOptions;
use mars_runtime::BoxData;
use mars_stdlib::image::{encode, Format};
use mars_stdlib::models::onnx_plans::plans_built;
use mars_stdlib::ocr::{edit_distance, render};

/// A detected box matches a rendered line at this intersection over union or more.
pub const MATCH_IOU: f64 = 0.3;

/// Latin fonts of `fonts-dejavu-core`.
const LATIN: &[&str] = &[
    "DejaVuSans.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSansMono.ttf",
];
/// CJK fonts of `fonts-wqy-microhei` and `fonts-wqy-zenhei`.
const CJK: &[&str] = &["wqy-microhei.ttc", "wqy-zenhei.ttc"];

#[derive(clap::Args)]
pub struct Args {
    /// Images to render and read.
    #[arg(long, default_value_t = 120)]
    pub images: u64,
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// The OCR pipeline: image bytes in, `texts` and `boxes` out (a `.mars` file, planned
    /// without a profile, or a compiled `.plan.yaml`).
    #[arg(long, default_value = "tests/ocr/read_text.mars")]
    pub pipeline: PathBuf,
    /// Skip the one-image-at-a-time run.
    #[arg(long)]
    pub no_baseline: bool,
}

fn iou(a: &BoxData, b: &BoxData) -> f64 {
    let ix = (a.x + a.w).min(b.x + b.w) - a.x.max(b.x);
    let iy = (a.y + a.h).min(b.y + b.h) - a.y.max(b.y);
    if ix <= 0.0 || iy <= 0.0 {
        return 0.0;
    }
    let inter = ix * iy;
    inter / (a.w * a.h + b.w * b.h - inter)
}

/// For each rendered line, the index of its detected box (best IoU first, one box per line).
pub fn match_boxes(lines: &[BoxData], found: &[BoxData]) -> Vec<Option<usize>> {
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        for (j, f) in found.iter().enumerate() {
            let v = iou(l, f);
            if v >= MATCH_IOU {
                pairs.push((v, i, j));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut out = vec![None; lines.len()];
    let mut used = vec![false; found.len()];
    for (_, i, j) in pairs {
        if out[i].is_none() && !used[j] {
            out[i] = Some(j);
            used[j] = true;
        }
    }
    out
}

#[derive(Default, Debug, Clone, PartialEq)]
pub struct Tally {
    pub lines: usize,
    pub found: usize,
    pub boxes: usize,
    pub exact: usize,
    pub errors: usize,
    pub chars: usize,
}

impl Tally {
    /// Add one image: its rendered lines (text, box) and what was read (text, box).
    pub fn add(&mut self, lines: &[(String, BoxData)], read: &[(String, BoxData)]) {
        let gt: Vec<BoxData> = lines.iter().map(|l| l.1).collect();
        let det: Vec<BoxData> = read.iter().map(|r| r.1).collect();
        let m = match_boxes(&gt, &det);
        self.boxes += read.len();
        for ((text, _), j) in lines.iter().zip(m) {
            let got = j.map_or("", |j| read[j].0.as_str());
            self.lines += 1;
            self.found += usize::from(j.is_some());
            self.exact += usize::from(got == text);
            self.errors += edit_distance(got, text);
            self.chars += text.chars().count();
        }
    }

    pub fn char_accuracy(&self) -> f64 {
        1.0 - self.errors as f64 / self.chars.max(1) as f64
    }
}

fn parse_box(v: &serde_json::Value) -> Option<BoxData> {
    Some(BoxData {
        x: v["x"].as_f64()?,
        y: v["y"].as_f64()?,
        w: v["w"].as_f64()?,
        h: v["h"].as_f64()?,
    })
}

fn load(pipeline: &Path) -> miette::Result<(mars_plan::Plan, PathBuf)> {
    let name = pipeline.to_string_lossy();
    if name.ends_with(".yaml") || name.ends_with(".yml") {
        return super::run::load_plan(pipeline);
    }
    let plan = super::bench_translate::plan_of(pipeline)?;
    let base = pipeline.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((plan, base))
}

pub fn run(args: Args, json: Option<PathBuf>) -> miette::Result<ExitCode> {
    let (plan, base) = load(&args.pipeline)?;
    let dir = std::env::temp_dir().join(format!("mars-bench-ocr-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot create {}", dir.display()))?;
    let result = bench(&args, &plan, &base, &dir, json);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(
    args: &Args,
    plan: &mars_plan::Plan,
    base: &Path,
    dir: &Path,
    json: Option<PathBuf>,
) -> miette::Result<ExitCode> {
    let n = args.images.max(1);
    let mut truth = Vec::new();
    let mut requests = String::new();
    let (mut latin_lines, mut cjk_lines) = (0, 0);
    for i in 0..n {
        let scene = render::accuracy_scene_in(args.seed, i, LATIN, CJK);
        let (img, boxes) = render::render(&scene, Path::new("."))
            .map_err(|e| miette!(code = "mars::bench::ocr", "rendering image {i}: {e}"))?;
        let name = format!("img_{i}.png");
        let png = encode(&img, Format::Png).map_err(|e| miette!("{e}"))?;
        std::fs::write(dir.join(&name), png).into_diagnostic()?;
        requests.push_str(&format!("{{\"img\": {{\"$file\": \"{name}\"}}}}\n"));
        let lines: Vec<(String, BoxData)> = scene
            .lines
            .iter()
            .map(|l| l.text.clone())
            .zip(boxes)
            .collect();
        for (t, _) in &lines {
            match t.chars().any(|c| c as u32 > 0x2E80) {
                true => cjk_lines += 1,
                false => latin_lines += 1,
            }
        }
        truth.push(lines);
    }
    let registry = mars_stdlib::registry();
    // Each run also returns how many ONNX plans (one per input shape, cached process-wide)
    // it had to build: the first run pays for them, later runs find them cached.
    let run_once =
        |max_inflight: usize| -> miette::Result<(Vec<u8>, mars_runtime::RunReport, u64)> {
            let built = plans_built();
            let opts = RunOptions {
                input_dir: Some(dir.to_path_buf()),
                ordered: true,
                max_inflight,
                ..RunOptions::default()
            };
            let mut out = Vec::new();
            let r = mars_runtime::run_plan(
                plan,
                base,
                &registry,
                opts,
                BufReader::new(requests.as_bytes()),
                &mut out,
            )
            .map_err(|e| miette!(code = "mars::bench::ocr", "{e}"))?;
            Ok((out, r, plans_built() - built))
        };
    let (out, report, cold_plans) = run_once(mars_runtime::run::DEFAULT_MAX_INFLIGHT)?;
    let mut tally = Tally::default();
    let mut failed = Vec::new();
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| serde_json::from_str(l).into_diagnostic())
        .collect::<miette::Result<_>>()?;
    if records.len() != truth.len() {
        return Err(miette!(
            code = "mars::bench::ocr",
            "{} records for {} images",
            records.len(),
            truth.len()
        ));
    }
    for (i, (rec, lines)) in records.iter().zip(&truth).enumerate() {
        let ok = &rec["ok"];
        if ok.is_null() {
            failed.push(format!("image {i}: {}", rec["error"]));
            tally.add(lines, &[]);
            continue;
        }
        let texts = ok["texts"].as_array().cloned().unwrap_or_default();
        let boxes = ok["boxes"].as_array().cloned().unwrap_or_default();
        let read: Vec<(String, BoxData)> = texts
            .iter()
            .zip(&boxes)
            .filter_map(|(t, b)| Some((t.as_str()?.to_string(), parse_box(b)?)))
            .collect();
        tally.add(lines, &read);
    }
    let cold = report.stats.throughput;
    // The comparison runs after the first (cold) run, baseline then plan again, so that both
    // find the plans of the shapes they need already built: steady-state serving.
    let baseline = match args.no_baseline {
        true => None,
        false => {
            let (_, b, b_plans) = run_once(1)?;
            let (_, w, w_plans) = run_once(mars_runtime::run::DEFAULT_MAX_INFLIGHT)?;
            Some((b.stats.throughput, b_plans, w.stats.throughput, w_plans))
        }
    };
    println!(
        "ocr: {} images rendered (seed {}; {} English and {} Chinese lines; fonts {} and {}), read by {}",
        n,
        args.seed,
        latin_lines,
        cjk_lines,
        LATIN.join(", "),
        CJK.join(", "),
        args.pipeline.display()
    );
    println!(
        "  character accuracy  {:>6.2}%   ({} errors in {} characters)",
        100.0 * tally.char_accuracy(),
        tally.errors,
        tally.chars
    );
    println!(
        "  line exact match    {:>6.2}%   ({} of {} lines)",
        100.0 * tally.exact as f64 / tally.lines.max(1) as f64,
        tally.exact,
        tally.lines
    );
    println!(
        "  detection recall    {:>6.2}%   ({} of {} lines matched a box at IoU >= {MATCH_IOU}); precision {:.2}% ({} boxes)",
        100.0 * tally.found as f64 / tally.lines.max(1) as f64,
        tally.found,
        tally.lines,
        100.0 * tally.found as f64 / tally.boxes.max(1) as f64,
        tally.boxes
    );
    println!(
        "  images/s            {cold:>8.2}   under the plan, first run ({cold_plans} ONNX plans built)"
    );
    if let Some((b, b_plans, warm, w_plans)) = baseline {
        println!(
            "  images/s            {b:>8.2}   one image at a time (same plan, --max-inflight 1; {b_plans} plans built)"
        );
        println!(
            "  images/s            {warm:>8.2}   under the plan, again ({w_plans} plans built)   ratio to one at a time {:.2}",
            warm / b
        );
    }
    for f in failed.iter().take(5) {
        println!("  failed: {f}");
    }
    if let Some(path) = json {
        let v = serde_json::json!({
            "bench": "ocr", "images": n, "seed": args.seed, "pipeline": args.pipeline,
            "lines": tally.lines, "latin_lines": latin_lines, "chinese_lines": cjk_lines,
            "char_accuracy": tally.char_accuracy(), "errors": tally.errors, "chars": tally.chars,
            "line_exact": tally.exact, "det_found": tally.found, "det_boxes": tally.boxes,
            "match_iou": MATCH_IOU, "images_per_s_first_run": cold, "onnx_plans_built_first_run": cold_plans,
            "images_per_s_one_at_a_time": baseline.map(|b| b.0),
            "images_per_s": baseline.map(|b| b.2), "onnx_plans_built_one_at_a_time": baseline.map(|b| b.1),
            "onnx_plans_built_again": baseline.map(|b| b.3),
            "failed": failed, "stats": report.stats,
        });
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&v).into_diagnostic()? + "\n",
        )
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x: f64, y: f64, w: f64, h: f64) -> BoxData {
        BoxData { x, y, w, h }
    }

    #[test]
    fn lines_match_their_best_box_once_and_unread_lines_count_as_errors() {
        let lines = vec![
            ("Free shipping".to_string(), b(10.0, 10.0, 200.0, 30.0)),
            ("买一送一".to_string(), b(10.0, 60.0, 120.0, 30.0)),
            ("lost".to_string(), b(300.0, 300.0, 50.0, 20.0)),
        ];
        let read = vec![
            ("买一送二".to_string(), b(5.0, 55.0, 130.0, 40.0)),
            ("Free shipping".to_string(), b(4.0, 4.0, 212.0, 42.0)),
            ("noise".to_string(), b(500.0, 10.0, 20.0, 20.0)),
        ];
        let mut t = Tally::default();
        t.add(&lines, &read);
        assert_eq!((t.lines, t.found, t.boxes, t.exact), (3, 2, 3, 1));
        // 1 substitution in 买一送一, 4 characters of "lost" never read.
        assert_eq!((t.errors, t.chars), (5, 13 + 4 + 4));
    }
}
