"""Which base model an adapter set was trained on, and a clear error when it is loaded elsewhere.

A LoRA update only means something on the weights it was trained against. The signature,
written as `babelora_base.json` beside the adapter files (PEFT ignores it), holds:
- shapes (config fields): another architecture;
- `samples`: 16 values at fixed positions of ~5 weight matrices per layer (conv, embeddings,
  attention q/v, fc1/fc2, final norms), compared element by element with a tolerance of 2^-7
  relative (twice bf16's rounding) plus 1e-3 of the tensor's RMS. Another checkpoint of the same
  architecture (tiny.en vs tiny) or a perturbed or fine-tuned copy moves many of them; fp16 and
  bf16 copies of the same base do not;
- `weights`: norm and 8 random +-1 projections of three matrices (diffuse changes anywhere in
  them, e.g. at positions the samples miss).
`check_base` compares a model with a folder's signature (folders without one, e.g. PEFT adapters
trained elsewhere, pass unchecked); `check_base_tensors` does the same for tensors read one at a
time (the merge's streamed base). A mismatch raises BaseMismatchError, one line naming both bases
and what differs.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelora.errors import MergeError, ModelLoadError

BASE_FILE = "babelora_base.json"
FORMAT = 2  # 1: shapes + projections only (still read)
SHAPE_KEYS = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "vocab_size",
    "num_mel_bins",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
)
SIGNATURE_TOLERANCE = 1e-2  # norms, relative; bf16 rounding moves them by about 2e-3
PROJECTION_TOLERANCE = 2e-2  # projections, relative to the norm; bf16 moves them < 1e-2
SIGNED = ("encoder.conv1.weight", "encoder.layers.0.fc1.weight", "decoder.layers.0.fc1.weight")
PROJECTIONS = 8  # random +-1 projections per tensor; another checkpoint moves at least one
SAMPLED = re.compile(
    r"(encoder\.conv[12]|decoder\.embed_tokens|(en|de)coder\.layer_norm"
    r"|(en|de)coder\.layers\.\d+\.(fc1|fc2|self_attn\.[qv]_proj|encoder_attn\.[qv]_proj))\.weight"
)
SAMPLES = 16  # values per sampled tensor
SAMPLE_REL = 2.0**-7  # bf16 rounds to within 2^-8 relative; allow it on both sides
SAMPLE_ABS = 1e-3  # of the tensor's RMS: fp16 subnormals, exact zeros
DEFAULT_HINT = "load them on their base model"
_PART = re.compile(r"(?:^|\.)((?:encoder|decoder)\..+)$")


class BaseMismatchError(ModelLoadError, MergeError):
    """Adapters meet another base model than the one they were trained on."""


def canonical_name(name: str) -> str | None:
    """`encoder.layers.0.fc1.weight` for any wrapping of a base tensor (transformers' `model.`,
    PEFT's `base_model.model.` and `.base_layer`, babelora's expert layers); None for adapter
    tensors and names outside the encoder and decoder."""
    if ".lora_" in name or "modules_to_save" in name:
        return None
    m = _PART.search(name.replace(".base_layer.", "."))
    return m.group(1) if m else None


class _Tensors:
    """A base model's tensors by canonical name, read on demand."""

    def __init__(
        self, names: Iterable[str], get: Callable[[str], torch.Tensor], config: Any
    ) -> None:
        self._get = get
        self.index: dict[str, str] = {}
        for name in names:
            short = canonical_name(name)
            if short is not None:
                self.index.setdefault(short, name)
        self.shapes = {k: _config_value(config, k) for k in SHAPE_KEYS}

    def get(self, short: str) -> torch.Tensor | None:
        name = self.index.get(short)
        return None if name is None else self._get(name).detach()


def _config_value(config: Any, key: str) -> Any:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def _of_model(model: nn.Module) -> _Tensors:
    params = dict(model.named_parameters())
    return _Tensors(params, params.__getitem__, getattr(model, "config", None))


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1)


def _sketch(t: torch.Tensor) -> dict[str, Any]:
    """L2 norm and projections on fixed random sign vectors (float64)."""
    flat = _flat(t).double().cpu()
    g = torch.Generator().manual_seed(flat.numel())
    signs = torch.randint(0, 2, (PROJECTIONS, flat.numel()), generator=g).double() * 2 - 1
    return {"norm": float(flat.norm()), "projections": (signs @ flat).tolist()}


def _sample(short: str, t: torch.Tensor) -> dict[str, Any]:
    """SAMPLES values at positions fixed by the tensor's name, and the tensor's RMS."""
    flat = _flat(t)
    g = torch.Generator().manual_seed(zlib.crc32(short.encode()))
    index = torch.randint(0, flat.numel(), (min(SAMPLES, flat.numel()),), generator=g)
    values = flat[index.to(flat.device)].double().cpu()
    rms = float(flat.double().norm()) / max(flat.numel(), 1) ** 0.5
    return {"index": index.tolist(), "values": values.tolist(), "rms": rms}


def _signature(base: _Tensors, name: str | None) -> dict[str, Any]:
    weights, samples = {}, {}
    for short in base.index:
        if short not in SIGNED and not SAMPLED.fullmatch(short):
            continue  # never read (a streamed base reads only what it signs)
        t = base.get(short)
        assert t is not None
        if short in SIGNED:
            weights[short] = _sketch(t)
        if SAMPLED.fullmatch(short):
            samples[short] = _sample(short, t)
    return {
        "format": FORMAT,
        "base_model": name,
        "shapes": base.shapes,
        "weights": weights,
        "samples": samples,
    }


def base_signature(model: nn.Module, name: str | None = None) -> dict[str, Any]:
    """Shapes, weight sketches and samples that identify a Whisper base model."""
    return _signature(_of_model(model), name)


