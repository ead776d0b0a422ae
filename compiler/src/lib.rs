//! The Mars compiler: `.mars` source → AST → checked IR → plan. Pure and deterministic: it
//! takes text and returns results plus problems; only `marsc` touches files.

pub mod ir;
pub mod plan;
