//! `std.image` implementations: `decode` (PNG, JPEG, WebP), `encode` (static `format`: png,
//! jpeg or webp; WebP is written lossless), `resize`, `crop` (one image per box), `draw_text`
//! (TrueType fonts from packages, fitted to each box; see [`crate::font`]) and `text_boxes`
//! (connected regions of a mask, as boxes in image coordinates). `image.inpaint` is in
//! [`crate::ocr::inpaint`]. The 8×8 `font8x8` bitmap font draws `marsc weights samples`.
//!
//! A corrupt or unsupported image is that item's error, with the decoder's reason.

use std::io::Cursor;
use std::sync::Arc;

use font8x8::UnicodeFonts;
use mars_runtime::node::per_item;
use mars_runtime::{BoxData, ImageData, Item, NodeContext, NodeError, Registry, TensorData, Value};

use crate::font::Fonts;
use crate::params::{int_param, text_param};

/// Register this module's nodes under `image.decode`, `image.encode`, `image.resize`,
/// `image.crop`, `image.draw_text` and `image.text_boxes`.
pub fn register(registry: &mut Registry) {
    registry.builtin(
        "image.decode",
        Arc::new(|_: &NodeContext| {
            Ok(per_item(|i| match arg(&i, 0)? {
                Value::Bytes(b) => Ok(vec![Value::Image(Arc::new(decode(b)?))]),
                other => Err(NodeError::new(format!(
                    "expected Bytes, got {}",
                    other.kind()
                ))),
            }))
        }),
    );
    registry.builtin(
        "image.encode",
        Arc::new(|ctx: &NodeContext| {
            let format = Format::parse(&text_param(ctx, "format", Some("png"))?).map_err(|e| {
                NodeError::new(format!("node `{}`: parameter `format`: {e}", ctx.node.id))
            })?;
            Ok(per_item(move |i| {
                Ok(vec![Value::Bytes(Arc::new(encode(image(&i, 0)?, format)?))])
            }))
        }),
    );
    registry.builtin(
        "image.resize",
        Arc::new(|ctx: &NodeContext| {
            let dim = |name: &str| -> Result<u32, NodeError> {
                let v = int_param(ctx, name, None)?;
                u32::try_from(v)
                    .ok()
                    .filter(|&v| (1..=16384).contains(&v))
                    .ok_or_else(|| {
                        NodeError::new(format!(
                            "node `{}`: parameter `{name}` must be in 1..=16384, got {v}",
                            ctx.node.id
                        ))
                    })
            };
            let (w, h) = (dim("width")?, dim("height")?);
            Ok(per_item(move |i| {
                Ok(vec![Value::Image(Arc::new(resize(image(&i, 0)?, w, h)))])
            }))
        }),
    );
    registry.builtin(
        "image.crop",
        Arc::new(|_: &NodeContext| {
            Ok(per_item(|i| {
                let img = image(&i, 0)?;
                let crops = boxes(&i, 1)?
                    .iter()
                    .map(|b| crop(img, b).map(|c| Value::Image(Arc::new(c))))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(vec![Value::List(crops)])
            }))
        }),
    );
    registry.builtin(
        "image.draw_text",
        Arc::new(|ctx: &NodeContext| {
            let fonts = Fonts::load(
                &text_param(ctx, "font", Some("DejaVuSans.ttf"))?,
                &ctx.base_dir,
            )
            .map_err(|e| {
                NodeError::new(format!("node `{}`: parameter `font`: {e}", ctx.node.id))
            })?;
            let color = Ink::parse(&text_param(ctx, "color", Some("auto"))?).map_err(|e| {
                NodeError::new(format!("node `{}`: parameter `color`: {e}", ctx.node.id))
            })?;
            Ok(per_item(move |i| {
                let mut img = image(&i, 0)?.clone();
                let bs = boxes(&i, 1)?;
                let texts = arg(&i, 2)?
                    .as_list()?
                    .iter()
                    .map(Value::as_text)
                    .collect::<Result<Vec<_>, _>>()?;
                if bs.len() != texts.len() {
                    return Err(NodeError::new(format!(
                        "{} boxes but {} texts",
                        bs.len(),
                        texts.len()
                    )));
                }
                for (b, t) in bs.iter().zip(texts) {
                    draw_text(&mut img, &fonts, b, t, color);
                }
                Ok(vec![Value::Image(Arc::new(img))])
            }))
        }),
    );
    registry.builtin(
        "image.text_boxes",
        Arc::new(|_: &NodeContext| {
            Ok(per_item(|i| {
                let img = image(&i, 0)?;
                let mask = match arg(&i, 1)? {
                    Value::Tensor(t) => t,
                    other => {
                        return Err(NodeError::new(format!(
                            "expected Tensor, got {}",
                            other.kind()
                        )))
                    }
                };
                let bs = text_boxes(img, mask, 0.5)?;
                Ok(vec![Value::List(bs.into_iter().map(Value::Box).collect())])
            }))
        }),
    );
}

