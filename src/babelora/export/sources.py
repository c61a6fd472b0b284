"""What an export writes: plain Whispers (`ExportSource`), built from what babelora trains.

- a base model (offline name, CTranslate2 or transformers folder, hub id), e.g. a merge result
  (a full transformers folder), optionally with a PEFT adapter merged in (`load_plain`);
- one language folded out of an expert set or MoLoRA (`load_experts` + `fold_language`): the
  shared experts plus that language's, added into the base weights exactly as
  `AdapterHandle.unload(lang=..., merge=True)` does, without changing the loaded model, so every
  language of a set can be folded from one load. Only the `language` router folds exactly
  (learned routers weigh experts per input: there is no single plain model to write).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from babelora.errors import ConfigError, MergeError, ModelLoadError

IGNORE_HINT = "export from the model they were trained on (--model), or pass --ignore-base-mismatch"


@dataclass
class ExportSource:
    """One plain Whisper to write: tensors, configs and tokenizer, and where it came from."""

    state: dict[str, torch.Tensor]  # transformers WhisperForConditionalGeneration names
    config: Any  # transformers WhisperConfig
    generation_config: Any
    tokenizer: Any
    base: str  # the base model as babelora named it
    method: str  # "base", "lora", "language-experts", "molora"
    language: str | None = None  # the folded language
    languages: tuple[str, ...] = ()  # every language of the expert set
    adapter: str | None = None  # the PEFT adapter or expert set folder
    base_ct2_config: dict | None = None  # the base's CTranslate2 config.json, if it was one
    details: dict[str, Any] = field(default_factory=dict)  # adapter settings for the card


def base_ct2_config(name: str | None) -> dict | None:
    """config.json of the base when it is an offline model or a CTranslate2 folder, else None."""
    from babelora.models.ct2 import is_ct2_dir
    from babelora.models.offline import DEFAULT_MODEL, OFFLINE_MODELS, offline_model_path

    name = DEFAULT_MODEL if name is None else str(name)
    if name in OFFLINE_MODELS:
        folder = offline_model_path(name)
    elif is_ct2_dir(name):
        folder = Path(name)
    else:
        return None
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _load_base(model: str | None, allow_pickle: bool):
    from babelora.models.whisper import load_whisper

    return load_whisper(model, allow_pickle=allow_pickle, variable_length=False)


def load_plain(
    model: str | None,
    adapter: str | None = None,
    check: bool = True,
    allow_pickle: bool = False,
) -> ExportSource:
    """The base `model` (None: the offline default), with the PEFT `adapter` merged in."""
    from babelora.methods.loading import apply_peft_adapter

    handle = _load_base(model, allow_pickle)
    method = "base"
    if adapter:
        apply_peft_adapter(handle, adapter, merge=True, check=check, hint=IGNORE_HINT)
        method = "lora"
    return _source(handle, method, adapter=adapter, base_config=base_ct2_config(model))


def _source(handle, method: str, **fields: Any) -> ExportSource:
    base_config = fields.pop("base_config", None)
    model = handle.model
    return ExportSource(
        state=dict(model.state_dict()),
        config=model.config,
        generation_config=getattr(model, "generation_config", None),
        tokenizer=handle.tokenizer,
        base=handle.name,
        method=method,
        base_ct2_config=base_config,
        **fields,
    )


@dataclass
class ExpertExport:
    """A loaded expert set on its base: fold languages out of it (`fold_language`), or export
    its per-language PEFT adapters (`adapter`, a babelora AdapterHandle)."""

    handle: Any  # WhisperHandle whose model carries the expert layers
    adapter: Any  # AdapterHandle
    folder: str
    base: ExportSource  # the base without experts (state of the base layers)

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.adapter.config.languages)


def set_method(config: Any) -> str:
    """`language-experts` for one LoRA expert per language, else `molora`."""
    plain = config.num_shared == 0 and config.experts_per_lang == 1 and not config.num_experts
    return "language-experts" if plain and config.router == "language" else "molora"


def load_experts(
    model: str | None, experts: str, check: bool = True, allow_pickle: bool = False
) -> ExpertExport:
    """The base `model` with the expert set `experts` on it (base signature checked)."""
    from babelora.methods.loading import load_expert_set
    from babelora.methods.molora.model import has_mgrf

    if has_mgrf(experts):
        raise ModelLoadError(
            f"{experts}: the set carries MGRF, a fusion module after the encoder that a plain "
            "Whisper does not have; it cannot be exported as one model (serve it with "
            "`babelora serve --experts`)"
        )
    handle = _load_base(model, allow_pickle)
    adapter = load_expert_set(handle, experts, check=check, hint=IGNORE_HINT)
    cfg = adapter.config
    details = {
        "rank": cfg.lora.rank,
        "alpha": cfg.lora.alpha,
        "targets": list(cfg.lora.targets),
        "router": cfg.router,
        "num_shared": cfg.num_shared,
        "experts_per_lang": cfg.experts_per_lang,
        "method": set_method(cfg),
    }
    base = ExportSource(
        state=folded_state_dict(adapter, None, fold=False),
        config=handle.model.config,
        generation_config=getattr(handle.model, "generation_config", None),
        tokenizer=handle.tokenizer,
        base=handle.name,
        method="base",
        languages=tuple(cfg.languages),
        adapter=str(experts),
        base_ct2_config=base_ct2_config(model),
        details=details,
    )
    return ExpertExport(handle, adapter, str(experts), base)


def _layer_of(key: str, layers: Mapping[str, Any]) -> str | None:
    """The expert layer (module name) a state-dict key belongs to, or None."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        if name in layers:
            return name
    return None


