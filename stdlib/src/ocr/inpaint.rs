//! Removing text from an image: the pixels of each text box that belong to the text are
//! filled from the surrounding pixels, classically (no model).
//!
//! Which pixels: inside each box, those where the detector's probability map (scaled to the
//! image) is over `threshold`, together with those whose colour is far from the box's
//! background (at each pixel, the colours of the box's top and bottom edge in that column,
//! interpolated), since a DB detector's map
//! covers a shrunk core of each text line rather than every stroke; the set is grown by
//! `grow` pixels. How: by onion peeling, the fast-marching order of Telea's method without its
//! gradient term: layer by layer from the known boundary inward, each pixel becomes the
//! average of the already-known pixels within two pixels, weighted by inverse squared
//! distance.

use mars_runtime::{BoxData, ImageData, TensorData};

/// Colour distance (sum of absolute channel differences) from the background above which a
/// pixel inside a box counts as text.
pub const INK_DISTANCE: u32 = 60;

/// Inpaint `boxes` of `img` using `mask` (a `[1, H, W]` or `[H, W]` probability map over
/// the whole image at any resolution). Returns how many pixels were filled.
pub fn inpaint(
    img: &mut ImageData,
    boxes: &[BoxData],
    mask: Option<&TensorData>,
    threshold: f32,
    grow: u32,
) -> Result<usize, String> {
    let (w, h) = (img.width as usize, img.height as usize);
    if img.rgb.len() != w * h * 3 {
        return Err(format!(
            "image of {w}×{h} has {} bytes, not {}",
            img.rgb.len(),
            w * h * 3
        ));
    }
    let map = match mask {
        Some(m) => Some((super::det::map_dims(m)?, &m.data)),
        None => None,
    };
    let mut fill = vec![false; w * h];
    for b in boxes {
        let x0 = (b.x.floor().max(0.0) as usize).min(w);
        let y0 = (b.y.floor().max(0.0) as usize).min(h);
        let x1 = ((b.x + b.w).ceil().max(0.0) as usize).min(w);
        let y1 = ((b.y + b.h).ceil().max(0.0) as usize).min(h);
        if x1 <= x0 || y1 <= y0 {
            continue;
        }
        let mut inside = vec![false; (x1 - x0) * (y1 - y0)];
        for y in y0..y1 {
            let t = if y1 - y0 > 1 {
                (y - y0) as f32 / (y1 - y0 - 1) as f32
            } else {
                0.0
            };
            for x in x0..x1 {
                let p = (y * w + x) * 3;
                let (top, bottom) = ((y0 * w + x) * 3, ((y1 - 1) * w + x) * 3);
                let dist: u32 = (0..3)
                    .map(|k| {
                        let bg = f32::from(img.rgb[top + k]) * (1.0 - t)
                            + f32::from(img.rgb[bottom + k]) * t;
                        (f32::from(img.rgb[p + k]) - bg).abs() as u32
                    })
                    .sum();
                let by_map = map.is_some_and(|((mh, mw), data)| {
                    let my = (y * mh / h).min(mh - 1);
                    let mx = (x * mw / w).min(mw - 1);
                    data[my * mw + mx] > threshold
                });
                inside[(y - y0) * (x1 - x0) + (x - x0)] = by_map || dist > INK_DISTANCE;
            }
        }
        // Grow by `grow` pixels (square), staying inside the box.
        let g = grow as usize;
        let bw = x1 - x0;
        for yy in 0..(y1 - y0) {
            for xx in 0..bw {
                if !inside[yy * bw + xx] {
                    continue;
                }
                for ny in yy.saturating_sub(g)..(yy + g + 1).min(y1 - y0) {
                    for nx in xx.saturating_sub(g)..(xx + g + 1).min(bw) {
                        fill[(y0 + ny) * w + x0 + nx] = true;
                    }
                }
            }
        }
    }
    Ok(peel(img, &mut fill))
}

