"""Put trained adapters on a loaded Whisper for decoding: one PEFT adapter (merged for speed) or
a babelora expert set (language experts / MoLoRA, routed per utterance)."""

from __future__ import annotations

import json
from pathlib import Path

from babelora.errors import ModelLoadError


def apply_peft_adapter(handle, adapter_dir: str | Path, merge: bool = True):
    """Load a PEFT adapter (adapter_config.json + adapter_model.safetensors) into `handle.model`.

    The update is merged into the base weights (zero decoding overhead) unless `merge` is False.
    Raises ModelLoadError when the folder is not a safetensors PEFT adapter or does not fit.
    """
    from peft import PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"{path}: not a PEFT adapter folder (no adapter_config.json)")
    if not (path / "adapter_model.safetensors").is_file():
        pickled = [p.name for p in path.glob("adapter_model.*")]
        why = f" ({pickled[0]} is a pickle, which can run code when loaded)" if pickled else ""
        raise ModelLoadError(
            f"{path}: adapter weights must be adapter_model.safetensors{why}; convert them with "
            "safetensors.torch.save_file"
        )
    try:
        json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        model = PeftModel.from_pretrained(handle.model, str(path))
    except (ValueError, RuntimeError, KeyError, json.JSONDecodeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        # torch's load_state_dict error: a header line, then one line per mismatched tensor
        msg = next((line for line in lines if "size mismatch" in line), None)
        msg = msg or (lines[0] if lines else type(err).__name__)
        raise ModelLoadError(f"{path}: adapter does not fit model {handle.name} ({msg})") from None
    handle.model = model.merge_and_unload() if merge else model
    handle.model.eval()
    return handle


def load_expert_set(handle, folder: str | Path):
    """Inject a saved babelora expert set (adapters.save_adapter_set) into `handle.model`.

    Returns the AdapterHandle whose routing the decoder sets per batch. A set that carries
    MGRF weights is loaded with them (babelora.methods.molora.recipe.load_molora).
    """
    from babelora.adapters import load_adapter_set

    path = Path(folder)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: expert set folder not found")
    from babelora.methods.molora.recipe import has_mgrf, load_molora

    if has_mgrf(path):
        adapter = load_molora(handle, path)
    else:
        adapter = load_adapter_set(handle.model, path)
    handle.model.to(next(handle.model.parameters()).device).eval()
    return adapter
