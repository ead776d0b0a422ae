//! `std.ocr`: what OCR needs around its models (SPEC §4.6). The detector and recognizer are
//! ONNX files run by `arch = "onnx"` model nodes; these builtins prepare their inputs and read
//! their outputs:
//!
//! - `ocr.det_input`: image → the detector's input tensor ([`det::det_input`]);
//! - `ocr.db_boxes`: probability map → text boxes in image coordinates ([`det::db_boxes`]);
//! - `ocr.rec_inputs`: image and boxes → one recognizer input per box ([`rec::rec_inputs`]);
//! - `ocr.ctc_decode`: per-step class probabilities → text ([`rec::ctc_greedy`]), with the
//!   charset read from the recognizer's ONNX metadata.
//!
//! `image.inpaint` ([`inpaint`]) lives here too; [`render`] draws the text images the tests
//! and benchmarks read.

pub mod det;
pub mod inpaint;
pub mod rec;
pub mod render;

use std::sync::Arc;

use mars_runtime::node::per_item;
use mars_runtime::{BoxData, ImageData, Item, NodeContext, NodeError, Registry, TensorData, Value};

use crate::params::{int_param, text_param};

/// A float parameter with a default.
fn float_param(ctx: &NodeContext, name: &str, default: f64) -> Result<f64, NodeError> {
    match ctx.node.params.get(name) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| {
            NodeError::new(format!(
                "node `{}`: parameter `{name}` must be a number, got `{v}`",
                ctx.node.id
            ))
        }),
    }
}

fn bad_param(ctx: &NodeContext, name: &str, why: &str) -> NodeError {
    NodeError::new(format!("node `{}`: parameter `{name}` {why}", ctx.node.id))
}

fn arg(item: &Item, i: usize) -> Result<&Value, NodeError> {
    item.get(i)
        .ok_or_else(|| NodeError::new(format!("missing argument {i}")))
}

fn image(item: &Item, i: usize) -> Result<&ImageData, NodeError> {
    match arg(item, i)? {
        Value::Image(img) => Ok(img),
        other => Err(NodeError::new(format!(
            "argument {i}: expected Image, got {}",
            other.kind()
        ))),
    }
}

fn tensor(item: &Item, i: usize) -> Result<&TensorData, NodeError> {
    match arg(item, i)? {
        Value::Tensor(t) => Ok(t),
        other => Err(NodeError::new(format!(
            "argument {i}: expected Tensor, got {}",
            other.kind()
        ))),
    }
}

fn boxes(item: &Item, i: usize) -> Result<Vec<BoxData>, NodeError> {
    arg(item, i)?
        .as_list()?
        .iter()
        .map(|v| match v {
            Value::Box(b) => Ok(*b),
            other => Err(NodeError::new(format!(
                "argument {i}: expected Box, got {}",
                other.kind()
            ))),
        })
        .collect()
}

fn tensor_value(t: TensorData) -> Value {
    Value::Tensor(Arc::new(t))
}

