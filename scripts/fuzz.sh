#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 30), one after another, starting from
# the checked-in seed corpus (fuzz/corpus/<target>/); fails on the first crash, leak, timeout or
# out-of-memory (the input is left in fuzz/artifacts/<target>/). Prints each target's executions.
#
# libFuzzer needs unstable compiler flags: with no nightly toolchain here, the stable compiler
# takes them with RUSTC_BOOTSTRAP=1. FUZZ_SANITIZER=none|address (default address: the stable
# toolchain ships the ASan runtime); `none` runs about twice as fast. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-30}"
sanitizer="${FUZZ_SANITIZER:-address}"
targets=(tcp_frame ws_frame http_upgrade chat_frame session inflate jwt)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
# Its own target directory unless the caller chose one: the fuzz build's flags differ.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

cargo fuzz build -O --sanitizer "$sanitizer"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
summary=()
for target in "${targets[@]}"; do
  mkdir -p "$work/$target" "artifacts/$target"
  log="$work/$target.log"
  echo "== $target: ${seconds}s"
  # New inputs go to a scratch corpus; the checked-in seeds are read only.
  if ! cargo fuzz run -O --sanitizer "$sanitizer" "$target" "$work/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "FAILED: $target (input in fuzz/artifacts/$target/)"
    exit 1
  fi
  runs="$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || echo '?')"
  last="$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)"
  echo "$target: $runs executions; $last"
  summary+=("$target: $runs executions")
done
echo "== all targets passed"
printf '%s\n' "${summary[@]}"