def tensors_signature(
    names: Iterable[str],
    get: Callable[[str], torch.Tensor],
    config: Mapping[str, Any] | None,
    name: str | None = None,
) -> dict[str, Any]:
    """`base_signature` of a checkpoint read one tensor at a time (`get(name)`)."""
    return _signature(_Tensors(names, get, config), name)


def _same(want: dict, have: dict) -> bool:
    """Same tensor up to low-precision rounding: norm within 1%, projections within 2% of it
    (a different tensor moves each projection by about its norm)."""
    norm = max(want["norm"], 1e-12)
    if abs(want["norm"] - have["norm"]) > SIGNATURE_TOLERANCE * norm:
        return False
    pairs = zip(want["projections"], have["projections"])
    return all(abs(a - b) <= PROJECTION_TOLERANCE * norm for a, b in pairs)


def _sample_diff(want: dict, t: torch.Tensor) -> str | None:
    """'k of n sampled values, up to x% apart' when the saved samples do not match `t`."""
    flat = _flat(t)
    index = torch.tensor(want["index"], dtype=torch.long)
    if len(want["values"]) != len(index) or (len(index) and int(index.max()) >= flat.numel()):
        return "another size"
    have = flat[index.to(flat.device)].double().cpu()
    saved = torch.tensor(want["values"], dtype=torch.float64)
    gap = (have - saved).abs()
    bound = SAMPLE_REL * torch.maximum(have.abs(), saved.abs()) + SAMPLE_ABS * want["rms"]
    bad = gap > bound
    if not bool(bad.any()):
        return None
    scale = torch.maximum(saved.abs(), torch.full_like(saved, max(want["rms"], 1e-30)))
    worst = float((gap / scale)[bad].max())
    return f"{int(bad.sum())} of {len(index)} sampled values differ, up to {worst:.1%}"


def signature_mismatch(saved: Mapping[str, Any], base: _Tensors) -> str | None:
    """What differs between a saved signature and a base model (None: the same base)."""
    for key, want in (saved.get("shapes") or {}).items():
        have = base.shapes.get(key)
        if want is not None and have is not None and want != have:
            return f"{key}={want} there, {key}={have} here"
    for key, want in (saved.get("samples") or {}).items():
        t = base.get(key)
        if t is None:
            return f"it has no tensor {key}"
        why = _sample_diff(want, t)
        if why:
            return f"{key}: {why}"
    for key, want in (saved.get("weights") or {}).items():
        t = base.get(key)
        if t is not None and not _same(want, _sketch(t)):
            return f"{key}: its norm or projections differ"
    return None


def read_base_signature(folder: str | Path) -> dict[str, Any] | None:
    """The signature saved in `folder` (None when there is none)."""
    path = Path(folder) / BASE_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(saved, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(saved).__name__}")
    return saved


def _check(folder: str | Path, base: _Tensors, name: str | None, hint: str) -> None:
    saved = read_base_signature(folder)
    if saved is None:
        return
    try:
        why = signature_mismatch(saved, base)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelLoadError(f"{Path(folder) / BASE_FILE}: malformed signature ({err})") from None
    if why is not None:
        trained_on = saved.get("base_model") or "an unnamed model"
        raise BaseMismatchError(
            f"{folder}: adapters were trained on {trained_on}, not on {name or 'the given model'} "
            f"({why}); {hint}"
        )


def check_base(
    folder: str | Path, model: nn.Module, name: str | None = None, *, hint: str = DEFAULT_HINT
) -> None:
    """Raise BaseMismatchError when `folder`'s adapters were trained on another base than `model`
    (`name` names it in the message, `hint` says what to do). No signature: no check."""
    if (Path(folder) / BASE_FILE).is_file():
        _check(folder, _of_model(model), name, hint)


def check_base_tensors(
    folder: str | Path,
    names: Iterable[str],
    get: Callable[[str], torch.Tensor],
    config: Mapping[str, Any] | None,
    name: str | None = None,
    *,
    hint: str = DEFAULT_HINT,
) -> None:
    """`check_base` against a checkpoint read one tensor at a time (`get(name)`)."""
    if (Path(folder) / BASE_FILE).is_file():
        _check(folder, _Tensors(names, get, config), name, hint)


def hub_name(name: str | None) -> str | None:
    """PEFT's `base_model_name_or_path` for a base babelora names `name`: an offline model as
    its OpenAI hub id (`tiny.en` -> `openai/whisper-tiny.en`), a folder as its absolute path, a
    hub id as it is; None for an unnamed or random model."""
    if not name or name.startswith("tiny-random-whisper"):
        return None
    from babelora.models.offline import OFFLINE_MODELS

    if name in OFFLINE_MODELS:
        return f"openai/whisper-{name}"
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def save_signature(folder: str | Path, signature: Mapping[str, Any]) -> Path:
    """Write a signature to `folder`; a PEFT adapter there whose adapter_config.json leaves
    `base_model_name_or_path` empty (or gives an offline name) gets the base's hub id or path."""
    folder = Path(folder)
    path = folder / BASE_FILE
    path.write_text(json.dumps(signature, indent=2), encoding="utf-8")
    config_path = folder / "adapter_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        given = config.get("base_model_name_or_path")
        from babelora.models.offline import OFFLINE_MODELS

        if not given or given in OFFLINE_MODELS:
            better = hub_name(given or signature.get("base_model"))
            if better and better != given:
                config["base_model_name_or_path"] = better
                config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def write_base_signature(folder: str | Path, model: nn.Module, name: str | None = None) -> Path:
    """Write `model`'s signature (named `name`) beside the adapter files in `folder`."""
    return save_signature(folder, base_signature(model, name))