/// Fill the pixels marked in `unknown` layer by layer from the known ones; returns how many
/// were filled. Pixels with no known pixel anywhere (a fully marked image) stay as they are.
fn peel(img: &mut ImageData, unknown: &mut [bool]) -> usize {
    let (w, h) = (img.width as i64, img.height as i64);
    let mut filled = 0;
    let mut frontier: Vec<usize> = Vec::new();
    let is_unknown =
        |u: &[bool], x: i64, y: i64| x >= 0 && y >= 0 && x < w && y < h && u[(y * w + x) as usize];
    loop {
        frontier.clear();
        for y in 0..h {
            for x in 0..w {
                if !unknown[(y * w + x) as usize] {
                    continue;
                }
                let touches = (-1..=1).any(|dy| {
                    (-1..=1).any(|dx| {
                        let (nx, ny) = (x + dx, y + dy);
                        nx >= 0 && ny >= 0 && nx < w && ny < h && !is_unknown(unknown, nx, ny)
                    })
                });
                if touches {
                    frontier.push((y * w + x) as usize);
                }
            }
        }
        if frontier.is_empty() {
            return filled;
        }
        let values: Vec<[u8; 3]> = frontier
            .iter()
            .map(|&p| {
                let (x, y) = (p as i64 % w, p as i64 / w);
                let mut acc = [0f64; 3];
                let mut wsum = 0f64;
                for dy in -2i64..=2 {
                    for dx in -2i64..=2 {
                        let (nx, ny) = (x + dx, y + dy);
                        if (dx == 0 && dy == 0)
                            || nx < 0
                            || ny < 0
                            || nx >= w
                            || ny >= h
                            || unknown[(ny * w + nx) as usize]
                        {
                            continue;
                        }
                        let wt = 1.0 / (dx * dx + dy * dy) as f64;
                        let q = ((ny * w + nx) * 3) as usize;
                        for (k, a) in acc.iter_mut().enumerate() {
                            *a += wt * f64::from(img.rgb[q + k]);
                        }
                        wsum += wt;
                    }
                }
                [0, 1, 2].map(|k| (acc[k] / wsum).round().clamp(0.0, 255.0) as u8)
            })
            .collect();
        for (&p, v) in frontier.iter().zip(values) {
            img.rgb[p * 3..p * 3 + 3].copy_from_slice(&v);
            unknown[p] = false;
            filled += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_in_a_box_is_filled_from_the_background() {
        // A horizontal gradient with a black bar ("text") in the middle.
        let (w, h) = (40u32, 20u32);
        let mut rgb = Vec::new();
        for _y in 0..h {
            for x in 0..w {
                let v = 100 + 3 * x as u8;
                rgb.extend_from_slice(&[v, v, 200]);
            }
        }
        let mut img = ImageData {
            width: w,
            height: h,
            rgb,
        };
        let orig = img.clone();
        for y in 8..12 {
            for x in 10..30 {
                let p = ((y * w + x) * 3) as usize;
                img.rgb[p..p + 3].fill(0);
            }
        }
        let b = BoxData {
            x: 6.0,
            y: 5.0,
            w: 28.0,
            h: 10.0,
        };
        let n = inpaint(&mut img, &[b], None, 0.3, 1).expect("inpaints");
        assert!(n >= 80, "{n}");
        // Every pixel is back within a few levels of the gradient.
        let worst = img
            .rgb
            .iter()
            .zip(&orig.rgb)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .expect("pixels");
        assert!(worst <= 6, "{worst}");
        // Outside the box nothing changed.
        assert_eq!(img.rgb[0..3], orig.rgb[0..3]);
    }

    #[test]
    fn the_detector_mask_marks_pixels_too() {
        let mut img = ImageData {
            width: 8,
            height: 8,
            rgb: vec![120; 8 * 8 * 3],
        };
        // A faint mark the colour test misses, but the map (4×4, half resolution) covers.
        let p = (3 * 8 + 3) * 3;
        img.rgb[p..p + 3].fill(140);
        let mut data = vec![0.0f32; 16];
        data[5] = 0.9; // cell (1, 1) → pixels 2..4
        let mask = TensorData {
            dtype: "f32".into(),
            shape: vec![1, 4, 4],
            data,
        };
        let b = BoxData {
            x: 0.0,
            y: 0.0,
            w: 8.0,
            h: 8.0,
        };
        inpaint(&mut img, &[b], Some(&mask), 0.3, 0).expect("inpaints");
        assert_eq!(&img.rgb[p..p + 3], &[120, 120, 120]);
    }
}
