//! Text recognition around a CTC recognizer such as PP-OCR's: crops resized to the
//! recognizer's height, and greedy CTC decoding over the charset stored in the model.

use mars_runtime::{BoxData, ImageData, TensorData};

use super::det::planar_bgr;

/// One recognizer input per box: the box cropped (rounded, clamped to the image), resized to
/// `height` keeping its aspect ratio (width `ceil(height · w / h)`, at most `max_width`), in
/// the detector's normalization (BGR, `(v / 255 − 0.5) / 0.5`), as `[3, height, width]`.
/// Widths are not padded here: the `onnx` node pads them to its shape buckets.
pub fn rec_inputs(
    img: &ImageData,
    boxes: &[BoxData],
    height: u32,
    max_width: u32,
) -> Result<Vec<TensorData>, String> {
    boxes
        .iter()
        .map(|b| {
            let c = crate::image::crop(img, b).map_err(|e| e.message)?;
            let w = ((f64::from(height) * f64::from(c.width) / f64::from(c.height)).ceil() as u32)
                .clamp(1, max_width);
            let r = crate::image::resize(&c, w, height);
            Ok(TensorData {
                dtype: "f32".into(),
                shape: vec![3, height as usize, w as usize],
                data: planar_bgr(&r),
            })
        })
        .collect()
}

/// A CTC charset: class 0 is the blank, then the model's characters, then a space (PP-OCR's
/// layout: `metadata_props["character"]` holds the characters one per line).
#[derive(Debug, Clone, PartialEq)]
pub struct Charset {
    classes: Vec<String>,
}

impl Charset {
    /// From the text of `metadata_props["character"]`.
    pub fn from_lines(text: &str) -> Charset {
        let mut classes = vec![String::new()];
        classes.extend(text.lines().map(str::to_string));
        classes.push(" ".into());
        Charset { classes }
    }

    /// Number of classes (blank included).
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.len() <= 1
    }
}

/// Greedy CTC over per-step class probabilities `[T, C]`: the most likely class per step,
/// repeats collapsed, blanks dropped. Returns the text and its score, the mean of the kept
/// steps' probabilities (0 for an empty text).
pub fn ctc_greedy(probs: &TensorData, charset: &Charset) -> Result<(String, f32), String> {
    let (t, c) = match probs.shape.as_slice() {
        [t, c] | [1, t, c] => (*t, *c),
        s => return Err(format!("CTC input has shape [T, C], not {s:?}")),
    };
    if c != charset.len() {
        return Err(format!(
            "the recognizer gives {c} classes per step, but its charset has {} (blank + {} \
             characters + space)",
            charset.len(),
            charset.len() - 2
        ));
    }
    if probs.data.len() != t * c {
        return Err(format!(
            "CTC input of shape {:?} holds {} values",
            probs.shape,
            probs.data.len()
        ));
    }
    let mut text = String::new();
    let (mut sum, mut kept) = (0f64, 0usize);
    let mut prev = usize::MAX;
    for row in probs.data.chunks_exact(c) {
        let (best, p) = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            );
        if best != 0 && best != prev {
            text.push_str(&charset.classes[best]);
            sum += f64::from(p);
            kept += 1;
        }
        prev = best;
    }
    let score = if kept == 0 {
        0.0
    } else {
        (sum / kept as f64) as f32
    };
    Ok((text, score))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_ctc_collapses_repeats_and_drops_blanks() {
        let cs = Charset::from_lines("a\nb\n中");
        assert_eq!(cs.len(), 5);
        // Steps: a a blank a b 中 space 中 中
        let ids = [1usize, 1, 0, 1, 2, 3, 4, 3, 3];
        let mut data = Vec::new();
        for &i in &ids {
            let mut row = vec![0.01f32; 5];
            row[i] = 0.9;
            data.extend(row);
        }
        let t = TensorData {
            dtype: "f32".into(),
            shape: vec![ids.len(), 5],
            data,
        };
        let (text, score) = ctc_greedy(&t, &cs).expect("decodes");
        assert_eq!(text, "aab中 中");
        assert!((score - 0.9).abs() < 1e-6);
        let wrong = Charset::from_lines("a");
        assert!(ctc_greedy(&t, &wrong)
            .expect_err("class count")
            .contains("5 classes"));
    }

    #[test]
    fn rec_inputs_keep_the_aspect_ratio() {
        let img = ImageData {
            width: 100,
            height: 40,
            rgb: vec![200; 100 * 40 * 3],
        };
        let b = BoxData {
            x: 10.0,
            y: 10.0,
            w: 60.0,
            h: 20.0,
        };
        let t = rec_inputs(&img, &[b], 48, 1600).expect("crops");
        assert_eq!(t[0].shape, vec![3, 48, 144]);
        let far = BoxData { x: 500.0, ..b };
        assert!(rec_inputs(&img, &[far], 48, 1600).is_err());
    }
}
