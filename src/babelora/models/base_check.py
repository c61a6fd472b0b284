"""Which base model an adapter set was trained on, and a clear error when it is loaded elsewhere.

A LoRA update only means something on the weights it was trained against. Shapes catch another
architecture (loading would fail obscurely inside `copy_`); a weight sketch (norm and 8 random
+-1 projections of three base matrices, compared with tolerances that fp16/bf16 copies of the
same base pass) catches another checkpoint of the same architecture (e.g. tiny.en vs tiny).
Written as `babelora_base.json` beside the adapter files; PEFT ignores it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelora.errors import ModelLoadError

BASE_FILE = "babelora_base.json"
SHAPE_KEYS = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "vocab_size",
    "num_mel_bins",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
)
SIGNATURE_TOLERANCE = 1e-2  # relative to the norm; bf16 rounding moves it by about 2e-3
SIGNED = ("encoder.conv1.weight", "encoder.layers.0.fc1.weight", "decoder.layers.0.fc1.weight")
PROJECTIONS = 8  # random +-1 projections per tensor; another checkpoint moves at least one


def _base_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A few base tensors that differ between checkpoints (never adapter weights)."""
    found = {}
    for name, param in model.named_parameters():
        short = name.replace(".base_layer", "")
        for key in SIGNED:
            if short.endswith(key) and ".lora_" not in name:
                found[key] = param
    return found


def _sketch(t: torch.Tensor) -> dict[str, Any]:
    """L2 norm and projections on fixed random sign vectors (float64)."""
    flat = t.detach().double().reshape(-1).cpu()
    g = torch.Generator().manual_seed(flat.numel())
    signs = torch.randint(0, 2, (PROJECTIONS, flat.numel()), generator=g).double() * 2 - 1
    return {"norm": float(flat.norm()), "projections": (signs @ flat).tolist()}


def base_signature(model: nn.Module, name: str | None = None) -> dict[str, Any]:
    """Shapes and weight sketches that identify a Whisper base model."""
    config = getattr(model, "config", None)
    shapes = {k: getattr(config, k, None) for k in SHAPE_KEYS}
    sketches = {key: _sketch(t) for key, t in _base_tensors(model).items()}
    return {"base_model": name, "shapes": shapes, "weights": sketches}


def _same(want: dict, have: dict) -> bool:
    """Same tensor up to low-precision rounding: norms within 1%, projections within 5% of
    the norm (a different tensor moves each projection by about its norm)."""
    norm = max(want["norm"], 1e-12)
    if abs(want["norm"] - have["norm"]) > SIGNATURE_TOLERANCE * norm:
        return False
    pairs = zip(want["projections"], have["projections"])
    return all(abs(a - b) <= 5 * SIGNATURE_TOLERANCE * norm for a, b in pairs)


def write_base_signature(folder: str | Path, model: nn.Module, name: str | None = None) -> Path:
    path = Path(folder) / BASE_FILE
    path.write_text(json.dumps(base_signature(model, name), indent=2), encoding="utf-8")
    return path


def check_base(folder: str | Path, model: nn.Module, name: str | None = None) -> None:
    """Raise ModelLoadError when `folder`'s adapters were trained on another base than `model`.

    Folders without a signature (e.g. plain PEFT adapters from elsewhere) pass unchecked.
    """
    path = Path(folder) / BASE_FILE
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{path}: not valid JSON ({err})") from None
    now = base_signature(model, name)
    trained_on = saved.get("base_model") or "an unnamed model"
    given = name or "the given model"
    for key, want in (saved.get("shapes") or {}).items():
        have = now["shapes"].get(key)
        if want is not None and have is not None and want != have:
            raise ModelLoadError(
                f"{folder}: adapters were trained on {trained_on} ({key}={want}) but "
                f"{given} has {key}={have}; load them on their base model"
            )
    for key, want in (saved.get("weights") or {}).items():
        have = now["weights"].get(key)
        if have is not None and not _same(want, have):
            raise ModelLoadError(
                f"{folder}: adapters were trained on {trained_on}, whose weights differ from "
                f"{given} ({key}); load them on their base model"
            )
