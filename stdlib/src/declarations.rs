//! The stdlib's `.mars` declarations, embedded so `marsc` can hand them to the compiler.

/// `(path, source)` of every stdlib declaration file.
pub const DECLARATIONS: &[(&str, &str)] = &[];
