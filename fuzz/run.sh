#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (SECONDS each, default 60) from
# the committed seeds. Needs nightly Rust and cargo-fuzz
# (`cargo install cargo-fuzz`). Findings land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in path cookies record config idp_answers id_tokens request_head; do
  mkdir -p "corpus/$target"
  echo "== $target ($seconds s)"
  cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -max_len=12288
done
