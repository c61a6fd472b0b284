"""Merge inputs as task-vector providers: tau(key) = theta_input(key) - theta_0(key).

A full checkpoint gives tau for every tensor; a LoRA adapter only for the tensors it adapts
(delta_W = scale * B @ A, see lora_io), and None elsewhere (its model equals the base there).
Each provider reads one tensor (a LoRA: one A and one B) per call and keeps nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from babelora.errors import MergeError
from babelora.merging.lora_io import LoraAdapter, is_lora_adapter
from babelora.merging.sources import (
    StateDictSource,
    TensorSource,
    check_same_architecture,
    open_checkpoint,
)


@dataclass
class FullInput:
    """A full fine-tuned checkpoint."""

    label: str
    source: TensorSource
    partial: bool = False  # tensors it lacks are the base's
    kind: str = "full"

    def __post_init__(self) -> None:
        self._own = set(self.source.names())

    def changes(self, key: str) -> bool:
        return not self.partial or key in self._own

    def task_vector(self, key: str, base: Tensor) -> Tensor | None:
        if self.partial and key not in self._own:
            return None
        # a private copy, so the in-place subtraction never touches a caller's state dict
        return self.source.get(key).to(base.device, base.dtype, copy=True).sub_(base)

    def validate(self, base: TensorSource, keys: Iterable[str], base_spec: str | None) -> None:
        """MergeError on another architecture, extra or missing tensors, or other shapes."""
        check_same_architecture(base, self.source, self.label)
        own = self._own
        base_names = set(base.names())
        extra = [k for k in sorted(own - base_names) if not self._is_tied_copy(k, base_names)]
        if extra:
            raise MergeError(
                f"input {self.label!r} ({self.source.name}) has tensor {extra[0]!r} that the "
                f"base ({base.name}) lacks ({len(extra)} such): different architectures"
            )
        for key in keys:
            if key not in own and self.partial:
                continue
            if key not in own:
                raise MergeError(
                    f"input {self.label!r} ({self.source.name}) is missing tensor {key!r} "
                    "(set inputs[].partial: true if it holds only the changed tensors)"
                )
            got, want = self.source.meta(key).shape, base.meta(key).shape
            if got != want:
                raise MergeError(
                    f"input {self.label!r} ({self.source.name}): tensor {key!r} has shape "
                    f"{got} but the base has {want}"
                )

    def _is_tied_copy(self, key: str, base_names: set[str]) -> bool:
        """An extra tensor equal to a same-shaped one the base has is a tied weight saved twice
        (e.g. proj_out.weight = embed_tokens.weight); the base keeps one name, so it is ignored."""
        shape = self.source.meta(key).shape
        value = self.source.get(key)
        return any(
            self.source.meta(other).shape == shape and torch.equal(self.source.get(other), value)
            for other in sorted(self._own & base_names)
        )


@dataclass
class LoraInput:
    """A PEFT LoRA adapter, merged on its full update delta_W (never on A and B separately)."""

    label: str
    adapter: LoraAdapter
    check_base_name: bool = True
    kind: str = "lora"

    @property
    def source(self) -> TensorSource:
        return self.adapter.source

    def changes(self, key: str) -> bool:
        return key in self.adapter.targets

    def task_vector(self, key: str, base: Tensor) -> Tensor | None:
        return self.adapter.delta(key, base)

    def validate(self, base: TensorSource, keys: Iterable[str], base_spec: str | None) -> None:
        self.adapter.check_base(base, base_spec, self.check_base_name, self.label)


MergeInput = FullInput | LoraInput


def open_input(
    path: str | Path | None,
    label: str,
    kind: str = "auto",
    allow_pickle: bool = False,
    check_base: bool = True,
    source: TensorSource | Mapping[str, Tensor] | None = None,
    partial: bool = False,
) -> MergeInput:
    """Open an input from a path (full checkpoint or LoRA folder) or a Python source."""
    if source is not None:
        if isinstance(source, Mapping):
            source = StateDictSource(source, name=label)
        return FullInput(label, source, partial)
    if path is None:
        raise MergeError(f"input {label!r}: no path (and no Python source given)")
    path = Path(path).expanduser()
    if not path.exists():
        raise MergeError(f"input {label!r}: {path}: no such file or folder")
    if kind == "lora" or (kind == "auto" and is_lora_adapter(path)):
        return LoraInput(label, LoraAdapter(path, allow_pickle), check_base)
    return FullInput(label, open_checkpoint(path, allow_pickle), partial)


def input_seed(seed: int, label: str, key: str) -> int:
    """A 63-bit seed from (recipe seed, input label, tensor name): runs repeat, and the draws do
    not depend on the order of inputs or tensors."""
    digest = hashlib.sha256(f"{seed}\0{label}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generators_for(seed: int, labels: list[str], key: str, device: str) -> list[torch.Generator]:
    return [
        torch.Generator(device=device).manual_seed(input_seed(seed, label, key)) for label in labels
    ]
