#!/usr/bin/env bash
# make bench: every benchmark prints its figures beside a baseline measured in the same run.
#   1. queue: noop tasks/s end to end through Redis (nextq submit + one `nextq worker` + nextq wait), fetch batch 1
#      and 100, beside the raw hiredis XADD -> XREADGROUP -> XACK pipelined loop on the same server (ratio).
#   2. llm: decode/prefill on LLaMA-7B shapes beside a DRAM bandwidth probe and GEMM peaks (bench_llm).
#   3. any other build/bench/* program: bench_imagebind (ImageBind-huge vision trunk + media preprocessing, vs torch),
#      bench_unet (AudioLDM UNet2D / ZeroScope UNet3D steps), bench_llama_tiny (stories260K shapes vs torch), bench_av,
#      bench_sd. The torch comparisons run when some python3 (python3 on PATH, else /usr/bin/python3, or $NQ_PYTHON)
#      can `import torch` (Debian: apt-get install python3-torch; deliberately not in deploy/install-deps.sh: ~1 GB),
#      else they print "torch: not installed".
# Medians of several runs; machines are noisy, so read the ratios.
set -uo pipefail
bin=${NQ_BIN:-build/nextq}
benches=("$@")
N=${NQ_BENCH_TASKS:-20000}
RUNS=${NQ_BENCH_RUNS:-3}
tmp=$(mktemp -d /tmp/nq_bench_XXXXXX)
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])' 2>/dev/null || echo 6399)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" --daemonize no >"$tmp/redis.log" 2>&1 &
rpid=$!
trap 'kill $rpid 2>/dev/null; wait $rpid 2>/dev/null; rm -rf "$tmp"' EXIT
for i in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
url=redis://127.0.0.1:$port

echo "== queue: raw hiredis pipelined loop (baseline, same server)"
raw=$(build/bench/bench_queue_raw "$port" "$N" "$RUNS" | tee /dev/stderr | awk -F'msgs_per_s=' '/^bench_queue_raw/{split($2,a," "); print a[1]}')

for i in $(seq 0 $((N-1))); do printf '{"id":"%d","prompt":"p"}\n' "$i"; done > "$tmp/in.jsonl"
# Outputs go to tmpfs by default so the figure measures nextq (queue, worker, store code), not the disk's inode
# allocator; NQ_BENCH_OUT=/some/disk/dir measures a real disk (each task creates a directory and a file, synced in
# groups). The raw loop writes no files at all.
outdir=${NQ_BENCH_OUT:-/dev/shm}
[ -d "$outdir" ] && [ -w "$outdir" ] || outdir=$tmp
outdir=$(mktemp -d "$outdir/nq_bench_out_XXXXXX")
trap 'kill $rpid 2>/dev/null; wait $rpid 2>/dev/null; rm -rf "$tmp" "$outdir"' EXIT
printf 'job: bench\nstage: noop\ndataset: {format: jsonl, path: in.jsonl}\noutput: %s/out\n' "$outdir" > "$tmp/job.yaml"
median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for batch in 1 100; do
  vals=()
  for r in $(seq "$RUNS"); do
    redis-cli -p "$port" flushall >/dev/null
    rm -rf "$outdir/out"
    job=$("$bin" submit "$tmp/job.yaml" --queue "$url")
    t0=$(date +%s.%N)
    NQ_LOG_LEVEL=warn "$bin" worker --queue "$url" --stages noop --threads 1 --batch "$batch" 2>"$tmp/worker.log" &
    wpid=$!
    "$bin" wait "$job" --queue "$url" --timeout 600 2>/dev/null
    t1=$(date +%s.%N)
    kill -TERM $wpid; wait $wpid
    vals+=("$(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')")
  done
  med=$(printf '%s\n' "${vals[@]}" | median)
  ratio=$(awk -v a="$med" -v b="$raw" 'BEGIN{printf "%.3f", (b>0)?a/b:0}')
  echo "queue e2e: noop through redis, 1 worker (1 thread), fetch batch $batch, outputs in $(dirname "$outdir"): ${med} tasks/s (runs: ${vals[*]}); raw loop ${raw} msgs/s; ratio ${ratio}"
done

echo "== store: group-committed puts vs bare syscalls (the per-task file floor under the e2e figures)"
build/bench/bench_store "$(dirname "$outdir")" "$N" "$RUNS" | tail -1

echo "== api: POST /v1/generate (noop) with wrk, beside GET /healthz"
bash bench/bench_api.sh "$bin" || echo "bench_api: skipped"

for b in "${benches[@]}"; do
  name=$(basename "$b")
  case "$name" in bench_queue_raw|bench_store) continue ;; esac
  echo "== $name"
  "$b"
  # the cuda ops' PyTorch twin, where a CUDA build of torch and a GPU are there
  if [ "$name" = bench_cuda ] && ${NQ_PYTHON:-python3} -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    ${NQ_PYTHON:-python3} bench/torch_cuda_ops.py
  fi
done
