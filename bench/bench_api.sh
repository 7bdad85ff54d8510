#!/usr/bin/env bash
# bench/bench_api.sh — requests/s and p50/p99 latency of POST /v1/generate (noop stage) on loopback with wrk,
# beside GET /healthz on the same server (in-run baseline: HTTP + routing without the queue).
#   bench/bench_api.sh [NEXTQ_BIN]
# Env: NQ_BENCH_API_SECONDS (default 5 per run), NQ_BENCH_API_CONN (default 8), NQ_BENCH_API_THREADS (wrk threads,
#      default 1), NQ_BENCH_API_WORKER=1 also runs a noop worker draining the tasks (else they just queue up).
# Prints one summary line per endpoint: "bench_api <name> rps=... p50_ms=... p99_ms=...". Loopback only, bounded.
set -uo pipefail
bin=${1:-${NQ_BIN:-build/nextq}}
secs=${NQ_BENCH_API_SECONDS:-5}
conn=${NQ_BENCH_API_CONN:-8}
threads=${NQ_BENCH_API_THREADS:-1}
command -v wrk >/dev/null || { echo "bench_api: SKIP (wrk not installed: apt-get install wrk)"; exit 0; }
command -v redis-server >/dev/null || { echo "bench_api: SKIP (no redis-server)"; exit 0; }
tmp=$(mktemp -d /tmp/nq_bench_api_XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$tmp"; }
trap cleanup EXIT
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])' 2>/dev/null || echo 6401)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
pids+=($!)
for i in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
url=redis://127.0.0.1:$port
store=/dev/shm; [ -d "$store" ] && [ -w "$store" ] || store=$tmp
store=$(mktemp -d "$store/nq_bench_api_store_XXXXXX")
trap 'cleanup; rm -rf "$store"' EXIT
NQ_LOG_LEVEL=warn "$bin" api --queue "$url" --listen 127.0.0.1:0 --store-root "$store" >"$tmp/api.out" 2>"$tmp/api.log" &
pids+=($!)
base=""
for i in $(seq 100); do base=$(awk '/^listening on /{print $3}' "$tmp/api.out" 2>/dev/null); [ -n "$base" ] && break; sleep 0.1; done
[ -n "$base" ] || { echo "bench_api: nextq api did not start"; cat "$tmp/api.log"; exit 1; }
if [ "${NQ_BENCH_API_WORKER:-0}" = 1 ]; then
  NQ_LOG_LEVEL=warn "$bin" worker --queue "$url" --stages noop --batch 64 --store-root "$store" >/dev/null 2>"$tmp/worker.log" &
  pids+=($!)
fi
cat > "$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"prompt": "a photo of a cat on a sofa", "stage": "noop"}'
wrk.headers["Content-Type"] = "application/json"
LUA
run() { # name path [script]
  local name=$1 path=$2 script=${3:-}
  local out
  out=$(wrk -t"$threads" -c"$conn" -d"${secs}s" --timeout 10s --latency ${script:+-s "$script"} "$base$path" 2>&1)
  echo "$out" | sed 's/^/    /' >&2
  local rps p50 p99 non2xx
  rps=$(echo "$out" | awk '/^Requests\/sec:/{print $2}')
  p50=$(echo "$out" | awk '$1=="50%"{print $2}')
  p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/{print $NF}')
  ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); printf "%.3f", v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); printf "%.3f", v} else if (v ~ /s$/) {sub(/s$/,"",v); printf "%.3f", v*1000} else print v }'; }
  echo "bench_api $name rps=$rps p50_ms=$(ms "$p50") p99_ms=$(ms "$p99") conns=$conn secs=$secs non2xx=${non2xx:-0}"
}
echo "== api: GET /healthz (baseline: HTTP server + routing, no queue)"
run healthz /healthz
echo "== api: POST /v1/generate (noop stage: job metadata + envelope + publish + total on Redis, 202 at once)"
run generate /v1/generate "$tmp/post.lua"
queued=$(redis-cli -p "$port" xlen nq:tasks:noop:cpu 2>/dev/null)
echo "bench_api tasks_queued=${queued:-?}"
