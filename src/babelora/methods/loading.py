"""Put trained adapters on a loaded Whisper for decoding: one PEFT adapter (merged for speed) or
a babelora expert set (language experts / MoLoRA, routed per utterance); or load a trained
speech-LLM (`load_speech_llm`, `decode_speech_llm`) for the decode commands.

Both check the base signature saved beside the adapters (models.base_check) unless told not to,
and a PEFT adapter must change the model: tensors that match no module are an error, not a
warning (PEFT would load them as nothing and decode the plain base).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from babelora.errors import ModelLoadError
from babelora.models.base_check import DEFAULT_HINT, check_base

SHOW_KEYS = 3  # unmatched tensor names shown in an error


def _read_tensors(file: Path) -> dict:
    """The adapter's tensors (a clean error for a truncated or garbage file)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as err:  # safetensors raises its own error types
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        msg = lines[0] if lines else type(err).__name__
        raise ModelLoadError(f"{file}: cannot read safetensors ({msg})") from None


def _unmatched(model, saved: dict) -> list[str]:
    """Adapter tensors that PEFT did not load into `model` (a PeftModel): their names match no
    LoRA layer it built, so PEFT silently skipped them."""
    from peft import get_peft_model_state_dict

    loaded = set(get_peft_model_state_dict(model, save_embedding_layers=False))
    return sorted(k for k in saved if k not in loaded)


def apply_peft_adapter(
    handle,
    adapter_dir: str | Path,
    merge: bool = True,
    check: bool = True,
    hint: str = DEFAULT_HINT,
):
    """Load a PEFT adapter (adapter_config.json + adapter_model.safetensors) into `handle.model`.

    The update is merged into the base weights (zero decoding overhead) unless `merge` is False.
    Raises ModelLoadError when the folder is not a safetensors PEFT adapter, does not fit, or
    holds tensors that match no module of the model; BaseMismatchError when its base signature
    (babelora exports write one) names another base (`check=False` skips that; `hint` ends the
    message).
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
    saved = _read_tensors(path / "adapter_model.safetensors")
    if not saved:
        raise ModelLoadError(f"{path / 'adapter_model.safetensors'}: holds no tensors")
    if check:
        check_base(path, handle.model, handle.name, hint=hint)
    try:
        json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        with warnings.catch_warnings():  # unloaded tensors are an error below, not a warning
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            model = PeftModel.from_pretrained(handle.model, str(path))
    except (ValueError, RuntimeError, KeyError, json.JSONDecodeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        # torch's load_state_dict error: a header line, then one line per mismatched tensor
        msg = next((line for line in lines if "size mismatch" in line), None)
        msg = msg or (lines[0] if lines else type(err).__name__)
        raise ModelLoadError(f"{path}: adapter does not fit model {handle.name} ({msg})") from None
    unmatched = _unmatched(model, saved)
    if unmatched:
        handle.model = model.unload()  # the caller's model back, without LoRA layers
        shown = ", ".join(unmatched[:SHOW_KEYS])
        more = f" and {len(unmatched) - SHOW_KEYS} more" if len(unmatched) > SHOW_KEYS else ""
        raise ModelLoadError(
            f"{path}: {len(unmatched)} of {len(saved)} adapter tensors match no module of model "
            f"{handle.name} ({shown}{more}); the adapter would not change those modules: check "
            "that it was trained on this architecture and that its keys start with "
            "'base_model.model.'"
        )
    handle.model = model.merge_and_unload() if merge else model
    handle.model.eval()
    return handle


def load_expert_set(handle, folder: str | Path, check: bool = True, hint: str = DEFAULT_HINT):
    """Inject a saved babelora expert set (adapters.save_adapter_set) into `handle.model`.

    Returns the AdapterHandle whose routing the decoder sets per batch. A set that carries
    MGRF weights is loaded with them. The set's base signature must match the model
    (BaseMismatchError) unless `check` is False; `hint` ends that message.
    """
    from babelora.adapters import load_adapter_set
    from babelora.methods.molora.model import has_mgrf, load_mgrf

    path = Path(folder)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: expert set folder not found")
    if check:
        check_base(path, handle.model, handle.name, hint=hint)
    adapter = load_adapter_set(handle.model, path)  # experts on the model's device, float32
    if has_mgrf(path):
        try:
            load_mgrf(handle.model, adapter, path)
        except ModelLoadError:
            adapter.unload(merge=False)  # give the caller its model back as it was
            raise
    handle.model.to(next(handle.model.parameters()).device).eval()
    return adapter


def load_speech_llm(folder: str | Path, device: str = "cpu"):
    """A speech-LLM exported by the `speech_llm` recipe (its `final/` folder), ready to decode."""
    from babelora.methods.speech_llm.recipe import load_speech_llm as load

    return load(folder).to(device).eval()


def decode_speech_llm(model, requests, num_beams: int = 1, max_new_tokens: int | None = None):
    """Results for decode Requests with a speech-LLM (babelora.methods.speech_llm.decode)."""
    from babelora.methods.speech_llm.decode import decode_speech_llm as run

    return run(model, requests, num_beams=num_beams, max_new_tokens=max_new_tokens)
