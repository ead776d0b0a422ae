#!/usr/bin/env bash
# Fuzz Mars's parsers for a bounded time: `fuzz/run.sh [SECONDS_PER_TARGET] [TARGET…]`
# (default 60 s each, all three targets). Needs `cargo install cargo-fuzz`; on a stable
# toolchain, RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the nightly sanitizer flags. New inputs
# that raise coverage are added to fuzz/corpus/TARGET; crashes land in fuzz/artifacts/TARGET.
# Not part of CI: run it by hand, niced, when the machine is free.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(check_source load_plan decode_request)
fi
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"
# No AddressSanitizer by default (safe Rust; panics, hangs and OOMs are what is looked for):
# SANITIZER=address fuzz/run.sh for the slower, stricter build.
sanitizer="${SANITIZER:-none}"
# A target that finds a crash stops there (its input is in fuzz/artifacts/TARGET); the other
# targets still run, and the script exits non-zero at the end.
failed=()
for t in "${targets[@]}"; do
  echo "== $t: ${secs}s"
  nice -n 19 cargo fuzz run -s "$sanitizer" "$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -timeout=10 -print_final_stats=1 \
    || failed+=("$t")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