fn arg(item: &Item, i: usize) -> Result<&Value, NodeError> {
    item.get(i)
        .ok_or_else(|| NodeError::new(format!("missing argument {i}")))
}

fn image(item: &Item, i: usize) -> Result<&ImageData, NodeError> {
    match arg(item, i)? {
        Value::Image(img) => Ok(img),
        other => Err(NodeError::new(format!(
            "expected Image, got {}",
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
                "expected Box, got {}",
                other.kind()
            ))),
        })
        .collect()
}

/// Decode PNG, JPEG or WebP bytes to RGB.
pub fn decode(bytes: &[u8]) -> Result<ImageData, NodeError> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| NodeError::new(format!("cannot decode image: {e}")))?;
    let rgb = img.to_rgb8();
    Ok(ImageData {
        width: rgb.width(),
        height: rgb.height(),
        rgb: rgb.into_raw(),
    })
}

/// An encoding format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
    Webp,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "png" => Ok(Format::Png),
            "jpeg" | "jpg" => Ok(Format::Jpeg),
            "webp" => Ok(Format::Webp),
            other => Err(format!(
                "unknown image format `{other}`; expected png, jpeg or webp"
            )),
        }
    }
}

fn buffer(img: &ImageData) -> Result<image::RgbImage, NodeError> {
    image::RgbImage::from_raw(img.width, img.height, img.rgb.clone()).ok_or_else(|| {
        NodeError::new(format!(
            "image of {}×{} has {} bytes, not {}",
            img.width,
            img.height,
            img.rgb.len(),
            img.width as usize * img.height as usize * 3
        ))
    })
}

/// Encode an image.
pub fn encode(img: &ImageData, format: Format) -> Result<Vec<u8>, NodeError> {
    let buf = buffer(img)?;
    let mut out = Cursor::new(Vec::new());
    let f = match format {
        Format::Png => image::ImageFormat::Png,
        Format::Jpeg => image::ImageFormat::Jpeg,
        Format::Webp => image::ImageFormat::WebP,
    };
    buf.write_to(&mut out, f)
        .map_err(|e| NodeError::new(format!("cannot encode image: {e}")))?;
    Ok(out.into_inner())
}

/// Resize (bilinear) to `w`×`h`.
pub fn resize(img: &ImageData, w: u32, h: u32) -> ImageData {
    match buffer(img) {
        Ok(buf) => {
            let r = image::imageops::resize(&buf, w, h, image::imageops::FilterType::Triangle);
            ImageData {
                width: w,
                height: h,
                rgb: r.into_raw(),
            }
        }
        // A malformed image has no pixels to sample: a blank one of the asked size.
        Err(_) => ImageData {
            width: w,
            height: h,
            rgb: vec![0; w as usize * h as usize * 3],
        },
    }
}

/// Pixel bounds of a box clamped to the image: `(x0, y0, x1, y1)`, exclusive ends.
fn clamp(img: &ImageData, b: &BoxData) -> (u32, u32, u32, u32) {
    let c = |v: f64, max: u32| -> u32 {
        if v.is_nan() {
            0
        } else {
            v.round().clamp(0.0, f64::from(max)) as u32
        }
    };
    (
        c(b.x, img.width),
        c(b.y, img.height),
        c(b.x + b.w, img.width),
        c(b.y + b.h, img.height),
    )
}

