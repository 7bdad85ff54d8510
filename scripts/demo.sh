#!/usr/bin/env bash
# make demo: NExT-GPT end to end on the embedded queue with a tiny model, no download.
#   1. the tiny NExT-GPT (build/tiny-nextgpt, `nextq model init-tiny`): real layouts, stories260K as the LLM and the
#      real TAESD when ../shared/models (or $NQ_MODELS_DIR) has them, else every weight seeded random;
#   2. the sample dataset (build/demo/data, `nextq demo-data`): PNGs, WAVs and captions in a WebDataset shard + JSONL;
#   3. three jobs through `nextq run` (configs/jobs/*.yaml, paths relative to the files):
#        eval.yaml  captioning: encode -> llm, BLEU-4 / CIDEr-D against the references (_eval.json)
#        t2x.yaml   text -> image: llm -> generate-image (PNG)
#        demo.yaml  any-to-any: image + sound + question -> encode -> llm -> generate-image (text + PNG)
#   and prints where the outputs and manifests are. NQ_DEMO_N sets the number of items (default 4).
set -euo pipefail
bin=${1:-build/nextq}
n=${NQ_DEMO_N:-4}
models=${NQ_MODELS_DIR:-${NQ_SHARED:-../shared}/models}
out=build/demo
tiny=build/tiny-nextgpt
t0=$(date +%s)

if [ ! -f "$tiny/nextgpt.yaml" ] || [ ! -f "$tiny/sd/model_index.json" ]; then
  echo "== nextq model init-tiny --out $tiny"
  if [ -d "$models/stories260K" ]; then
    NQ_MODELS_DIR="$models" "$bin" model init-tiny --out "$tiny" >/dev/null
  else
    echo "   ($models not found: a FULLY RANDOM tiny model; its text and images are noise)"
    "$bin" model init-tiny --out "$tiny" --random >/dev/null
  fi
fi
rm -rf "$out"; mkdir -p "$out"
echo "== nextq demo-data --out $out/data --n $n  (PNG + WAV + captions, WebDataset shard + JSONL, made by nextq)"
"$bin" demo-data --out "$out/data" --n "$n" >/dev/null

show() { # job manifest -> one line per task
  python3 - "$1" <<'PY' 2>/dev/null || cat "$1"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    files = [o["uri"].split("/")[-1] for o in r.get("outputs", []) if o["uri"].endswith((".png", ".wav", ".mp4"))]
    print(f"  {r['task']}  [{r['status']} @ {r['stage']}]  {r.get('text', '').strip()[:70]!r}  {' '.join(files)}")
PY
}

for j in eval t2x demo; do
  echo "== nextq run configs/jobs/$j.yaml"
  job=$("$bin" run "configs/jobs/$j.yaml" --workers 2 2>>"$out/run.log")
  dir="$out/out/$job"
  show "$dir/_manifest.jsonl"
  [ -f "$dir/_eval.json" ] && { echo "  $dir/_eval.json:"; python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('  ', {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items() if k.startswith(('bleu', 'cider', 'items'))})" "$dir/_eval.json" 2>/dev/null || cat "$dir/_eval.json"; }
  test -f "$dir/_SUCCESS" || { echo "job $job: not every task ok (see $dir/_manifest.jsonl, $out/run.log)"; exit 1; }
  echo "  outputs: $dir/  (manifest: $dir/_manifest.jsonl)"
done
echo "== one request without a queue: nextq generate \"show me a picture of a cat\" --model $tiny/nextgpt.yaml --out $out/generate"
"$bin" generate "show me a picture of a cat" --model "$tiny/nextgpt.yaml" --out "$out/generate" --modality image \
  --param steps=20 2>>"$out/run.log" | sed 's/^/  /'
echo "== done in $(( $(date +%s) - t0 )) s; outputs under $out/out/ and $out/generate/"
if [ ! -d "$models/stories260K" ]; then
  echo "   random model: put stories260K.bin + tok512.bin (karpathy/llama2.c tinyllamas, MIT) under MODELS/stories260K/"
  echo "   and taesd_decoder.safetensors (madebyollin/taesd) under MODELS/taesd/, then"
  echo "   rm -rf $tiny && NQ_MODELS_DIR=MODELS make demo"
fi
echo "   the released NExT-GPT: configs/models/nextgpt-7b-tiva-v0.yaml says which public files go where (docs/nextgpt.md)"
