#!/usr/bin/env bash
# The babelora demo on the small offline Whisper tiny.en (named: the default, base, is slower),
# offline, CPU, a few minutes:
#   1. corpus: human translations from packages, spoken by espeak-ng (German, French, English)
#   2. zero-shot evaluation of the offline Whisper tiny.en, and of the multilingual default, base
#   3. LoRA language experts (one per language, one training run, mixed-language batches)
#   4. language-aware evaluation (each utterance routed to its own expert, batched)
#   5. LoRS-Merging of the per-language adapters into one adapter, and its evaluation
# Sizes are small so that it finishes quickly; scale them up with the environment variables.
set -euo pipefail
OUT=${DEMO_OUT:-runs/demo}
LANGS=${DEMO_LANGS:-de,fr}
STEPS=${DEMO_STEPS:-40}
TRAIN=${DEMO_TRAIN:-30}
rm -rf "$OUT/experts" "$OUT/merged"  # a re-run trains afresh (the corpus is reused)
mkdir -p "$OUT"

echo "== 1. offline corpus ($LANGS + en) -> $OUT/corpus"
babelora corpus build --langs "$LANGS" --out "$OUT/corpus" --set "train=$TRAIN" --set dev=6 \
  --set test=8 --set cs_train=0 --set cs_dev=0 --set cs_test=4

echo "== 2. zero-shot Whisper tiny.en (ASR and ST X->en in $LANGS)"
babelora evaluate --manifest "$OUT/corpus/test.jsonl" --langs "$LANGS" --out "$OUT/eval_zero_shot" \
  --model tiny.en --no-progress || true   # non-zero only when items failed; the report is still written

echo "== 2b. zero-shot multilingual Whisper base, the offline default (same test set)"
babelora evaluate --manifest "$OUT/corpus/test.jsonl" --langs "$LANGS" --out "$OUT/eval_zero_shot_base" \
  --model base --no-progress || true

echo "== 3. LoRA language experts: $STEPS steps"
babelora train configs/experts/experts_tiny.yaml "output_dir=$OUT/experts" \
  "data.train=[$OUT/corpus/train.jsonl]" "data.dev=[$OUT/corpus/dev.jsonl]" \
  "data.languages=[$LANGS]" "max_steps=$STEPS" data.batch_seconds=20 optim.warmup_steps=10 \
  eval.every=0 checkpoint.save_every=1000 data.dev_max_items=12

echo "== 4. language-aware experts (batched routing by the manifest's language)"
babelora evaluate --manifest "$OUT/corpus/test.jsonl" --langs "$LANGS" --out "$OUT/eval_experts" \
  --model tiny.en --experts "$OUT/experts/final" --min-input-seconds 0 --prompt-style multilingual --no-progress || true

echo "== 5. LoRS-Merging of the per-language adapters into one"
INPUTS=$(echo "$LANGS" | tr ',' '\n' | sed "s#.*#{path: $OUT/experts/final/&, name: &}#" | paste -sd, -)
babelora merge configs/merge/lors_lora.yaml "inputs=[$INPUTS]" "output.path=$OUT/merged"
babelora evaluate --manifest "$OUT/corpus/test.jsonl" --langs "$LANGS" --out "$OUT/eval_merged" \
  --model tiny.en --adapter "$OUT/merged" --min-input-seconds 0 --prompt-style multilingual --no-progress || true

echo "== done: reports in $OUT/eval_zero_shot, $OUT/eval_zero_shot_base, $OUT/eval_experts, $OUT/eval_merged (report.md)"
