"""Write an `ExportSource` as a transformers folder, and an expert set's per-language adapters.

The folder is what `WhisperForConditionalGeneration.from_pretrained` and babelora's
`load_whisper` read: config.json, generation_config.json, model.safetensors, the tokenizer files
and preprocessor_config.json (Whisper's feature extractor, so transformers' pipeline works).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from babelora.export.ct2 import preprocessor_config
from babelora.export.sources import ExportSource

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def plain_model(source: ExportSource, dtype: str = "float32"):
    """A WhisperForConditionalGeneration holding `source.state` (no copy of the tensors beyond
    the dtype cast)."""
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(source.config)
    model.load_state_dict(source.state, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        from babelora.errors import ModelLoadError

        raise ModelLoadError(f"{source.base}: export lacks tensors for {missing[:3]}")
    if source.generation_config is not None:
        model.generation_config = source.generation_config
    return model.to(TORCH_DTYPES[dtype]).eval()


def write_hf_files(folder: str | Path, source: ExportSource, dtype: str = "float32") -> Path:
    """save_pretrained (safetensors) of the model and its tokenizer, plus the feature extractor's
    preprocessor_config.json, into `folder`."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plain_model(source, dtype).save_pretrained(str(folder))
    source.tokenizer.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(source.config.num_mel_bins), indent=2, sort_keys=True)
        + "\n",
        encoding="utf-8",
    )
    return folder


def write_language_adapter(folder: str | Path, adapter: Any, lang: str, base_name: str) -> Path:
    """One language of an expert set as a PEFT adapter folder (shared + `lang`'s experts, exact)
    with the base signature babelora checks on load."""
    from babelora.adapters import export_peft
    from babelora.models.base_check import hub_name, write_base_signature

    folder = Path(folder)
    export_peft(adapter, folder, lang=lang, base_model_name_or_path=hub_name(base_name))
    write_base_signature(folder, adapter.model, base_name)
    return folder
