//! `transformer_lm` forward cost on the committed tiny translator: prefill of a batch of
//! prompts, and one decode step of a batch of running sequences, at batch 1, 8 and 32.
//! Run: `cargo bench -p mars-stdlib --bench transformer_lm`.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mars_stdlib::models::linear::Quantize;
use mars_stdlib::models::transformer_lm::prompt_tokens;
use mars_stdlib::models::{load_lm, numbers};

fn bench(c: &mut Criterion) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pipelines/weights/mt.safetensors");
    for (q, name) in [(Quantize::None, "f32"), (Quantize::Int8, "int8")] {
        let (model, tok, _) = match load_lm(&path, q) {
            Ok(m) => m,
            Err(e) => panic!("load {}: {e}", path.display()),
        };
        let mut group = c.benchmark_group(format!("transformer_lm/{name}"));
        for b in [1usize, 8, 32] {
            // Long prompts (6-digit numbers: 8–10 words) so the work per step is realistic.
            let prompts: Vec<Vec<u32>> = (0..b)
                .map(|i| prompt_tokens(&tok, &numbers::english(737_373 + i as u32 * 1_111)))
                .collect();
            group.bench_with_input(BenchmarkId::new("prefill", b), &prompts, |bench, p| {
                bench.iter(|| model.prefill(p).expect("prefill"));
            });
            let seqs = model.prefill(&prompts).expect("prefill");
            let next: Vec<u32> = vec![tok.encode("sept")[0]; b];
            group.bench_with_input(BenchmarkId::new("decode_step", b), &seqs, |bench, seqs| {
                bench.iter_batched(
                    || seqs.clone(),
                    |mut s| {
                        let mut refs: Vec<_> = s.iter_mut().collect();
                        model.decode_step(&mut refs, &next).expect("step");
                        s
                    },
                    criterion::BatchSize::SmallInput,
                );
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
