"""Adapters on disk: PEFT's LoRA format in and out, and babelora's own full expert set.

PEFT format (what `peft.PeftModel.from_pretrained(base, folder)` loads): a folder with
`adapter_config.json` and `adapter_model.safetensors` holding, per module,
`base_model.model.<module>.lora_A.weight` (r, D) and `...lora_B.weight` (O, r); PEFT computes
W0 x + (alpha / r) B A x (alpha / sqrt(r) with `use_rslora`).

- `export_peft`: one expert, or a fold of several (shared + language k), as one PEFT adapter.
  A sum of LoRAs of rank r is exactly a LoRA of rank n*r (A stacked, B side by side), so the
  fold is exact; its alpha keeps the layer's scale.
- `load_peft_expert`: a PEFT adapter into one expert slot (e.g. initialise MoLoRA's language
  experts from trained language adapters). A smaller rank is padded (fresh A rows, zero B
  columns: the update is unchanged and the padding still trains); another alpha is absorbed
  into B.
- `save_adapter_set` / `load_adapter_set`: all experts and routers with their config, for
  resuming and routed inference (routers have no PEFT equivalent).
Nothing here unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from babelora.adapters.config import MoLoRAConfig
from babelora.adapters.inject import AdapterHandle, inject
from babelora.adapters.kernels import flat_b
from babelora.config import build_dataclass, to_dict
from babelora.errors import ConfigError, MergeError, ModelLoadError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
SET_CONFIG = "babelora_experts.json"
SET_WEIGHTS = "babelora_experts.safetensors"
_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(\.[\w-]+)?\.weight")


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename (no half-written file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_peft_adapter(
    path: str | Path,
    modules: dict[str, tuple[Tensor, Tensor]],
    *,
    alpha: float,
    use_rslora: bool = False,
    dropout: float = 0.0,
    base_model_name_or_path: str | None = None,
    provenance: dict | None = None,
) -> Path:
    """Write LoRA factors {module: (A (r, D), B (O, r))} as a PEFT adapter folder.

    All modules must share one rank. `provenance` goes to `babelora_export.json` beside the
    adapter (PEFT ignores it).
    """
    path = Path(path)
    ranks = {a.shape[0] for a, _ in modules.values()}
    if len(ranks) != 1:
        raise MergeError(f"{path}: modules have different ranks {sorted(ranks)}")
    rank = ranks.pop()
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (a, b) in modules.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.detach().float().cpu().contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.detach().float().cpu().contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": int(rank),
        "lora_alpha": float(alpha),
        "lora_dropout": float(dropout),
        "use_rslora": bool(use_rslora),
        "target_modules": sorted(modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "lora_bias": False,
    }
    _atomic_write(
        path / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    text = json.dumps(config, indent=2)
    _atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    if provenance is not None:
        info = json.dumps(provenance, indent=2)
        _atomic_write(
            path / "babelora_export.json", lambda tmp: Path(tmp).write_text(info, "utf-8")
        )
    return path


@dataclass
class PeftAdapter:
    """A PEFT LoRA adapter read from disk: factors and scale per module."""

    modules: dict[str, tuple[Tensor, Tensor]]
    scaling: dict[str, float]
    config: dict = field(default_factory=dict)


def _pattern(patterns: dict, name: str, default):
    for key, value in patterns.items():  # PEFT's get_pattern_key rule
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def read_peft_adapter(path: str | Path) -> PeftAdapter:
    """Read a PEFT LoRA folder; unsupported variants (DoRA, lora_bias, embeddings) raise."""
    path = Path(path)
    cfg_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    if cfg_file.is_file() and not weights_file.is_file() and (path / "adapter_model.bin").is_file():
        raise ModelLoadError(
            f"{path}: holds adapter_model.bin, a pickle that can run code when loaded; only "
            f"{WEIGHTS_NAME} is read (convert it with safetensors.torch.save_file)"
        )
    if not cfg_file.is_file() or not weights_file.is_file():
        raise ModelLoadError(
            f"{path}: not a PEFT adapter folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{cfg_file}: not valid JSON ({err})") from None
    if config.get("peft_type") != "LORA":
        raise ModelLoadError(f"{cfg_file}: peft_type {config.get('peft_type')!r} is not LORA")
    for flag in ("use_dora", "lora_bias"):
        if config.get(flag):
            raise ModelLoadError(f"{cfg_file}: {flag}=true is not supported by expert layers")
    try:
        tensors = load_file(str(weights_file))
    except Exception as err:  # safetensors raises its own error types
        raise ModelLoadError(f"{weights_file}: cannot read safetensors ({err})") from None
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        m = _KEY.fullmatch(key)
        if m is None:
            raise ModelLoadError(f"{weights_file}: unsupported tensor {key!r} (only lora_A/lora_B)")
        parts.setdefault(m["module"], {})[m["ab"]] = value
    modules, scaling = {}, {}
    alpha = config.get("lora_alpha", 8)
    for name, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ModelLoadError(f"{weights_file}: module {name} lacks lora_A or lora_B")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise ModelLoadError(f"{weights_file}: {name} has bad LoRA shapes {a.shape}, {b.shape}")
        r = a.shape[0]
        mod_alpha = _pattern(config.get("alpha_pattern") or {}, name, alpha)
        scaling[name] = mod_alpha / (math.sqrt(r) if config.get("use_rslora") else r)
        modules[name] = (a, b)
    return PeftAdapter(modules, scaling, config)


def export_peft(
    handle: AdapterHandle,
    path: str | Path,
    *,
    lang: str | None = None,
    expert: int | None = None,
    weights: Tensor | None = None,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Save one expert, or shared + language `lang`'s experts, or given weights, as PEFT.

    Exactly one of `lang`, `expert`, `weights` may be given; none means all shared experts
    (plain LoRA). The saved adapter, loaded in plain PEFT on the same base model, gives the same
    outputs as the expert model routed to that language.
    """
    if sum(v is not None for v in (lang, expert, weights)) > 1:
        raise ConfigError("export_peft: give at most one of lang, expert, weights")
    cfg = handle.config
    if expert is not None:
        if not 0 <= expert < cfg.num_total:
            raise ConfigError(f"export_peft: no expert {expert} (have {cfg.num_total})")
        w = torch.zeros(cfg.num_total)
        w[expert] = 1.0
    elif weights is not None:
        w = torch.as_tensor(weights, dtype=torch.float32).reshape(-1)
    else:
        w = handle.fold_weights(lang)
    if w.numel() != cfg.num_total:
        raise ConfigError(f"export_peft: {w.numel()} weights for {cfg.num_total} experts")
    keep = torch.nonzero(w).flatten()
    if keep.numel() == 0:
        raise MergeError("export_peft: every expert weight is 0; nothing to export")
    lora = cfg.lora
    single = keep.numel() == 1 and float(w[keep[0]]) == 1.0
    modules = {}
    for name, layer in handle.layers.items():
        A, B = layer.lora_A.detach()[keep], layer.lora_B.detach()[keep]  # (n, r, D), (n, O, r)
        B = B * w[keep].to(B)[:, None, None]
        modules[name] = (A.reshape(-1, A.shape[-1]), flat_b(B))
    rank = lora.rank * keep.numel()
    if single:  # the expert as trained: same rank, alpha and rsLoRA flag
        alpha, rslora = lora.alpha, lora.use_rslora
    else:  # rank n*r; alpha chosen so that alpha / (n*r) is the layer's scale
        alpha, rslora = lora.scaling * rank, False
    names = handle.expert_names()
    provenance = {"experts": [names[i] for i in keep.tolist()], "weights": w[keep].tolist()}
    return write_peft_adapter(
        path,
        modules,
        alpha=alpha,
        use_rslora=rslora,
        dropout=lora.dropout,
        base_model_name_or_path=base_model_name_or_path,
        provenance=provenance,
    )


