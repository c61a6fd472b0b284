#!/usr/bin/env bash
# The babelora demo on the embedded default: offline corpus -> zero-shot evaluation ->
# LoRA language experts -> evaluation -> merging. Everything offline, CPU, a few minutes.
set -euo pipefail
OUT=${DEMO_OUT:-runs/demo}
mkdir -p "$OUT"
echo "== 1. speech from espeak-ng, transcribed by the offline Whisper tiny.en"
espeak-ng -v en-us -w "$OUT/hello.wav" "Please correct the error below."
babelora transcribe "$OUT/hello.wav" --no-progress
