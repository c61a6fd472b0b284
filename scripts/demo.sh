#!/usr/bin/env bash
# The babelora demo on the offline default, multilingual Whisper base (74M), offline, CPU:
#   1. corpus: human translations from packages, spoken by espeak-ng and SVOX Pico; its test
#      split is spoken by espeak-ng speakers that training never hears (unseen speakers)
#   2. real speech: Fish Fillets NG's Dutch voice acting (Debian's fillets-ng-data-nl)
#   3. zero-shot base: ASR and X->en speech translation, language given and language predicted
#      by Whisper's own language identification (DEMO_TINY_EN=1 adds the English-only tiny.en)
#   4. LoRA language experts on base (decoder side, trained from cached encoder states)
#   5. the experts, language given and language-agnostic, on unseen speakers and real speech
#   6. LoRS-Merging of the per-language experts into one adapter
#   7. every system against zero-shot base: per-language differences with paired bootstrap 95 %
#      intervals (babelora score --baseline)
# Sizes are small so that it finishes in under ten minutes on 2 cores; the numbers are on a
# few dozen utterances per language, which is why every difference comes with its interval.
# Scale up with the environment variables; each stage prints the seconds spent so far.
set -euo pipefail
OUT=${DEMO_OUT:-runs/demo}
LANGS=${DEMO_LANGS:-de,nl}
STEPS=${DEMO_STEPS:-60}
TRAIN=${DEMO_TRAIN:-120}   # sentence pairs a language (each spoken once, used for ASR and ST)
TEST=${DEMO_TEST:-25}      # test pairs a language (ASR + ST rows each)
REAL=${DEMO_REAL:-60}      # Fish Fillets rows (ASR and ST alternate)
TINY_EN=${DEMO_TINY_EN:-0} # 1: also zero-shot tiny.en (English only), the "before base" row
rm -rf "$OUT/experts" "$OUT/merged" "$OUT"/eval_*  # a re-run trains afresh (data is reused)
mkdir -p "$OUT"
EVAL=(babelora evaluate --no-progress --langs "$LANGS")

echo "== 1. offline corpus ($LANGS + en) -> $OUT/corpus [${SECONDS} s]"
babelora corpus build --langs "$LANGS" --out "$OUT/corpus" --set "train=$TRAIN" --set dev=4 \
  --set "test=$TEST" --set cs_train=0 --set cs_dev=0 --set cs_test=0

echo "== 2. real speech: Fish Fillets NG, Dutch voice acting -> $OUT/real [${SECONDS} s]"
REAL_MANIFEST=""
if [[ ",$LANGS," == *",nl,"* ]] && [ -d /usr/share/games/fillets-ng/sound ]; then
  [ -f "$OUT/real/fillets.nl.test.jsonl" ] || \
    babelora corpus import fillets --langs nl --splits test --out "$OUT/real"
  REAL_MANIFEST="$OUT/real/fillets.nl.test.jsonl"
else
  echo "   (skipped: needs nl in DEMO_LANGS and fillets-ng-data-nl: make system-deps)"
fi

# evaluate NAME MANIFEST [options]: hypotheses + report in $OUT/eval_NAME; a non-zero exit
# only means that some items failed, and the report says which
evaluate() {
  local name=$1 manifest=$2
  shift 2
  "${EVAL[@]}" --manifest "$manifest" --out "$OUT/eval_$name" "$@" || true
}

echo "== 3. zero-shot Whisper base on unseen speakers: language given, then predicted [${SECONDS} s]"
# language predicted: Whisper's LID and the decoding share each clip's encoder pass
evaluate zero_shot "$OUT/corpus/test.jsonl"
evaluate zero_shot_auto "$OUT/corpus/test.jsonl" --language auto
[ -z "$REAL_MANIFEST" ] || evaluate zero_shot_real "$REAL_MANIFEST" --limit "$REAL"
if [ "$TINY_EN" = 1 ]; then
  evaluate zero_shot_tiny_en "$OUT/corpus/test.jsonl" --model tiny.en
  [ -z "$REAL_MANIFEST" ] || evaluate zero_shot_tiny_en_real "$REAL_MANIFEST" --limit "$REAL" --model tiny.en
