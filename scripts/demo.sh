#!/usr/bin/env bash
# make demo: the main job on the embedded queue with the bundled tiny models (no download).
# Runs `nextq run` over examples/demo/prompts.jsonl with the llm stage on the real stories260K LLaMA
# (../shared/models), 8 prompts decoded together, then prints each task's generated text from the manifest.
set -euo pipefail
bin=${1:-build/nextq}
shared=${NQ_SHARED:-../shared}
shared=$(cd "$shared" && pwd)
out=build/demo
rm -rf "$out"; mkdir -p "$out"
cat > "$out/demo.yaml" <<YAML
job: demo
stage: llm
dataset: {format: jsonl, path: $(pwd)/examples/demo/prompts.jsonl}
output: $(pwd)/$out/out
batch_size: 1
params:
  model: $shared/models/stories260K/stories260K.bin
  tokenizer: $shared/models/stories260K/tok512.bin
  max_new_tokens: 48
  temperature: 0.8
  top_p: 0.9
  seed: 42
YAML
echo "== nextq run $out/demo.yaml  (embedded queue, llm stage, stories260K)"
job=$("$bin" run "$out/demo.yaml" --workers 2 --batch 8)
manifest="$out/out/$job/_manifest.jsonl"
echo "== $manifest"
python3 - "$manifest" <<'PY' 2>/dev/null || cat "$manifest"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['task']}  [{r['status']}]  {r['text'].strip()[:110]}")
PY
test -f "$out/out/$job/_SUCCESS" && echo "== _SUCCESS: every task ok"

# ---- NExT-GPT chain on the tiny model: captioning (encode -> llm) with BLEU-4 / CIDEr-D against the references ----
tiny=build/tiny-nextgpt
if [ ! -f "$tiny/nextgpt.yaml" ]; then
  echo "== nextq model init-tiny --out $tiny"
  NQ_MODELS_DIR="$shared/models" "$bin" model init-tiny --out "$tiny" >/dev/null
fi
echo "== nextq demo-data --out $out/data  (PNG + WAV + captions in a WebDataset shard, made by nextq itself)"
"$bin" demo-data --out "$out/data" --n 4 >/dev/null
mkdir -p "$out/jobs"
sed "s#\.\./\.\./build/#$(pwd)/build/#g" configs/jobs/eval.yaml > "$out/jobs/eval.yaml"
echo "== nextq run $out/jobs/eval.yaml  (encode -> llm, NExT-GPT tiny; random ImageBind/projectors: captions are noise)"
job=$("$bin" run "$out/jobs/eval.yaml" --workers 2 2>/dev/null)
echo "== $out/out/$job/_manifest.jsonl"
python3 - "$out/out/$job/_manifest.jsonl" <<'PY' 2>/dev/null || cat "$out/out/$job/_manifest.jsonl"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['task']}  [{r['status']}]  ref: {r['eval']['refs'][0]!r}  caption: {r['text'].strip()[:60]!r}")
PY
echo "== $out/out/$job/_eval.json"; cat "$out/out/$job/_eval.json"; echo
