//! One module per `marsc` command. Each exposes `Args` (clap) and `run(Args)`.

pub mod bench;
pub mod bench_compress;
pub mod bench_elastic;
pub mod bench_llm;
pub mod bench_llm_kv;
pub mod bench_ocr;
pub mod bench_priority;
pub mod bench_serve;
pub mod bench_translate;
pub mod check;
pub mod compile;
pub mod demo;
pub mod deploy;
pub mod deployment;
pub mod file_io;
pub mod fmt;
pub mod graph;
pub mod models;
pub mod plan;
pub mod profile;
pub mod run;
pub mod serve;
pub mod target;
pub mod train_demo;
pub mod weights;
pub mod worker;