fi

echo "== 4. LoRA language experts on base: $STEPS steps, decoder side, cached encoder states [${SECONDS} s]"
babelora train configs/experts/experts_tiny.yaml "output_dir=$OUT/experts" model.name=base \
  "recipe.params.targets=[whisper-decoder]" "data.train=[$OUT/corpus/train.jsonl]" \
  "data.dev=[$OUT/corpus/dev.jsonl]" "data.languages=[$LANGS]" "max_steps=$STEPS" \
  data.batch_seconds=30 optim.warmup_steps=10 eval.every=0 checkpoint.save_every=1000 \
  "cache_dir=$OUT/cache"

echo "== 5. the experts: language given (routed by the manifest), then predicted (Whisper LID) [${SECONDS} s]"
# trained on unpadded inputs (data.min_input_seconds 0), decoded the same way
EXPERTS=(--experts "$OUT/experts/final" --min-input-seconds 0)
evaluate experts "$OUT/corpus/test.jsonl" "${EXPERTS[@]}"
evaluate experts_auto "$OUT/corpus/test.jsonl" "${EXPERTS[@]}" --language auto
[ -z "$REAL_MANIFEST" ] || evaluate experts_real "$REAL_MANIFEST" "${EXPERTS[@]}" --limit "$REAL"

echo "== 6. LoRS-Merging of the per-language experts into one adapter [${SECONDS} s]"
INPUTS=$(echo "$LANGS" | tr ',' '\n' | sed "s#.*#{path: $OUT/experts/final/&, name: &}#" | paste -sd, -)
babelora merge configs/merge/lors_lora.yaml base=base "inputs=[$INPUTS]" "output.path=$OUT/merged"
evaluate merged "$OUT/corpus/test.jsonl" --adapter "$OUT/merged" --min-input-seconds 0

echo "== 7. every system against zero-shot base (B - A, paired bootstrap 95 % interval) [${SECONDS} s]"
compare() {  # compare TITLE BASELINE SYSTEM MANIFEST
  echo
  echo "### $1"
  babelora score --manifest "$4" --hyps "$OUT/eval_$3/hypotheses.jsonl" \
    --baseline "$OUT/eval_$2/hypotheses.jsonl" --subset --no-langid \
    --compare-out "$OUT/compare_$3.json" | sed -n '/^## Difference/,$p' | tail -n +2
}
{
  [ "$TINY_EN" != 1 ] || compare "zero-shot base (multilingual) - zero-shot tiny.en (English only), unseen speakers" zero_shot_tiny_en zero_shot "$OUT/corpus/test.jsonl"
  compare "experts, language given - zero-shot, unseen speakers" zero_shot experts "$OUT/corpus/test.jsonl"
  compare "experts, language predicted - zero-shot predicted, unseen speakers" zero_shot_auto experts_auto "$OUT/corpus/test.jsonl"
  compare "LoRS-merged adapter - zero-shot, unseen speakers" zero_shot merged "$OUT/corpus/test.jsonl"
  if [ -n "$REAL_MANIFEST" ]; then
    [ "$TINY_EN" != 1 ] || compare "zero-shot base - zero-shot tiny.en, real Dutch speech (Fish Fillets NG)" zero_shot_tiny_en_real zero_shot_real "$REAL_MANIFEST"
    compare "experts - zero-shot, real Dutch speech (Fish Fillets NG)" zero_shot_real experts_real "$REAL_MANIFEST"
  fi
} | tee "$OUT/summary.md"
echo
echo "== done in ${SECONDS} s: reports in $OUT/eval_*/report.md, the comparison in $OUT/summary.md"
