//! `std.text` implementations.

use mars_runtime::Registry;

/// Register this module's nodes.
pub fn register(_registry: &mut Registry) {}