@torch.no_grad()
def folded_state_dict(adapter, lang: str | None, fold: bool = True) -> dict[str, torch.Tensor]:
    """The plain Whisper state dict of a model with expert layers: each expert layer's base
    weight plus (with `fold`) the update of the shared experts and language `lang`'s (None:
    shared only), computed as `ExpertLoRALinear.merge` does; the model is not changed."""
    weights = adapter.fold_weights(lang) if fold else None
    layers = adapter.layers
    out: dict[str, torch.Tensor] = {}
    for key, value in adapter.model.state_dict().items():
        name = _layer_of(key, layers)
        if name is None:
            out[key] = value
            continue
        prefix = f"{name}.base_layer."
        if not key.startswith(prefix):
            continue  # the experts and routers themselves
        leaf = key[len(prefix) :]
        if leaf == "weight" and weights is not None:
            delta = layers[name].delta_weight(weights=weights)
            value = value + delta.to(device=value.device, dtype=value.dtype)
        out[f"{name}.{leaf}"] = value
    return out


def check_foldable(export: ExpertExport) -> None:
    """MergeError unless the set routes by language (then each language folds exactly)."""
    router = export.adapter.config.router
    if router != "language":
        raise MergeError(
            f"{export.folder}: router {router!r} weighs the experts per input, so no single "
            "plain model or adapter equals one language; only sets with the language router "
            "fold per language (serve this set with `babelora serve --experts`)"
        )


def fold_language(export: ExpertExport, lang: str) -> ExportSource:
    """`lang` folded out of the set: a plain Whisper (MergeError when the router is not the
    language router, LanguageError when the set has no such language)."""
    from babelora.languages import check_lang

    lang = check_lang(lang)
    check_foldable(export)
    export.adapter.context.lang_index(lang)  # LanguageError naming the set's languages
    method = set_method(export.adapter.config)
    return replace(
        export.base,
        state=folded_state_dict(export.adapter, lang),
        method=method,
        language=lang,
    )


def check_dtype(dtype: str, allowed: tuple[str, ...]) -> str:
    if dtype not in allowed:
        raise ConfigError(f"--dtype must be one of {', '.join(allowed)}, got {dtype!r}")
    return dtype