@dataclass
class LoadReport:
    """Which expert layers a PEFT adapter filled, and which it does not touch (B set to 0)."""

    expert: int
    loaded: list[str]
    missing: list[str]


@torch.no_grad()
def load_peft_expert(
    handle: AdapterHandle,
    path: str | Path,
    *,
    lang: str | None = None,
    expert: int | None = None,
    strict: bool = False,
) -> LoadReport:
    """Copy a PEFT LoRA adapter into one expert slot of every layer (by module name).

    The slot is language `lang`'s expert (one expert per language) or index `expert`. Modules
    the adapter lacks get B = 0 in that slot (the adapter does not change them), or raise with
    `strict`. Modules the adapter has but the handle does not wrap always raise.
    """
    cfg = handle.config
    if (lang is None) == (expert is None):
        raise ConfigError("load_peft_expert: give exactly one of lang or expert")
    if lang is not None:
        if cfg.experts_per_lang != 1 or cfg.num_experts:
            raise ConfigError(
                "load_peft_expert(lang=...) needs one expert per language; use expert="
            )
        expert = cfg.num_shared + handle.context.lang_index(lang)
    if not 0 <= expert < cfg.num_total:
        raise ConfigError(f"load_peft_expert: no expert {expert} (have {cfg.num_total})")
    adapter = read_peft_adapter(path)
    extra = sorted(set(adapter.modules) - set(handle.layers))
    if extra:
        raise ModelLoadError(
            f"{path}: adapter targets {extra[0]} (and {len(extra) - 1} more) which this model "
            f"has no expert layer for; inject with those targets"
        )
    loaded, missing = [], []
    for name, layer in handle.layers.items():
        if name not in adapter.modules:
            missing.append(name)
            layer.lora_B[expert].zero_()
            continue
        a, b = adapter.modules[name]
        r = a.shape[0]
        if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
            raise ModelLoadError(
                f"{path}: {name} is {b.shape[0]}x{a.shape[1]} in the adapter but "
                f"{layer.out_features}x{layer.in_features} in the model"
            )
        if r > layer.rank:
            raise ModelLoadError(f"{path}: {name} has rank {r} > expert rank {layer.rank}")
        ratio = adapter.scaling[name] / layer.scaling
        bound = 1.0 / math.sqrt(layer.in_features)
        layer.lora_A[expert, r:].uniform_(-bound, bound)  # padding rows: fresh, trainable
        layer.lora_A[expert, :r] = a.to(layer.lora_A)
        layer.lora_B[expert].zero_()
        layer.lora_B[expert, :, :r] = (b.double() * ratio).to(layer.lora_B)
        loaded.append(name)
    if strict and missing:
        raise ModelLoadError(f"{path}: adapter lacks {missing[0]} (and {len(missing) - 1} more)")
    return LoadReport(expert, loaded, missing)


