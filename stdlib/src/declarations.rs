//! The stdlib's `.mars` declarations, embedded so `marsc` can hand them to the compiler.
//! A file `std/image.mars` declares the module `std.image`.

/// `(path, source)` of every stdlib declaration file.
pub const DECLARATIONS: &[(&str, &str)] = &[
    ("std/bench.mars", include_str!("../mars/std/bench.mars")),
    ("std/image.mars", include_str!("../mars/std/image.mars")),
    ("std/json.mars", include_str!("../mars/std/json.mars")),
    ("std/list.mars", include_str!("../mars/std/list.mars")),
    ("std/llm.mars", include_str!("../mars/std/llm.mars")),
    ("std/models.mars", include_str!("../mars/std/models.mars")),
    ("std/ocr.mars", include_str!("../mars/std/ocr.mars")),
    ("std/text.mars", include_str!("../mars/std/text.mars")),
    ("std/vector.mars", include_str!("../mars/std/vector.mars")),
];
