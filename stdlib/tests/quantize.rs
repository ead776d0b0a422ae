//! Activation-aware quantization (`awq_int4`, `smoothquant_int8`) on the committed translator
//! and on a synthetic layer with one outlier input channel: accuracy per mode, per-layer
//! errors against the plain schemes, calibration statistics and their absence.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use mars_stdlib::models::linear::{Linear, Quantize};
use mars_stdlib::models::quant::{
    self, awq_search, calibrate_weights, calibration_phrases, ActStats, StatsRecorder,
};
use mars_stdlib::models::train::{evaluate, held_out_numbers};
use mars_stdlib::models::transformer_lm::{prompt_tokens, SplitMix};
use mars_stdlib::models::{load_lm, load_safetensors, save_safetensors};

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pipelines/weights/mt.safetensors")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mars-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// Sum of squared differences.
fn sq_err(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).and_then(|d| d.sqr()).and_then(|d| d.sum_all());
    let d = d.and_then(|d| d.to_scalar::<f32>()).expect("same shapes");
    f64::from(d)
}

#[test]
fn held_out_accuracy_per_mode() {
    let nums = held_out_numbers(200, 2024);
    let mut acc = BTreeMap::new();
    for q in Quantize::ALL {
        let (model, tok, _) = load_lm(&shipped(), q).unwrap_or_else(|e| panic!("{e}"));
        let (exact, mistakes) = evaluate(&model, &tok, &nums).expect("decodes");
        let a = exact as f64 / nums.len() as f64;
        eprintln!(
            "{:>16}: {exact}/{} = {a:.3}  {:?}",
            q.name(),
            nums.len(),
            mistakes.first()
        );
        acc.insert(q.name(), a);
    }
    // Every mode measures 200/200 here (SPEC §4.2): this model is too robust for exact match to
    // separate the modes (it even survives a dropped 1/s, which the layer-error tests below
    // catch). The floors leave room for float rounding on another CPU and catch gross breakage.
    for (mode, floor) in [
        ("none", 0.97),
        ("int8", 0.95),
        ("smoothquant_int8", 0.95),
        ("int4", 0.9),
        ("awq_int4", 0.9),
    ] {
        assert!(acc[mode] >= floor, "{mode}: {:.3} < {floor}", acc[mode]);
    }
}

#[test]
fn awq_never_raises_the_estimated_error_of_a_layer() {
    let w = load_safetensors(&shipped()).expect("loads");
    let (model, _, _) = load_lm(&shipped(), Quantize::None).expect("loads");
    let mut improved = 0;
    for layer in quant::linear_layers(&model.config) {
        let wt = &w.tensors[&format!("{layer}.w")];
        let stats = ActStats::from_tensors(&w.tensors, &layer, wt.dim(1).expect("2-D"))
            .expect("valid")
            .expect("the shipped file is calibrated");
        let dtype = Quantize::AwqInt4
            .ggml_type(wt.dim(1).expect("2-D"))
            .expect("widths are multiples of 32");
        let s = awq_search(wt, &stats, dtype).expect("searches");
        eprintln!(
            "{layer:>8} {dtype:?}: alpha {:.2}, relative error {:.5} (plain {:.5})",
            s.alpha,
            s.error / s.reference,
            s.plain_error / s.reference
        );
        assert!(s.error <= s.plain_error, "{layer}: {s:?}");
        if s.error < 0.97 * s.plain_error {
            improved += 1;
        }
    }
    assert!(improved > 0, "AWQ's search found nothing better than α = 0");
}

/// Every linear layer's input on `phrases`' prompts, concatenated per layer: `[tokens, in]`.
fn captured_inputs(phrases: &[String]) -> BTreeMap<String, Tensor> {
    let (model, tok, _) = load_lm(&shipped(), Quantize::None).expect("loads");
    let mut seen: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
    for p in phrases {
        let t = prompt_tokens(&tok, p);
        let n = t.len();
        let t = Tensor::from_vec(t, (1, n), &Device::Cpu).expect("tokens");
        model
            .forward_full_observed(&t, &mut |layer, x| {
                seen.entry(layer.to_string()).or_default().push(x.clone());
                Ok(())
            })
            .expect("forward");
    }
    seen.into_iter()
        .map(|(l, xs)| (l, Tensor::cat(&xs, 0).expect("same widths")))
        .collect()
}

/// Output error of `q` against f32 on `x`, for a layer built like the model builds it.
fn layer_error(w: &Tensor, b: &Tensor, x: &Tensor, q: Quantize, stats: Option<&ActStats>) -> f64 {
    let dense = Linear::new(w.clone(), b.clone(), Quantize::None, None).expect("dense");
    let ql = Linear::new(w.clone(), b.clone(), q, stats).expect("quantized");
    sq_err(
        &dense.forward(x).expect("forward"),
        &ql.forward(x).expect("forward"),
    )
}

