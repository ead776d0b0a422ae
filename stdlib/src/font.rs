//! TrueType/OpenType text for images: finding a font file by name, laying a text out in a box
//! (the largest size at which it fits, wrapped at spaces or between CJK characters) and
//! drawing it with anti-aliasing, on `ab_glyph`.
//!
//! Fonts come from packages, not from the repository: a name such as `DejaVuSans.ttf`
//! (Debian `fonts-dejavu-core`) or `wqy-microhei.ttc` (`fonts-wqy-microhei`) is looked up in
//! the folders of `$MARS_FONTS` (colon-separated), then under `/usr/share/fonts` and
//! `/usr/local/share/fonts`; a name with a `/` is a path. A font list (`"DejaVuSans.ttf,
//! wqy-microhei.ttc"`) draws each character with the first font that has it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ab_glyph::{point, Font, FontVec, GlyphId, PxScale, ScaleFont};
use mars_runtime::ImageData;

/// A loaded font list, first font first.
#[derive(Clone)]
pub struct Fonts {
    fonts: Vec<Arc<FontVec>>,
    /// The names as given, for errors and reports.
    pub names: Vec<String>,
}

fn font_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("MARS_FONTS")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.push("/usr/share/fonts".into());
    dirs.push("/usr/local/share/fonts".into());
    dirs
}

fn find_in(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let direct = dir.join(name);
    if direct.is_file() {
        return Some(direct);
    }
    if depth == 0 {
        return None;
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    subdirs.iter().find_map(|d| find_in(d, name, depth - 1))
}

/// The file of font `name` (see the module documentation).
pub fn find_font(name: &str, base: &Path) -> Result<PathBuf, String> {
    if name.contains('/') {
        let p = base.join(name);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("font file `{}` does not exist", p.display()))
        };
    }
    let dirs = font_dirs();
    dirs.iter()
        .find_map(|d| find_in(d, name, 4))
        .ok_or_else(|| {
            let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            format!(
                "font `{name}` was not found in {}; install the package that has it (Debian \
             `fonts-dejavu-core` for DejaVuSans.ttf, `fonts-wqy-microhei` for \
             wqy-microhei.ttc) or add its folder to MARS_FONTS",
                shown.join(", ")
            )
        })
}

fn cache() -> &'static Mutex<HashMap<PathBuf, Arc<FontVec>>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<FontVec>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Load one font file (the first face of a collection); loaded files are shared.
pub fn load_font(path: &Path) -> Result<Arc<FontVec>, String> {
    if let Some(f) = cache().lock().ok().and_then(|c| c.get(path).cloned()) {
        return Ok(f);
    }
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read font `{}`: {e}", path.display()))?;
    let font = FontVec::try_from_vec_and_index(bytes, 0)
        .map_err(|e| format!("`{}` is not a font: {e}", path.display()))?;
    let font = Arc::new(font);
    if let Ok(mut c) = cache().lock() {
        c.insert(path.to_path_buf(), font.clone());
    }
    Ok(font)
}