/// The part of `img` inside `b` (clamped to the image); an empty intersection is an error.
pub fn crop(img: &ImageData, b: &BoxData) -> Result<ImageData, NodeError> {
    let (x0, y0, x1, y1) = clamp(img, b);
    if x1 <= x0 || y1 <= y0 {
        return Err(NodeError::new(format!(
            "box (x {}, y {}, w {}, h {}) lies outside the {}×{} image",
            b.x, b.y, b.w, b.h, img.width, img.height
        )));
    }
    let (w, h) = (x1 - x0, y1 - y0);
    let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
    for y in y0..y1 {
        let start = (y as usize * img.width as usize + x0 as usize) * 3;
        rgb.extend_from_slice(img.rgb.get(start..start + w as usize * 3).unwrap_or(&[]));
    }
    rgb.resize(w as usize * h as usize * 3, 0);
    Ok(ImageData {
        width: w,
        height: h,
        rgb,
    })
}

/// The colour `draw_text` writes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ink {
    /// Black or white, whichever contrasts more with the box's mean luminance.
    Auto,
    Rgb([u8; 3]),
}

impl Ink {
    /// `auto` or `#rrggbb`.
    pub fn parse(s: &str) -> Result<Ink, String> {
        if s == "auto" {
            return Ok(Ink::Auto);
        }
        let hex = s
            .strip_prefix('#')
            .filter(|h| h.len() == 6 && h.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| format!("`{s}` is neither `auto` nor `#rrggbb`"))?;
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0);
        Ok(Ink::Rgb([byte(0), byte(2), byte(4)]))
    }
}

/// Mean luminance (0–255) of the pixels inside `(x0, y0, x1, y1)`.
fn mean_luminance(img: &ImageData, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> u64 {
    let mut sum = [0u64; 3];
    for y in y0..y1 {
        for x in x0..x1 {
            let p = (y as usize * img.width as usize + x as usize) * 3;
            for (s, &v) in sum.iter_mut().zip(&img.rgb[p..p + 3]) {
                *s += u64::from(v);
            }
        }
    }
    let count = u64::from((x1 - x0) * (y1 - y0)).max(1);
    (299 * sum[0] + 587 * sum[1] + 114 * sum[2]) / (1000 * count)
}

/// Render `text` into box `b` with `fonts` (see [`crate::font::fit`]): the largest size at
/// which it fits the box, wrapped at spaces (and between CJK characters) when that lets it
/// be larger, centred, clipped to the box. An empty text draws nothing.
pub fn draw_text(img: &mut ImageData, fonts: &Fonts, b: &BoxData, text: &str, ink: Ink) {
    let bounds = clamp(img, b);
    let (x0, y0, x1, y1) = bounds;
    if x1 <= x0 || y1 <= y0 || text.trim().is_empty() {
        return;
    }
    let ink = match ink {
        Ink::Rgb(c) => c,
        Ink::Auto if mean_luminance(img, bounds) > 127 => [0; 3],
        Ink::Auto => [255; 3],
    };
    let layout = crate::font::fit(fonts, text.trim(), (x1 - x0) as f32, (y1 - y0) as f32);
    crate::font::draw_layout(img, fonts, &layout, bounds, ink);
}

fn glyph(c: char) -> [u8; 8] {
    font8x8::BASIC_FONTS
        .get(c)
        .or_else(|| font8x8::LATIN_FONTS.get(c))
        .or_else(|| font8x8::BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

/// Render `text` into box `b` with the 8×8 bitmap font (for `marsc weights samples`): the
/// largest integer scale that fits the box (at least 1; text past the box's right edge is
/// cut), left-aligned, centred vertically, in black or white, whichever contrasts more with
/// the box's mean colour.
pub fn draw_bitmap_text(img: &mut ImageData, b: &BoxData, text: &str) {
    let (x0, y0, x1, y1) = clamp(img, b);
    if x1 <= x0 || y1 <= y0 {
        return;
    }
    let n = text.chars().count().max(1) as u32;
    let scale = ((y1 - y0) / 8).min((x1 - x0) / (8 * n)).max(1);
    let mut sum = [0u64; 3];
    for y in y0..y1 {
        for x in x0..x1 {
            let p = (y as usize * img.width as usize + x as usize) * 3;
            for (s, &v) in sum.iter_mut().zip(&img.rgb[p..p + 3]) {
                *s += u64::from(v);
            }
        }
    }
    let count = u64::from((x1 - x0) * (y1 - y0));
    let lum = (299 * sum[0] + 587 * sum[1] + 114 * sum[2]) / (1000 * count);
    let ink = if lum > 127 { 0u8 } else { 255u8 };
    let top = y0 + ((y1 - y0).saturating_sub(8 * scale)) / 2;
    for (ci, c) in text.chars().enumerate() {
        let g = glyph(c);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..8u32 {
                if bits >> col & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let x = x0 + (ci as u32 * 8 + col) * scale + dx;
                        let y = top + row as u32 * scale + dy;
                        if x < x1 && y < y1 {
                            let p = (y as usize * img.width as usize + x as usize) * 3;
                            img.rgb[p..p + 3].fill(ink);
                        }
                    }
                }
            }
        }
    }
}

