"""babelora.export: ship what you trained, as folders the production tools load.

- `ct2`: a CTranslate2 Whisper folder (model.bin, config.json, vocabulary.json, tokenizer.json,
  preprocessor_config.json) that faster-whisper and CTranslate2 load; the inverse of
  babelora.models.ct2's reader.
- `hf`: a transformers folder (safetensors) with a model card and, for an expert set, one PEFT
  adapter per language with its adapter card.
- `sources`: what is exported: a base with a PEFT adapter merged in, a merge result, or one
  language folded out of an expert set / MoLoRA (`ExportSource`, one plain Whisper each).
- `card`: the README.md model and adapter cards.
"""
