"""MoLoRA on Whisper: route a batch, put MGRF after the encoder, save and load the whole set.

A MoLoRA model is a Whisper with expert layers (`babelora.adapters.inject(MoLoRAConfig)`, an
`AdapterHandle`) and optionally MGRF (`babelora.adapters.mgrf`) on the encoder output.

Routing a training/scoring batch (`route_batch`): each row's language (`batch["langs"]`) and two
padding masks go on the routing context before the forward:
- `encoder`: valid encoder frames from `feature_lens` (conv2 halves the mel rate); utterance
  routing pools only these, MGRF's sentence vector too, and aux losses skip padding frames;
- `decoder`: for utterance-level routing the *prompt* positions only (the router must not see
  the target text it will help predict; at decode time the first decoder call sees exactly the
  prompt, so training and decoding route alike); for token-level routing every non-padding
  position (prompt and target), which keeps padding out of the aux losses.

The expert-set folder (`save_molora`) is `save_adapter_set`'s (babelora_experts.json +
.safetensors) plus, with MGRF, `mgrf.json` (MGRFConfig) and `mgrf.safetensors`.
`load_molora(whisper_handle, folder)` injects both into a loaded Whisper for decoding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from babelora.adapters import AdapterHandle, load_adapter_set, save_adapter_set
from babelora.adapters.mgrf import MGRF, MGRFConfig, attach_to_encoder
from babelora.config import build_dataclass
from babelora.data.collate import IGNORE_INDEX
from babelora.errors import ConfigError, LanguageError, ModelLoadError
from babelora.train.encoder_cache import encoder_frames

MGRF_CONFIG = "mgrf.json"
MGRF_WEIGHTS = "mgrf.safetensors"
UnknownLanguage = Literal["error", "shared"]


# -- masks and routing --------------------------------------------------------------------------
def encoder_valid_mask(feature_lens: Tensor, frames: int) -> Tensor:
    """(B, ceil(frames / 2)) valid encoder positions from valid mel frames per row."""
    enc = (frames + 1) // 2
    valid = (feature_lens + 1) // 2
    return torch.arange(enc, device=feature_lens.device)[None, :] < valid[:, None]


def prompt_lengths(labels: Tensor) -> Tensor:
    """(B,) decoder prompt length per row: labels are -100 on the prompt except its last position,
    which predicts the first target token."""
    target = labels != IGNORE_INDEX
    if not bool(target.any(dim=1).all()):
        raise ConfigError("a batch row has no target token (labels all -100): no prompt end")
    return target.int().argmax(dim=1) + 1


def decoder_mask(labels: Tensor, level: str) -> Tensor:
    """(B, L) decoder positions a router may use: the prompt (utterance level) or every
    non-padding position (token level)."""
    positions = torch.arange(labels.shape[1], device=labels.device)[None, :]
    prompt = positions < prompt_lengths(labels)[:, None]
    return prompt if level == "utterance" else prompt | (labels != IGNORE_INDEX)


def route_languages(
    adapter: AdapterHandle, langs: Sequence[str], unknown: UnknownLanguage = "error"
) -> list[str | None] | None:
    """Each row's expert language, None for rows routed to the shared experts only.

    Returns None when the experts have no languages (a language-free learned pool). A language
    without experts is a LanguageError with `unknown="error"` and shared-only with "shared".
    """
    known = adapter.context.languages
    if not known:
        return None
    out: list[str | None] = []
    for lang in langs:
        if lang in known:
            out.append(lang)
        elif unknown == "shared":
            out.append(None)
        else:
            raise LanguageError(
                f"batch has language {lang!r} but experts exist only for {', '.join(known)}; "
                "add it to molora.languages or set recipe.params.unknown_language: shared"
            )
    return out


def route_batch(
    adapter: AdapterHandle, batch: dict[str, Any], unknown: UnknownLanguage = "error"
) -> None:
    """Set the batch's languages and padding masks on the adapter's routing context."""
    inputs = batch.get("input_features", batch.get("encoder_states"))  # features or cached states
    level = adapter.config.routing_level
    masks = {
        "encoder": encoder_valid_mask(
            batch["feature_lens"].to(inputs.device), encoder_frames(batch)
        ),
        "decoder": decoder_mask(batch["labels"], level),
    }
    adapter.set_routing(langs=route_languages(adapter, batch["langs"], unknown), masks=masks)


def experts_off(adapter: AdapterHandle) -> bool:
    """True inside `adapter.disabled()` (then MGRF is off too: the base model runs)."""
    return any(layer.disabled for layer in adapter.layers.values())


# -- MGRF -----------------------------------------------------------------------------------------
def attach_mgrf(
    model: nn.Module, adapter: AdapterHandle, config: MGRFConfig, mgrf: MGRF | None = None
) -> MGRF:
    """MGRF after `model`'s Whisper encoder (a fresh one from `config`, or the given `mgrf`),
    masked by the routing context's encoder mask.

    It registers as `<encoder>.mgrf` (trainable, saved by name) and is bypassed inside
    `adapter.disabled()`, so "experts off" means the base model everywhere.
    """
    encoder = model.get_encoder()
    if hasattr(encoder, "mgrf"):
        raise ConfigError("the encoder already has MGRF; attach it once per model")
    weight = next(encoder.parameters())
    if mgrf is None:
        mgrf = MGRF(int(model.config.d_model), config)
    mgrf = mgrf.to(device=weight.device, dtype=weight.dtype)

    def mask_fn() -> Tensor | None:
        return None if experts_off(adapter) else adapter.context.masks.get("encoder")

    def bypass(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        return args[0] if experts_off(adapter) else None

    attach_to_encoder(encoder, mgrf, mask_fn)
    mgrf.register_forward_hook(bypass)
    return mgrf


def mgrf_of(model: nn.Module) -> MGRF | None:
    """The MGRF attached to `model`'s encoder, if any."""
    model = getattr(model, "module", model)
    mgrf = getattr(model.get_encoder(), "mgrf", None)
    return mgrf if isinstance(mgrf, MGRF) else None


