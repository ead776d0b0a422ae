//! The Mars standard library: the `.mars` declarations of the standard nodes (the compiler
//! reads them like user code) and their Rust implementations, registered into a
//! [`mars_runtime::Registry`].

pub mod bench;
pub mod bench_shift;
pub mod declarations;
pub mod font;
pub mod image;
pub mod json;
pub mod list;
pub mod models;
pub mod ocr;
pub mod params;
pub mod store;
pub mod text;
pub mod vector;

use mars_runtime::Registry;

/// A registry with every standard node implementation.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    bench::register(&mut r);
    image::register(&mut r);
    json::register(&mut r);
    list::register(&mut r);
    text::register(&mut r);
    models::register(&mut r);
    vector::register(&mut r);
    ocr::register(&mut r);
    r
}
