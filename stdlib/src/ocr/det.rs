//! Text detection around a DB ("differentiable binarization") detector such as PP-OCR's:
//! the image as the detector's input tensor, and the probability map back to boxes.

use mars_runtime::{BoxData, ImageData, TensorData};

/// The detector's input: the image resized so that each side is a multiple of 32 (the longer
/// side at most `max_side`, rounded to 32; never below 32), RGB turned to BGR (PP-OCR was
/// trained on OpenCV's channel order), scaled to [0, 1] and normalized with mean and std 0.5
/// (RapidOCR's setting for PP-OCRv4), as `[3, H, W]`.
pub fn det_input(img: &ImageData, max_side: u32) -> TensorData {
    let (w, h) = (img.width.max(1), img.height.max(1));
    let long = w.max(h) as f64;
    let ratio = if long > f64::from(max_side) {
        f64::from(max_side) / long
    } else {
        1.0
    };
    let round32 = |v: f64| -> u32 { (((v / 32.0).round() as u32).max(1)) * 32 };
    let (rw, rh) = (round32(f64::from(w) * ratio), round32(f64::from(h) * ratio));
    let r = crate::image::resize(img, rw, rh);
    TensorData {
        dtype: "f32".into(),
        shape: vec![3, rh as usize, rw as usize],
        data: planar_bgr(&r),
    }
}

/// `[3, H, W]` BGR planes of an image, `(v / 255 - 0.5) / 0.5`.
pub fn planar_bgr(img: &ImageData) -> Vec<f32> {
    let n = img.width as usize * img.height as usize;
    let mut data = vec![0f32; 3 * n];
    for (p, px) in img.rgb.chunks_exact(3).enumerate().take(n) {
        for c in 0..3 {
            // Plane 0 is blue: channel 2 of RGB.
            data[c * n + p] = f32::from(px[2 - c]) / 127.5 - 1.0;
        }
    }
    data
}

/// DB post-processing parameters (RapidOCR's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbParams {
    /// A map cell is text where its probability exceeds this.
    pub thresh: f32,
    /// A region is kept when its mean probability reaches this (the minimum score).
    pub box_thresh: f32,
    /// Each region grows by `area · ratio / perimeter` on every side.
    pub unclip_ratio: f32,
    /// Regions whose shorter side is under this (map cells) are dropped.
    pub min_size: f32,
}

impl Default for DbParams {
    fn default() -> Self {
        DbParams {
            thresh: 0.3,
            box_thresh: 0.5,
            unclip_ratio: 1.6,
            min_size: 3.0,
        }
    }
}

/// A detected text region in map cells: its bounding rectangle (inclusive) and score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
    pub score: f32,
}

/// The map's `[H, W]` from a `[1, H, W]` or `[H, W]` tensor.
pub fn map_dims(prob: &TensorData) -> Result<(usize, usize), String> {
    let (h, w) = match prob.shape.as_slice() {
        [1, h, w] | [h, w] => (*h, *w),
        s => return Err(format!("a probability map has shape [1, H, W], not {s:?}")),
    };
    if prob.data.len() != h * w {
        return Err(format!(
            "a probability map of shape {:?} holds {} values",
            prob.shape,
            prob.data.len()
        ));
    }
    Ok((h, w))
}

/// The text regions of a probability map: cells over `thresh`, dilated by a 2×2 kernel,
/// in 8-connected components; each component's bounding rectangle scored by the mean
/// probability inside it ("fast" scoring).
pub fn regions(prob: &[f32], h: usize, w: usize, p: &DbParams) -> Vec<Region> {
    let mut bitmap = vec![false; h * w];
    // 2×2 dilation (OpenCV's anchor is the kernel's centre, which for 2×2 is its
    // bottom-right cell): a cell is set when it or its up/left neighbours are over.
    for y in 0..h {
        for x in 0..w {
            let on = |yy: usize, xx: usize| prob[yy * w + xx] > p.thresh;
            bitmap[y * w + x] = on(y, x)
                || (x > 0 && on(y, x - 1))
                || (y > 0 && on(y - 1, x))
                || (x > 0 && y > 0 && on(y - 1, x - 1));
        }
    }
    let mut seen = vec![false; h * w];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..h * w {
        if seen[start] || !bitmap[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
        while let Some(c) = stack.pop() {
            let (y, x) = (c / w, c % w);
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (ny, nx) = (y as i64 + dy, x as i64 + dx);
                    if ny < 0 || nx < 0 || ny >= h as i64 || nx >= w as i64 {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if !seen[q] && bitmap[q] {
                        seen[q] = true;
                        stack.push(q);
                    }
                }
            }
        }
        let (bw, bh) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
        if bw.min(bh) < p.min_size {
            continue;
        }
        let mut sum = 0f64;
        for y in y0..=y1 {
            sum += prob[y * w + x0..=y * w + x1]
                .iter()
                .map(|&v| f64::from(v))
                .sum::<f64>();
        }
        let score = (sum / f64::from(bw * bh)) as f32;
        if score < p.box_thresh {
            continue;
        }
        out.push(Region {
            x0,
            y0,
            x1,
            y1,
            score,
        });
    }
    out
}

