#!/bin/sh
# tests/fuzz/run-fuzz.sh SECONDS BIN... — run each libFuzzer target for SECONDS on a scratch copy of its seed
# corpus (tests/fuzz/corpus/<name>/ is read, new units go to build-fuzz/corpus/<name>/, crashes to
# build-fuzz/artifacts/). FUZZ_JOBS targets run at a time (default 1; CI uses one per core so every target gets its
# full time within the CI budget). Exits non-zero if any target finds a crash, leak or timeout (its log is printed).
set -eu
secs=$1; shift
out=${FUZZ_OUT:-build-fuzz}
jobs=${FUZZ_JOBS:-1}
mkdir -p "$out/artifacts"
# third-party leaks only, each explained in the file
export LSAN_OPTIONS="suppressions=$(pwd)/tests/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

run_one() {
  bin=$1
  name=$(basename "$bin")
  t=${name#fuzz_}
  mkdir -p "$out/corpus/$t"
  seeds=tests/fuzz/corpus/$t
  [ -d "$seeds" ] || seeds=
  if "$bin" "$out/corpus/$t" $seeds -max_total_time="$secs" -timeout=30 -rss_limit_mb=2560 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$out/artifacts/$t-" 2>"$out/$t.log"; then
    echo "== $name: ${secs}s $(grep -E '^stat::number_of_executed_units' "$out/$t.log" | tail -n 1)"
  else
    tail -n 60 "$out/$t.log"
    echo "FAIL $name (log: $out/$t.log)"
    return 1
  fi
}

fail=0
running=0
pids=
for bin in "$@"; do
  run_one "$bin" &
  pids="$pids $!"
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    for p in $pids; do wait "$p" || fail=1; done
    pids=
    running=0
  fi
done
for p in $pids; do wait "$p" || fail=1; done
exit "$fail"