def save_mgrf(mgrf: MGRF, folder: str | Path) -> None:
    """`mgrf.json` (config) and `mgrf.safetensors` (weights) in `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in mgrf.state_dict().items()}
    save_file(state, str(folder / MGRF_WEIGHTS), metadata={"format": "pt"})
    meta = {"config": asdict(mgrf.config), "d_model": mgrf.proj.out_features}
    (folder / MGRF_CONFIG).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def load_mgrf(model: nn.Module, adapter: AdapterHandle, folder: str | Path) -> MGRF | None:
    """Attach the MGRF saved in `folder` (None when the folder has none)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_file, weights = folder / MGRF_CONFIG, folder / MGRF_WEIGHTS
    if not cfg_file.is_file() and not weights.is_file():
        return None
    if not (cfg_file.is_file() and weights.is_file()):
        raise ModelLoadError(f"{folder}: MGRF needs both {MGRF_CONFIG} and {MGRF_WEIGHTS}")
    try:
        meta = json.loads(cfg_file.read_text(encoding="utf-8"))
        config = build_dataclass(MGRFConfig, meta["config"], "mgrf")
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as err:
        raise ModelLoadError(f"{cfg_file}: not a valid MGRF config ({err})") from None
    d_model = int(model.config.d_model)
    if int(meta.get("d_model", d_model)) != d_model:
        raise ModelLoadError(
            f"{folder}: MGRF was trained for d_model {meta['d_model']}, the model has {d_model}"
        )
    mgrf = MGRF(d_model, config)
    try:
        mgrf.load_state_dict(load_file(str(weights)))
    except Exception as err:  # safetensors errors or key/shape mismatches
        raise ModelLoadError(f"{weights}: does not fit MGRF ({str(err).splitlines()[0]})") from None
    return attach_mgrf(model, adapter, config, mgrf)


# -- the whole set --------------------------------------------------------------------------------
def save_molora(
    adapter: AdapterHandle, folder: str | Path, mgrf: MGRF | None = None, base: str | None = None
) -> Path:
    """Experts and routers (save_adapter_set), MGRF when given, and the base model's signature
    (`babelora_base.json`; `base` names it) so that loading on another base fails clearly."""
    from babelora.models.base_check import write_base_signature

    folder = save_adapter_set(adapter, folder)
    write_base_signature(folder, adapter.model, base)
    if mgrf is not None:
        save_mgrf(mgrf, folder)
    return folder


def has_mgrf(folder: str | Path) -> bool:
    """Whether a saved expert set carries MGRF (then load it with `load_molora`)."""
    folder = Path(folder)
    return (folder / MGRF_CONFIG).is_file() or (folder / MGRF_WEIGHTS).is_file()


def load_molora(handle: Any, folder: str | Path) -> AdapterHandle:
    """Inject a saved expert set (language experts or MoLoRA, with MGRF if saved) into a loaded
    WhisperHandle's model, in place, and return the AdapterHandle for routed decoding
    (`babelora.decode.routing.adapter_batch_hook(adapter)`).

    A set with a base signature (`babelora_base.json`) must match the model's weights.
    """
    from babelora.models.base_check import check_base

    model = handle.model
    if not Path(folder).is_dir():
        raise ModelLoadError(f"{folder}: expert set folder not found")
    check_base(folder, model, getattr(handle, "name", None))
    adapter = load_adapter_set(model, folder)  # experts on the model's device, in float32
    try:
        load_mgrf(model, adapter, folder)
    except ModelLoadError:
        adapter.unload(merge=False)  # give the caller its model back as it was
        raise
    model.eval()
    return adapter