/// Register `ocr.det_input`, `ocr.db_boxes`, `ocr.rec_inputs`, `ocr.ctc_decode` and
/// `image.inpaint`.
pub fn register(registry: &mut Registry) {
    registry.builtin(
        "ocr.det_input",
        Arc::new(|ctx: &NodeContext| {
            let max_side = int_param(ctx, "max_side", Some(960))?;
            if !(32..=8192).contains(&max_side) {
                return Err(bad_param(ctx, "max_side", "must be in 32..=8192"));
            }
            Ok(per_item(move |i| {
                Ok(vec![tensor_value(det::det_input(
                    image(&i, 0)?,
                    max_side as u32,
                ))])
            }))
        }),
    );
    registry.builtin(
        "ocr.db_boxes",
        Arc::new(|ctx: &NodeContext| {
            let p = det::DbParams {
                thresh: float_param(ctx, "thresh", 0.3)? as f32,
                box_thresh: float_param(ctx, "box_thresh", 0.5)? as f32,
                unclip_ratio: float_param(ctx, "unclip_ratio", 1.6)? as f32,
                min_size: int_param(ctx, "min_size", Some(3))? as f32,
            };
            for (name, v) in [("thresh", p.thresh), ("box_thresh", p.box_thresh)] {
                if !(0.0..1.0).contains(&v) {
                    return Err(bad_param(ctx, name, "must be in [0, 1)"));
                }
            }
            if p.unclip_ratio < 0.0 || p.min_size < 0.0 {
                return Err(bad_param(
                    ctx,
                    "unclip_ratio",
                    "and `min_size` must be non-negative",
                ));
            }
            Ok(per_item(move |i| {
                let img = image(&i, 0)?;
                let bs = det::db_boxes(tensor(&i, 1)?, img.width, img.height, &p)
                    .map_err(NodeError::new)?;
                Ok(vec![Value::List(bs.into_iter().map(Value::Box).collect())])
            }))
        }),
    );
    registry.builtin(
        "ocr.rec_inputs",
        Arc::new(|ctx: &NodeContext| {
            let height = int_param(ctx, "height", Some(48))?;
            let max_width = int_param(ctx, "max_width", Some(1600))?;
            if !(8..=512).contains(&height) {
                return Err(bad_param(ctx, "height", "must be in 8..=512"));
            }
            if !(8..=8192).contains(&max_width) {
                return Err(bad_param(ctx, "max_width", "must be in 8..=8192"));
            }
            Ok(per_item(move |i| {
                let ts = rec::rec_inputs(
                    image(&i, 0)?,
                    &boxes(&i, 1)?,
                    height as u32,
                    max_width as u32,
                )
                .map_err(NodeError::new)?;
                Ok(vec![Value::List(
                    ts.into_iter().map(tensor_value).collect(),
                )])
            }))
        }),
    );
    registry.builtin(
        "ocr.ctc_decode",
        Arc::new(|ctx: &NodeContext| {
            let reference = text_param(ctx, "charset", None)?;
            let min_score = float_param(ctx, "min_score", 0.5)? as f32;
            let charset = charset_of(&reference, &ctx.base_dir)
                .map_err(|e| bad_param(ctx, "charset", &format!(": {e}")))?;
            Ok(per_item(move |i| {
                let (text, score) =
                    rec::ctc_greedy(tensor(&i, 0)?, &charset).map_err(NodeError::new)?;
                let text = if score < min_score {
                    String::new()
                } else {
                    text
                };
                Ok(vec![Value::Text(text)])
            }))
        }),
    );
    registry.builtin(
        "image.inpaint",
        Arc::new(|ctx: &NodeContext| {
            let threshold = float_param(ctx, "threshold", 0.3)? as f32;
            let grow = int_param(ctx, "grow", Some(2))?;
            if !(0..=64).contains(&grow) {
                return Err(bad_param(ctx, "grow", "must be in 0..=64"));
            }
            Ok(per_item(move |i| {
                let mut img = image(&i, 0)?.clone();
                let bs = boxes(&i, 1)?;
                inpaint::inpaint(&mut img, &bs, Some(tensor(&i, 2)?), threshold, grow as u32)
                    .map_err(NodeError::new)?;
                Ok(vec![Value::Image(Arc::new(img))])
            }))
        }),
    );
}

/// The charset of a CTC recognizer: `metadata_props["character"]` of the ONNX file that
/// `reference` names (`model:NAME` or a path relative to `base`).
pub fn charset_of(reference: &str, base: &std::path::Path) -> Result<rec::Charset, String> {
    let path = crate::models::model_file(reference, base)?;
    let meta = crate::models::onnx::onnx_metadata(&path)?;
    let text = meta.get("character").ok_or_else(|| {
        format!(
            "`{}` has no metadata_props[\"character\"] (it holds: {})",
            path.display(),
            meta.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    Ok(rec::Charset::from_lines(text))
}

/// Levenshtein distance between two texts, in characters (the OCR benchmark's character
/// errors: accuracy is `1 − errors / reference length`).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn edit_distance_counts_characters() {
        assert_eq!(super::edit_distance("买一送一", "买二送一"), 1);
        assert_eq!(super::edit_distance("kitten", "sitting"), 3);
        assert_eq!(super::edit_distance("", "abc"), 3);
    }
}