/// Measured (not estimated) output errors of each layer on calibration prompts, with the real
/// quantized matmuls, activation quantization included.
#[test]
fn smoothquant_and_awq_output_errors_on_calibration_inputs() {
    let w = load_safetensors(&shipped()).expect("loads");
    let xs = captured_inputs(&calibration_phrases(48, 99));
    let (mut total_int8, mut total_sq, mut total_int4, mut total_awq) = (0.0, 0.0, 0.0, 0.0);
    let mut sq_better = 0;
    for (layer, x) in &xs {
        let wt = &w.tensors[&format!("{layer}.w")];
        let b = match w.tensors.get(&format!("{layer}.b")) {
            Some(b) => b.clone(),
            None => {
                Tensor::zeros(wt.dim(0).expect("2-D"), DType::F32, &Device::Cpu).expect("zeros")
            }
        };
        let stats = ActStats::from_tensors(&w.tensors, layer, x.dim(1).expect("2-D"))
            .expect("valid")
            .expect("calibrated");
        let e8 = layer_error(wt, &b, x, Quantize::Int8, None);
        let esq = layer_error(wt, &b, x, Quantize::SmoothQuantInt8, Some(&stats));
        let e4 = layer_error(wt, &b, x, Quantize::Int4, None);
        let eawq = layer_error(wt, &b, x, Quantize::AwqInt4, Some(&stats));
        eprintln!("{layer:>8}: int8 {e8:.4}  smoothquant {esq:.4}  int4 {e4:.3}  awq {eawq:.3}");
        total_int8 += e8;
        total_sq += esq;
        total_int4 += e4;
        total_awq += eawq;
        if esq < e8 {
            sq_better += 1;
        }
    }
    eprintln!(
        "total: int8 {total_int8:.3} smoothquant {total_sq:.3} ({sq_better}/{} layers better); int4 {total_int4:.2} awq {total_awq:.2}",
        xs.len()
    );
    assert_eq!(xs.len(), 13, "{:?}", xs.keys().collect::<Vec<_>>());
    // SmoothQuant quantizes activations too (W8A8), so on a model without strong outlier
    // channels it need not beat weight-only int8: on this translator the two are within ~2%
    // and which one wins depends on the CPU's matmul kernels. Its gain on outliers is pinned
    // by `smoothquant_beats_plain_int8_on_an_outlier_channel`; here it must stay close to int8.
    assert!(
        total_sq < total_int8 * 1.10,
        "smoothquant {total_sq} vs int8 {total_int8}"
    );
    assert!(
        total_awq < total_int4,
        "awq {total_awq} vs int4 {total_int4}"
    );
}

/// A layer of 256 inputs and 64 outputs whose input channel 5 is 40× larger than the rest, as
/// in the outlier channels of large transformers.
fn outlier_layer() -> (Tensor, Tensor, Tensor, ActStats) {
    let (n_in, n_out, tokens) = (256, 64, 512);
    let mut rng = SplitMix(11);
    let w: Vec<f32> = (0..n_out * n_in)
        .map(|_| (rng.normal() * 0.05) as f32)
        .collect();
    let x: Vec<f32> = (0..tokens * n_in)
        .map(|k| {
            let v = rng.normal() as f32;
            if k % n_in == 5 {
                40.0 * v
            } else {
                v
            }
        })
        .collect();
    let dev = Device::Cpu;
    let w = Tensor::from_vec(w, (n_out, n_in), &dev).expect("w");
    let x = Tensor::from_vec(x, (tokens, n_in), &dev).expect("x");
    let b = Tensor::zeros(n_out, DType::F32, &dev).expect("b");
    let mut rec = StatsRecorder::default();
    rec.record("layer", &x).expect("records");
    let stats = rec.finish().remove("layer").expect("recorded");
    (w, b, x, stats)
}

#[test]
fn awq_beats_plain_int4_on_an_outlier_channel() {
    let (w, b, x, stats) = outlier_layer();
    let dtype = Quantize::AwqInt4.ggml_type(256).expect("quantized");
    let s = awq_search(&w, &stats, dtype).expect("searches");
    assert!(s.alpha > 0.0, "{s:?}");
    assert!(
        s.error < 0.5 * s.plain_error,
        "estimated: awq {} vs plain {}",
        s.error,
        s.plain_error
    );
    let plain = layer_error(&w, &b, &x, Quantize::Int4, None);
    let awq = layer_error(&w, &b, &x, Quantize::AwqInt4, Some(&stats));
    eprintln!(
        "outlier layer, measured: int4 {plain:.3}, awq_int4 {awq:.3} (alpha {})",
        s.alpha
    );
    assert!(awq < 0.5 * plain, "measured: awq {awq} vs int4 {plain}");
}

