#!/bin/sh
# tests/fuzz/run-fuzz.sh SECONDS BIN... — run each libFuzzer target for SECONDS on a scratch copy of its seed
# corpus (tests/fuzz/corpus/<name>/ is read, new units go to build-fuzz/corpus/<name>/, crashes to
# build-fuzz/artifacts/). Exits non-zero on the first target that finds a crash, leak or timeout.
set -eu
secs=$1; shift
out=${FUZZ_OUT:-build-fuzz}
mkdir -p "$out/artifacts"
# third-party leaks only, each explained in the file
export LSAN_OPTIONS="suppressions=$(pwd)/tests/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
for bin in "$@"; do
  name=$(basename "$bin")
  t=${name#fuzz_}
  mkdir -p "$out/corpus/$t"
  seeds=tests/fuzz/corpus/$t
  [ -d "$seeds" ] || seeds=
  echo "== $name: ${secs}s"
  "$bin" "$out/corpus/$t" $seeds -max_total_time="$secs" -timeout=30 -rss_limit_mb=2560 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$out/artifacts/$t-" 2>"$out/$t.log" \
    || { tail -n 60 "$out/$t.log"; echo "FAIL $name (log: $out/$t.log)"; exit 1; }
  grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$out/$t.log" | tail -n 2
done