/// Boxes around the 4-connected regions where `mask > threshold`, scaled from the mask's
/// `[1, H, W]` grid to the image's size, sorted top to bottom then left to right. Regions of
/// fewer than 4 mask cells are dropped as noise.
pub fn text_boxes(
    img: &ImageData,
    mask: &TensorData,
    threshold: f32,
) -> Result<Vec<BoxData>, NodeError> {
    let (h, w) = match mask.shape.as_slice() {
        [1, h, w] => (*h, *w),
        [h, w] => (*h, *w),
        s => {
            return Err(NodeError::new(format!(
                "mask has shape {s:?}; expected [1, H, W]"
            )))
        }
    };
    if mask.data.len() != h * w {
        return Err(NodeError::new(format!(
            "mask of shape {:?} has {} values",
            mask.shape,
            mask.data.len()
        )));
    }
    let mut seen = vec![false; h * w];
    let mut out = Vec::new();
    let (sx, sy) = (
        f64::from(img.width) / w.max(1) as f64,
        f64::from(img.height) / h.max(1) as f64,
    );
    for start in 0..h * w {
        if seen[start] || mask.data[start] <= threshold {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![start];
        let (mut minx, mut miny, mut maxx, mut maxy, mut cells) = (w, h, 0, 0, 0usize);
        while let Some(p) = stack.pop() {
            let (y, x) = (p / w, p % w);
            cells += 1;
            minx = minx.min(x);
            maxx = maxx.max(x);
            miny = miny.min(y);
            maxy = maxy.max(y);
            let mut push = |q: usize| {
                if !seen[q] && mask.data[q] > threshold {
                    seen[q] = true;
                    stack.push(q);
                }
            };
            if x > 0 {
                push(p - 1);
            }
            if x + 1 < w {
                push(p + 1);
            }
            if y > 0 {
                push(p - w);
            }
            if y + 1 < h {
                push(p + w);
            }
        }
        if cells >= 4 {
            out.push(BoxData {
                x: minx as f64 * sx,
                y: miny as f64 * sy,
                w: (maxx - minx + 1) as f64 * sx,
                h: (maxy - miny + 1) as f64 * sy,
            });
        }
    }
    out.sort_by(|a, b| a.y.total_cmp(&b.y).then(a.x.total_cmp(&b.x)));
    Ok(out)
}

/// A demo image: `lines` of text rendered in black on a light background of the given
/// colour, each line in its own box; returns the image and the text boxes.
pub fn render_sample(
    width: u32,
    height: u32,
    background: [u8; 3],
    lines: &[&str],
) -> (ImageData, Vec<BoxData>) {
    let mut img = ImageData {
        width,
        height,
        rgb: background
            .iter()
            .copied()
            .cycle()
            .take(width as usize * height as usize * 3)
            .collect(),
    };
    let mut bs = Vec::new();
    let line_h = 24.0;
    for (i, line) in lines.iter().enumerate() {
        let b = BoxData {
            x: 16.0,
            y: 16.0 + i as f64 * (line_h + 16.0),
            w: (line.chars().count() as f64 * 16.0).min(f64::from(width) - 32.0),
            h: line_h,
        };
        draw_bitmap_text(&mut img, &b, line);
        bs.push(b);
    }
    (img, bs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker(w: u32, h: u32) -> ImageData {
        let mut rgb = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let v = if (x + y) % 2 == 0 { 200 } else { 30 };
                rgb.extend_from_slice(&[v, (x * 10) as u8, (y * 10) as u8]);
            }
        }
        ImageData {
            width: w,
            height: h,
            rgb,
        }
    }

    #[test]
    fn png_and_webp_round_trip_exactly_jpeg_decodes() {
        let img = checker(7, 5);
        for f in [Format::Png, Format::Webp] {
            assert_eq!(
                decode(&encode(&img, f).expect("encodes")).expect("decodes"),
                img,
                "{f:?}"
            );
        }
        let j = decode(&encode(&img, Format::Jpeg).expect("encodes")).expect("decodes");
        assert_eq!((j.width, j.height), (7, 5));
    }

    #[test]
    fn corrupt_bytes_are_an_error_with_a_reason() {
        let e = decode(b"\x89PNG\r\n\x1a\nnot really").expect_err("corrupt");
        assert!(
            e.message.starts_with("cannot decode image"),
            "{}",
            e.message
        );
    }

    #[test]
    fn crop_clamps_and_rejects_outside_boxes() {
        let img = checker(10, 10);
        let c = crop(
            &img,
            &BoxData {
                x: 8.0,
                y: 1.0,
                w: 5.0,
                h: 2.0,
            },
        )
        .expect("inside");
        assert_eq!((c.width, c.height), (2, 2));
        assert_eq!(&c.rgb[0..3], &img.rgb[(10 + 8) * 3..(10 + 8) * 3 + 3]);
        assert!(crop(
            &img,
            &BoxData {
                x: 20.0,
                y: 0.0,
                w: 5.0,
                h: 5.0
            }
        )
        .is_err());
    }

    #[test]
    fn bitmap_text_inks_inside_the_box_only() {
        let mut img = ImageData {
            width: 40,
            height: 20,
            rgb: vec![255; 40 * 20 * 3],
        };
        let b = BoxData {
            x: 4.0,
            y: 2.0,
            w: 30.0,
            h: 16.0,
        };
        draw_bitmap_text(&mut img, &b, "Ab");
        let dark: Vec<(u32, u32)> = (0..20u32)
            .flat_map(|y| (0..40u32).map(move |x| (x, y)))
            .filter(|&(x, y)| img.rgb[((y * 40 + x) * 3) as usize] == 0)
            .collect();
        assert!(dark.len() > 20, "{}", dark.len());
        assert!(dark
            .iter()
            .all(|&(x, y)| (4..34).contains(&x) && (2..18).contains(&y)));
    }

    #[test]
    fn text_boxes_finds_regions_in_image_coordinates() {
        let img = ImageData {
            width: 20,
            height: 10,
            rgb: vec![0; 600],
        };
        let mut data = vec![0.0f32; 5 * 10];
        for &(y, x) in &[
            (1, 1),
            (1, 2),
            (2, 1),
            (2, 2),
            (4, 8),
            (3, 6),
            (3, 7),
            (3, 8),
            (4, 7),
        ] {
            data[y * 10 + x] = 1.0;
        }
        data[0] = 1.0; // a single cell: noise
        let mask = TensorData {
            dtype: "f32".into(),
            shape: vec![1, 5, 10],
            data,
        };
        let bs = text_boxes(&img, &mask, 0.5).expect("boxes");
        assert_eq!(
            bs,
            vec![
                BoxData {
                    x: 2.0,
                    y: 2.0,
                    w: 4.0,
                    h: 4.0
                },
                BoxData {
                    x: 12.0,
                    y: 6.0,
                    w: 6.0,
                    h: 4.0
                }
            ]
        );
        let bad = TensorData {
            dtype: "f32".into(),
            shape: vec![2, 2, 2],
            data: vec![0.0; 8],
        };
        assert!(text_boxes(&img, &bad, 0.5).is_err());
    }
}
