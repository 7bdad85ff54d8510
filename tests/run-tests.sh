#!/usr/bin/env bash
# Runs each Criterion test binary (Criterion forks every test and enforces its timeout),
# prints one line per binary and a summary; exits non-zero if any binary failed.
set -u
pass=0; fail=0; failed=()
for t in "$@"; do
  name=$(basename "$t")
  start=$(date +%s.%N)
  out=$("$t" --timeout "${NQ_TEST_TIMEOUT:-300}" -j"${NQ_TEST_JOBS:-2}" 2>&1); rc=$?
  secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')
  summary=$(printf '%s\n' "$out" | grep -E "^\[====\] Synthesis" | tail -1 | sed 's/.*Synthesis: //')
  if [ $rc -eq 0 ]; then
    pass=$((pass+1)); printf '  ok    %-28s %6ss  %s\n' "$name" "$secs" "$summary"
  else
    fail=$((fail+1)); failed+=("$name")
    printf '  FAIL  %-28s %6ss  %s\n' "$name" "$secs" "$summary"
    # the failing tests and their assertion messages first, then the tail of everything else
    printf '%s\n' "$out" | grep -E "^\[FAIL\]|^\[----\] .*(Assert|:[0-9]+:)|^\[----\]   [^ ]" | head -40 | sed 's/^/        /'
    printf '%s\n' "$out" | grep -vE "^\[----\]|^\[RUN \]|^\[PASS\]" | tail -15 | sed 's/^/        /'
  fi
done
echo "test binaries: $pass passed, $fail failed ${failed[*]:-}"
[ $fail -eq 0 ]