def load_language_adapters(
    handle: AdapterHandle, paths: dict[str, str | Path]
) -> dict[str, LoadReport]:
    """Initialise each language's expert from its trained PEFT adapter folder."""
    return {lang: load_peft_expert(handle, p, lang=lang) for lang, p in paths.items()}


def save_adapter_set(handle: AdapterHandle, path: str | Path) -> Path:
    """Save every expert and router with the config (babelora format, safetensors + JSON)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in handle.adapter_state_dict().items()}
    _atomic_write(path / SET_WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    text = json.dumps(to_dict(handle.config), indent=2)
    _atomic_write(path / SET_CONFIG, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def load_adapter_set(model: nn.Module, path: str | Path) -> AdapterHandle:
    """Inject the saved config into `model` and load the saved experts and routers."""
    path = Path(path)
    if not (path / SET_CONFIG).is_file() or not (path / SET_WEIGHTS).is_file():
        raise ModelLoadError(f"{path}: no {SET_CONFIG} / {SET_WEIGHTS} (not a saved expert set)")
    try:
        data = json.loads((path / SET_CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{path / SET_CONFIG}: not valid JSON ({err})") from None
    try:
        state = load_file(str(path / SET_WEIGHTS))
    except Exception as err:  # safetensors raises its own error types
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelLoadError(f"{path / SET_WEIGHTS}: cannot read safetensors ({msg})") from None
    handle = inject(model, build_dataclass(MoLoRAConfig, data))
    try:
        handle.load_adapter_state_dict(state)
    except ConfigError as err:
        handle.unload(merge=False)  # give the caller its model back as it was
        raise ModelLoadError(f"{path}: {err}") from None
    return handle
