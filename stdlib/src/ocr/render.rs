//! Images with known text, drawn by the project's own code with fonts from Debian packages:
//! the OCR tests, the accuracy benchmark and the product-image samples read them.
//!
//! Everything is deterministic in its seed. The fonts are looked up by file name (see
//! [`crate::font`]); [`LATIN_FONTS`] come from `fonts-dejavu-core`, [`CJK_FONTS`] from
//! `fonts-wqy-microhei`, `fonts-wqy-zenhei` and `fonts-arphic-uming`.

use std::path::Path;

use mars_runtime::{BoxData, ImageData};

use crate::font::Fonts;
use crate::models::transformer_lm::SplitMix;

/// Fonts for English lines.
pub const LATIN_FONTS: &[&str] = &[
    "DejaVuSans.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSansMono.ttf",
];

/// Fonts for Chinese lines (they draw Latin letters and digits too).
pub const CJK_FONTS: &[&str] = &["wqy-microhei.ttc", "wqy-zenhei.ttc", "uming.ttc"];

/// Chinese product-image phrases.
pub const CHINESE_LINES: &[&str] = &[
    "纯棉短袖T恤",
    "限时特价",
    "买一送一",
    "新品上市",
    "全场包邮",
    "夏季新款连衣裙",
    "天然有机绿茶",
    "无线蓝牙耳机",
    "大容量保温杯",
    "进口牛奶",
    "儿童运动鞋",
    "不锈钢炒锅",
    "手工香皂",
    "防水登山背包",
    "智能手表",
    "正品保证",
    "七天无理由退货",
    "每日坚果",
    "高清摄像头",
    "家用电饭煲",
    "原价199元",
    "现价99元",
    "满300减50",
    "好评如潮",
    "厂家直销",
    "舒适透气",
    "新鲜水果",
    "环保材料",
    "简约时尚",
    "送礼佳品",
];

/// English product-image phrases.
pub const ENGLISH_LINES: &[&str] = &[
    "Cotton T-shirt",
    "Limited offer",
    "Buy one get one free",
    "New arrival",
    "Free shipping",
    "Summer dress",
    "Organic green tea",
    "Wireless earbuds",
    "Stainless steel pan",
    "Only 99 dollars",
    "Save 30 percent",
    "Waterproof backpack",
    "Smart watch",
    "Quality guaranteed",
    "Fresh fruit",
    "Kids running shoes",
    "Handmade soap",
    "Rice cooker 5L",
    "HD camera 1080p",
    "Best seller 2024",
];

/// One line of text to draw: with which fonts, how large (pixel height), in which colour,
/// with its top-left corner where.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub text: String,
    pub font: String,
    pub size: f32,
    pub color: [u8; 3],
    pub x: f32,
    pub y: f32,
}

/// An image to draw: a background (a vertical gradient between two colours) and lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub top: [u8; 3],
    pub bottom: [u8; 3],
    pub lines: Vec<Line>,
}

/// Draw a scene; returns the image and each line's box (its advance width × its size).
pub fn render(scene: &Scene, base: &Path) -> Result<(ImageData, Vec<BoxData>), String> {
    let (w, h) = (scene.width, scene.height);
    let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h {
        let t = if h > 1 {
            y as f32 / (h - 1) as f32
        } else {
            0.0
        };
        let c: Vec<u8> = (0..3)
            .map(|k| {
                (f32::from(scene.top[k]) * (1.0 - t) + f32::from(scene.bottom[k]) * t).round() as u8
            })
            .collect();
        for _ in 0..w {
            rgb.extend_from_slice(&c);
        }
    }
    let mut img = ImageData {
        width: w,
        height: h,
        rgb,
    };
    let mut boxes = Vec::new();
    for line in &scene.lines {
        let fonts = Fonts::load(&line.font, base)?;
        let lw = fonts.width(&line.text, line.size);
        let ascent = fonts.ascent(line.size);
        fonts.draw_line(
            &mut img,
            &line.text,
            line.size,
            line.x,
            line.y + ascent,
            line.color,
            (0, 0, w, h),
        );
        boxes.push(BoxData {
            x: f64::from(line.x),
            y: f64::from(line.y),
            w: f64::from(lw),
            h: f64::from(line.size),
        });
    }
    Ok((img, boxes))
}

fn pick<'a>(rng: &mut SplitMix, list: &[&'a str]) -> &'a str {
    list[(rng.next_u64() % list.len() as u64) as usize]
}

fn range(rng: &mut SplitMix, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.next_f64()
}