impl Fonts {
    /// Load a comma-separated font list.
    pub fn load(list: &str, base: &Path) -> Result<Fonts, String> {
        let names: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        if names.is_empty() {
            return Err("the font list is empty".into());
        }
        let fonts = names
            .iter()
            .map(|n| find_font(n, base).and_then(|p| load_font(&p)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Fonts { fonts, names })
    }

    /// The font (index) and glyph that draw `c`: the first font that has it, else the first
    /// font's `.notdef`.
    fn glyph(&self, c: char) -> (usize, GlyphId) {
        for (i, f) in self.fonts.iter().enumerate() {
            let id = f.glyph_id(c);
            if id.0 != 0 {
                return (i, id);
            }
        }
        (0, self.fonts[0].glyph_id(c))
    }

    /// Width in pixels of `text` at pixel height `size`.
    pub fn width(&self, text: &str, size: f32) -> f32 {
        let scale = PxScale::from(size);
        let mut w = 0.0;
        let mut prev: Option<(usize, GlyphId)> = None;
        for c in text.chars() {
            let (fi, id) = self.glyph(c);
            let f = self.fonts[fi].as_scaled(scale);
            if let Some((pf, pid)) = prev {
                if pf == fi {
                    w += f.kern(pid, id);
                }
            }
            w += f.h_advance(id);
            prev = Some((fi, id));
        }
        w
    }

    /// Ascent of the first font at `size` (the baseline's distance below a line's top).
    pub fn ascent(&self, size: f32) -> f32 {
        self.metrics(size).0
    }

    /// Ascent and descent (negative) of the first font at `size`.
    fn metrics(&self, size: f32) -> (f32, f32) {
        let f = self.fonts[0].as_scaled(PxScale::from(size));
        (f.ascent(), f.descent())
    }

    /// Draw one line with its baseline at `y`, starting at `x`, blending `ink` by coverage;
    /// pixels outside `clip` (x0, y0, x1, y1; exclusive ends) are left alone.
    pub fn draw_line(
        &self,
        img: &mut ImageData,
        text: &str,
        size: f32,
        x: f32,
        y: f32,
        ink: [u8; 3],
        clip: (u32, u32, u32, u32),
    ) {
        let scale = PxScale::from(size);
        let mut pen = x;
        let mut prev: Option<(usize, GlyphId)> = None;
        let (cx0, cy0, cx1, cy1) = clip;
        let (w, h) = (img.width, img.height);
        for c in text.chars() {
            let (fi, id) = self.glyph(c);
            let font = &self.fonts[fi];
            let f = font.as_scaled(scale);
            if let Some((pf, pid)) = prev {
                if pf == fi {
                    pen += f.kern(pid, id);
                }
            }
            let glyph = id.with_scale_and_position(scale, point(pen, y));
            pen += f.h_advance(id);
            prev = Some((fi, id));
            let Some(outline) = font.outline_glyph(glyph) else {
                continue;
            };
            let b = outline.px_bounds();
            outline.draw(|gx, gy, cov| {
                let px = b.min.x as i64 + i64::from(gx);
                let py = b.min.y as i64 + i64::from(gy);
                if px < i64::from(cx0.max(0))
                    || py < i64::from(cy0)
                    || px >= i64::from(cx1.min(w))
                    || py >= i64::from(cy1.min(h))
                {
                    return;
                }
                let p = (py as usize * w as usize + px as usize) * 3;
                let a = cov.clamp(0.0, 1.0);
                for (k, &v) in ink.iter().enumerate() {
                    let old = f32::from(img.rgb[p + k]);
                    img.rgb[p + k] = (old + (f32::from(v) - old) * a).round() as u8;
                }
            });
        }
    }
}

/// Is `c` a character a line may break after without a space (CJK ideographs, kana,
/// fullwidth forms and CJK punctuation)?
fn breaks_anywhere(c: char) -> bool {
    matches!(c as u32, 0x3000..=0x303F | 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF)
}

/// Break `text` into lines no wider than `width` at `size`: at spaces, and between CJK
/// characters. `None` when one unbreakable piece is wider than `width`.
pub fn wrap(fonts: &Fonts, text: &str, size: f32, width: f32) -> Option<Vec<String>> {
    // Pieces: words (with the space before them kept apart) and single CJK characters.
    let mut pieces: Vec<String> = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c == ' ' {
            if !cur.is_empty() {
                pieces.push(std::mem::take(&mut cur));
            }
            pieces.push(" ".into());
        } else if breaks_anywhere(c) {
            if !cur.is_empty() {
                pieces.push(std::mem::take(&mut cur));
            }
            pieces.push(c.to_string());
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        pieces.push(cur);
    }
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for p in pieces {
        if p == " " && line.is_empty() {
            continue;
        }
        let candidate = format!("{line}{p}");
        if fonts.width(candidate.trim_end(), size) <= width {
            line = candidate;
        } else if p == " " {
            lines.push(std::mem::take(&mut line).trim_end().to_string());
        } else {
            if !line.trim().is_empty() {
                lines.push(std::mem::take(&mut line).trim_end().to_string());
            }
            if fonts.width(&p, size) > width {
                return None;
            }
            line = p;
        }
    }
    if !line.trim().is_empty() {
        lines.push(line.trim_end().to_string());
    }
    Some(lines)
}

/// A text laid out in a box: its size and lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub size: f32,
    pub lines: Vec<String>,
}

/// The smallest size [`fit`] tries; a text that does not fit at it is drawn at it, clipped.
pub const MIN_SIZE: f32 = 6.0;