#[test]
fn smoothquant_beats_plain_int8_on_an_outlier_channel() {
    let (w, b, x, stats) = outlier_layer();
    let plain = layer_error(&w, &b, &x, Quantize::Int8, None);
    let sq = layer_error(&w, &b, &x, Quantize::SmoothQuantInt8, Some(&stats));
    eprintln!("outlier layer, measured: int8 {plain:.4}, smoothquant_int8 {sq:.4}");
    assert!(sq < 0.5 * plain, "smoothquant {sq} vs int8 {plain}");
}

/// The shipped file carries what `marsc weights calibrate` writes by default: the same tensors
/// and metadata, statistics equal up to float rounding (byte equality would depend on the
/// CPU's SIMD paths).
#[test]
fn the_shipped_translator_is_calibrated_by_the_default_command() {
    let out = scratch("recalibrated.safetensors");
    let c = calibrate_weights(
        &shipped(),
        &calibration_phrases(512, 7),
        "number phrases, seed 7",
        &out,
    )
    .expect("calibrates");
    assert_eq!((c.phrases, c.layers), (512, 13));
    let (a, b) = (
        load_safetensors(&shipped()).expect("loads"),
        load_safetensors(&out).expect("loads"),
    );
    assert_eq!(a.metadata, b.metadata);
    let names = |w: &mars_stdlib::models::Weights| {
        let mut n: Vec<String> = w.tensors.keys().cloned().collect();
        n.sort();
        n
    };
    assert_eq!(names(&a), names(&b));
    for (name, t) in &a.tensors {
        let x = t
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("f32");
        let y = b.tensors[name]
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("f32");
        let close = x
            .iter()
            .zip(&y)
            .all(|(p, q)| (p - q).abs() <= 1e-4 * p.abs().max(q.abs()).max(1e-3));
        assert!(close, "`{name}` differs from a fresh calibration");
        if !name.contains(".act_") {
            assert_eq!(x, y, "`{name}` is not kept as it was");
        }
    }
}

fn strip_stats(from: &Path, to: &Path, keep: impl Fn(&str) -> bool) {
    let w = load_safetensors(from).expect("loads");
    let tensors: HashMap<String, Tensor> = w.tensors.into_iter().filter(|(n, _)| keep(n)).collect();
    save_safetensors(to, &tensors, w.metadata.into_iter().collect()).expect("writes");
}

#[test]
fn activation_aware_modes_refuse_weights_without_statistics() {
    let plain = scratch("plain.safetensors");
    strip_stats(&shipped(), &plain, |n| !n.contains(".act_"));
    // The plain modes load either file (the statistics are ignored).
    for path in [&plain, &shipped()] {
        for q in [Quantize::None, Quantize::Int8, Quantize::Int4] {
            assert!(load_lm(path, q).is_ok(), "{} {}", path.display(), q.name());
        }
    }
    for q in [Quantize::AwqInt4, Quantize::SmoothQuantInt8] {
        let e = load_lm(&plain, q).err().expect("refused");
        assert!(
            e.contains(&plain.display().to_string())
                && e.contains("marsc weights calibrate")
                && e.contains(q.name()),
            "{e}"
        );
    }
    // Through the registry, as `marsc run` builds nodes: a build error, not a fallback.
    for (file, quantize, ok) in [
        ("plain.safetensors", "awq_int4", false),
        ("plain.safetensors", "smoothquant_int8", false),
        ("plain.safetensors", "int4", true),
    ] {
        let ctx = common::lm_context_in(
            serde_json::json!({"weights": file, "quantize": quantize}),
            plain.parent().expect("a folder"),
        );
        match mars_stdlib::registry().instantiate(&ctx) {
            Ok(_) => assert!(ok, "{quantize} built without statistics"),
            Err(e) => {
                assert!(!ok, "{quantize}: {}", e.message);
                assert!(
                    e.message.contains("node `") && e.message.contains("marsc weights calibrate"),
                    "{}",
                    e.message
                );
            }
        }
    }
    // A file with half of one layer's statistics is refused too, naming the tensor.
    let half = scratch("half.safetensors");
    strip_stats(&shipped(), &half, |n| n != "l1.fc2.act_abs_max");
    let e = load_lm(&half, Quantize::SmoothQuantInt8)
        .err()
        .expect("refused");
    assert!(e.contains("l1.fc2"), "{e}");
}

#[test]
fn calibration_phrases_avoid_the_held_out_numbers_and_are_reproducible() {
    let a = calibration_phrases(200, 7);
    assert_eq!(a, calibration_phrases(200, 7));
    assert_ne!(a, calibration_phrases(200, 8));
    let held: std::collections::BTreeSet<String> = held_out_numbers(2000, 2024)
        .into_iter()
        .map(mars_stdlib::models::numbers::english)
        .collect();
    assert!(a.iter().all(|p| !held.contains(p)));
}