/// A light background pair and a dark ink, or the reverse (one image in four).
fn colours(rng: &mut SplitMix) -> ([u8; 3], [u8; 3], [u8; 3]) {
    let light = |rng: &mut SplitMix| [0, 1, 2].map(|_| range(rng, 190.0, 255.0) as u8);
    let dark = |rng: &mut SplitMix| [0, 1, 2].map(|_| range(rng, 0.0, 70.0) as u8);
    if rng.next_u64() % 4 == 0 {
        (dark(rng), dark(rng), light(rng))
    } else {
        (light(rng), light(rng), dark(rng))
    }
}

/// The `index`-th image of the OCR accuracy set for `seed`: one to three lines, each English
/// (a Latin font) or Chinese (a CJK font) at 18–44 px, on a gradient, at least 12 px apart.
/// Returns the scene and its lines' texts, top to bottom.
pub fn accuracy_scene(seed: u64, index: u64) -> Scene {
    accuracy_scene_in(seed, index, LATIN_FONTS, CJK_FONTS)
}

/// [`accuracy_scene`] with its fonts drawn from `latin` and `cjk` instead (the same texts,
/// sizes and places: only the font choices differ).
pub fn accuracy_scene_in(seed: u64, index: u64, latin: &[&str], cjk: &[&str]) -> Scene {
    let mut rng = SplitMix(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (top, bottom, ink) = colours(&mut rng);
    let n = 1 + (rng.next_u64() % 3) as usize;
    let mut lines = Vec::new();
    let mut y = range(&mut rng, 14.0, 30.0) as f32;
    for _ in 0..n {
        let chinese = rng.next_u64() % 2 == 0;
        let (text, font) = if chinese {
            (pick(&mut rng, CHINESE_LINES), pick(&mut rng, cjk))
        } else {
            let f = if rng.next_u64() % 4 == 0 {
                pick(&mut rng, cjk)
            } else {
                pick(&mut rng, latin)
            };
            (pick(&mut rng, ENGLISH_LINES), f)
        };
        let size = range(&mut rng, 18.0, 44.0).round() as f32;
        let x = range(&mut rng, 12.0, 40.0) as f32;
        lines.push(Line {
            text: text.to_string(),
            font: font.to_string(),
            size,
            color: ink,
            x,
            y,
        });
        y += size + range(&mut rng, 12.0, 28.0) as f32;
    }
    Scene {
        width: 640,
        height: (y + range(&mut rng, 10.0, 24.0) as f32).ceil() as u32,
        top,
        bottom,
        lines,
    }
}

/// A Chinese product image: a coloured banner with a headline, a body of two or three
/// phrases, and a price tag; deterministic in `index`.
pub fn product_scene(index: u64) -> Scene {
    let mut rng = SplitMix(0x5EED_0000 + index);
    let (top, bottom, ink) = colours(&mut rng);
    let mut lines = Vec::new();
    let font = pick(&mut rng, CJK_FONTS);
    let mut y = 28.0f32;
    let n = 3 + (rng.next_u64() % 2) as usize;
    for k in 0..n {
        let size = if k == 0 {
            40.0
        } else {
            range(&mut rng, 26.0, 32.0).round() as f32
        };
        let text =
            CHINESE_LINES[((index * 7 + k as u64 * 11) % CHINESE_LINES.len() as u64) as usize];
        lines.push(Line {
            text: text.to_string(),
            font: font.to_string(),
            size,
            color: ink,
            x: 36.0,
            y,
        });
        y += size + 26.0;
    }
    Scene {
        width: 480,
        height: (y + 20.0).ceil() as u32,
        top,
        bottom,
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_deterministic_and_draw_ink_in_their_boxes() {
        assert_eq!(accuracy_scene(1, 5), accuracy_scene(1, 5));
        assert_ne!(accuracy_scene(1, 5), accuracy_scene(1, 6));
        let s = Scene {
            width: 200,
            height: 60,
            top: [255; 3],
            bottom: [255; 3],
            lines: vec![Line {
                text: "Ab 中".into(),
                font: "DejaVuSans.ttf, wqy-microhei.ttc".into(),
                size: 30.0,
                color: [0; 3],
                x: 10.0,
                y: 10.0,
            }],
        };
        let (img, boxes) = render(&s, Path::new("."))
            .expect("renders (needs Debian fonts-dejavu-core and fonts-wqy-microhei)");
        let b = boxes[0];
        assert!(b.w > 40.0 && b.h == 30.0);
        let mut inside = 0;
        for y in 0..60u32 {
            for x in 0..200u32 {
                if img.rgb[((y * 200 + x) * 3) as usize] < 128 {
                    let within = f64::from(x) >= b.x - 1.0
                        && f64::from(x) <= b.x + b.w + 1.0
                        && f64::from(y) >= b.y - 1.0
                        && f64::from(y) <= b.y + b.h + 1.0;
                    assert!(within, "ink at ({x}, {y}) outside {b:?}");
                    inside += 1;
                }
            }
        }
        assert!(inside > 100, "{inside}");
    }
}