/// The largest size (in steps of half a pixel, at most the box's height) at which `text`
/// wrapped to `width` fits `height` with a line spacing of 1.15 sizes.
pub fn fit(fonts: &Fonts, text: &str, width: f32, height: f32) -> Layout {
    let fits = |size: f32| -> Option<Vec<String>> {
        let lines = wrap(fonts, text, size, width)?;
        let n = lines.len().max(1) as f32;
        let (a, d) = fonts.metrics(size);
        let one = a - d;
        let total = one + (n - 1.0) * size * 1.15;
        (total <= height).then_some(lines)
    };
    let (mut lo, mut hi) = (MIN_SIZE, height.max(MIN_SIZE));
    let mut best = fits(lo).map(|l| Layout { size: lo, lines: l });
    if best.is_none() {
        return Layout {
            size: MIN_SIZE,
            lines: vec![text.to_string()],
        };
    }
    while hi - lo > 0.5 {
        let mid = (lo + hi) / 2.0;
        match fits(mid) {
            Some(l) => {
                best = Some(Layout {
                    size: mid,
                    lines: l,
                });
                lo = mid;
            }
            None => hi = mid,
        }
    }
    best.expect("the smallest size fits")
}

/// Draw `layout` in the box `(x0, y0, x1, y1)`: lines centred horizontally, the block
/// centred vertically, clipped to the box.
pub fn draw_layout(
    img: &mut ImageData,
    fonts: &Fonts,
    layout: &Layout,
    bounds: (u32, u32, u32, u32),
    ink: [u8; 3],
) {
    let (x0, y0, x1, y1) = bounds;
    let (a, d) = fonts.metrics(layout.size);
    let n = layout.lines.len().max(1) as f32;
    let block = (a - d) + (n - 1.0) * layout.size * 1.15;
    let top = y0 as f32 + ((y1 - y0) as f32 - block).max(0.0) / 2.0;
    for (i, line) in layout.lines.iter().enumerate() {
        let w = fonts.width(line, layout.size);
        let x = x0 as f32 + ((x1 - x0) as f32 - w).max(0.0) / 2.0;
        let baseline = top + a + i as f32 * layout.size * 1.15;
        fonts.draw_line(img, line, layout.size, x, baseline, ink, bounds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dejavu() -> Fonts {
        Fonts::load("DejaVuSans.ttf", Path::new("."))
            .expect("DejaVuSans.ttf (Debian fonts-dejavu-core) must be installed for these tests")
    }

    #[test]
    fn a_missing_font_names_the_package() {
        let e = Fonts::load("NoSuchFont.ttf", Path::new("."))
            .err()
            .expect("missing");
        assert!(
            e.contains("NoSuchFont.ttf") && e.contains("fonts-dejavu-core"),
            "{e}"
        );
    }

    #[test]
    fn wrapping_breaks_at_spaces_and_between_cjk_characters() {
        let f = dejavu();
        let one = f.width("cotton", 20.0);
        assert!(one > 20.0);
        let lines = wrap(&f, "pure cotton shirt", 20.0, one * 1.5).expect("fits");
        assert_eq!(lines, vec!["pure", "cotton", "shirt"]);
        assert_eq!(
            wrap(&f, "pure cotton shirt", 20.0, 1000.0)
                .expect("fits")
                .len(),
            1
        );
        assert!(wrap(&f, "unbreakable", 20.0, 10.0).is_none());
    }

    #[test]
    fn fit_picks_the_largest_size_that_fits() {
        let f = dejavu();
        let l = fit(&f, "Hello world", 400.0, 30.0);
        assert_eq!(l.lines, vec!["Hello world"]);
        assert!(l.size > 20.0 && l.size <= 30.0, "{}", l.size);
        // A narrow, tall box wraps instead of shrinking.
        let l2 = fit(&f, "Hello world", 70.0, 80.0);
        assert_eq!(l2.lines.len(), 2, "{l2:?}");
        let mut img = ImageData {
            width: 100,
            height: 40,
            rgb: vec![255; 100 * 40 * 3],
        };
        draw_layout(&mut img, &f, &l, (10, 5, 90, 35), [0, 0, 0]);
        let dark = (0..100 * 40)
            .filter(|&p| img.rgb[p * 3] < 128)
            .map(|p| (p % 100, p / 100))
            .collect::<Vec<_>>();
        assert!(dark.len() > 50);
        assert!(dark
            .iter()
            .all(|&(x, y)| (10..90).contains(&x) && (5..35).contains(&y)));
    }
}