/// Boxes in image coordinates from a probability map computed on a resized copy of an
/// `img_w`×`img_h` image: each region unclipped (grown by `area · ratio / perimeter`),
/// dropped when its shorter side is then under `min_size + 2` cells, scaled to the image and
/// clamped; sorted top to bottom, then left to right among boxes whose tops are within 10
/// pixels (RapidOCR's reading order).
pub fn db_boxes(
    prob: &TensorData,
    img_w: u32,
    img_h: u32,
    p: &DbParams,
) -> Result<Vec<BoxData>, String> {
    let (h, w) = map_dims(prob)?;
    let (sx, sy) = (
        f64::from(img_w) / w.max(1) as f64,
        f64::from(img_h) / h.max(1) as f64,
    );
    let mut boxes: Vec<BoxData> = regions(&prob.data, h, w, p)
        .into_iter()
        .filter_map(|r| {
            let (bw, bh) = ((r.x1 - r.x0 + 1) as f64, (r.y1 - r.y0 + 1) as f64);
            let d = bw * bh * f64::from(p.unclip_ratio) / (2.0 * (bw + bh));
            if (bw + 2.0 * d).min(bh + 2.0 * d) < f64::from(p.min_size) + 2.0 {
                return None;
            }
            let x0 = ((r.x0 as f64 - d) * sx).clamp(0.0, f64::from(img_w));
            let y0 = ((r.y0 as f64 - d) * sy).clamp(0.0, f64::from(img_h));
            let x1 = ((r.x1 as f64 + 1.0 + d) * sx).clamp(0.0, f64::from(img_w));
            let y1 = ((r.y1 as f64 + 1.0 + d) * sy).clamp(0.0, f64::from(img_h));
            (x1 - x0 > 3.0 && y1 - y0 > 3.0).then(|| BoxData {
                x: x0.round(),
                y: y0.round(),
                w: (x1 - x0).round(),
                h: (y1 - y0).round(),
            })
        })
        .collect();
    boxes.sort_by(|a, b| a.y.total_cmp(&b.y).then(a.x.total_cmp(&b.x)));
    // Boxes on one line (tops within 10 px) read left to right.
    for i in 1..boxes.len() {
        let mut j = i;
        while j > 0 && (boxes[j].y - boxes[j - 1].y).abs() < 10.0 && boxes[j].x < boxes[j - 1].x {
            boxes.swap(j, j - 1);
            j -= 1;
        }
    }
    Ok(boxes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn det_input_is_a_multiple_of_32_in_bgr() {
        let img = ImageData {
            width: 100,
            height: 50,
            rgb: [255u8, 0, 0].repeat(5000),
        };
        let t = det_input(&img, 960);
        assert_eq!(t.shape, vec![3, 64, 96]);
        let n = 64 * 96;
        // Red is plane 2 (BGR): 1.0 there, -1.0 in blue.
        assert!((t.data[2 * n] - 1.0).abs() < 1e-6);
        assert!((t.data[0] + 1.0).abs() < 1e-6);
        let big = ImageData {
            width: 2000,
            height: 1000,
            rgb: vec![0; 6_000_000],
        };
        assert_eq!(det_input(&big, 960).shape, vec![3, 480, 960]);
    }

    #[test]
    fn db_boxes_unclip_score_and_order() {
        // A 20×40 map (image 40×80, scale 2): two text lines, one faint blob.
        let (h, w) = (20, 40);
        let mut data = vec![0.0f32; h * w];
        let mut fill = |y0: usize, y1: usize, x0: usize, x1: usize, v: f32| {
            for y in y0..y1 {
                for x in x0..x1 {
                    data[y * w + x] = v;
                }
            }
        };
        fill(12, 16, 20, 36, 0.9); // second line, right
        fill(2, 6, 4, 30, 0.95); // first line
        fill(12, 16, 2, 10, 0.9); // second line, left
        fill(8, 10, 34, 38, 0.35); // over `thresh` but under `box_thresh`
        let prob = TensorData {
            dtype: "f32".into(),
            shape: vec![1, h, w],
            data,
        };
        let b = db_boxes(&prob, 80, 40, &DbParams::default()).expect("boxes");
        assert_eq!(b.len(), 3, "{b:?}");
        // First line: cells x 4..30, y 2..6, dilated to x 4..31, y 2..7 (27 × 5);
        // d = 135·1.6/64 = 3.375; ×2 to image pixels.
        let d = 27.0 * 5.0 * 1.6 / 64.0;
        assert_eq!(b[0].x, ((4.0 - d) * 2.0f64).round());
        assert_eq!(b[0].w, ((31.0 + d) * 2.0 - (4.0 - d) * 2.0f64).round());
        assert!(b[1].x < b[2].x && (b[1].y - b[2].y).abs() < 10.0, "{b:?}");
        assert!(db_boxes(
            &TensorData {
                dtype: "f32".into(),
                shape: vec![2, 2, 2],
                data: vec![0.0; 8]
            },
            8,
            8,
            &DbParams::default()
        )
        .is_err());
    }
}
