"""PEFT LoRA adapters as full updates, and truncated-SVD re-factorisation back to LoRA.

Reading: every adapted module's update is delta_W = scale * B @ A (transposed for
`fan_in_fan_out` and for embeddings), with PEFT's scaling conventions:
scale = alpha / r, or alpha / sqrt(r) with `use_rslora`; r is the rank stored in the weights
(checked against `rank_pattern`), alpha comes from `alpha_pattern` else `lora_alpha`. A `lora_bias`
adds scale * B.bias to the module's bias; full tensors in the adapter (`modules_to_save`, `bias:
all`, saved embedding layers) replace the base tensor, so their update is tensor - base. DoRA and
other variants are refused: their update is not linear in B @ A.

Writing: delta ~= B A with B = U_r sqrt(S_r), A = sqrt(S_r) V_r^T (Eckart-Young), saved with
lora_alpha = r so PEFT's scale is 1.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import torch
from safetensors.torch import save_file
from torch import Tensor

from babelora.errors import MergeError
from babelora.merging.sources import (
    SafetensorsSource,
    StateDictSource,
    TensorSource,
    load_pickle,
)
from babelora.models.base_check import (
    BASE_FILE,
    BaseMismatchError,
    check_base_tensors,
    hub_name,
    read_base_signature,
    save_signature,
    tensors_signature,
)

PREFIX = "base_model.model."
MISMATCH_HINT = (
    "merge onto the base they were trained on, or set inputs[].check_base: false "
    "(--ignore-base-mismatch) to merge anyway"
)


def is_lora_adapter(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "adapter_config.json").is_file()


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a name ending in it."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


@dataclass(frozen=True)
class LoraModule:
    """One adapted tensor: where A and B live and how the update is formed."""

    target: str  # base tensor name, e.g. model.encoder.layers.0.fc1.weight
    a_key: str
    b_key: str
    kind: str  # "linear" | "embedding" | "bias"
    scale: float


class LoraAdapter:
    """A PEFT LoRA adapter folder read one module at a time as full updates delta_W."""

    def __init__(self, folder: str | Path, allow_pickle: bool = False) -> None:
        self.folder = Path(folder)
        self.name = str(self.folder)
        config_path = self.folder / "adapter_config.json"
        if not config_path.is_file():
            raise MergeError(f"{self.folder}: no adapter_config.json (not a PEFT adapter)")
        try:
            self.adapter_config: dict[str, Any] = json.loads(config_path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise MergeError(f"{config_path}: cannot read JSON ({err})") from None
        cfg = self.adapter_config
        if cfg.get("peft_type", "LORA") != "LORA":
            raise MergeError(f"{config_path}: peft_type {cfg.get('peft_type')!r} is not LORA")
        if cfg.get("use_dora"):
            raise MergeError(f"{config_path}: DoRA adapters are not supported (update is not B@A)")
        self.base_name: str | None = cfg.get("base_model_name_or_path")
        self.source = self._open_weights(allow_pickle)
        self.modules: dict[str, LoraModule] = {}
        self.full: dict[str, str] = {}  # base tensor name -> adapter key (modules_to_save)
        self._parse()

    def _open_weights(self, allow_pickle: bool) -> TensorSource:
        file = self.folder / "adapter_model.safetensors"
        if file.is_file():
            return SafetensorsSource([file], str(file))
        pickled = self.folder / "adapter_model.bin"
        if pickled.is_file():
            return StateDictSource(load_pickle(pickled, allow_pickle), name=str(pickled))
        raise MergeError(f"{self.folder}: no adapter_model.safetensors")

    def _scale(self, module: str, rank: int) -> float:
        cfg = self.adapter_config
        expected = _pattern_value(cfg.get("rank_pattern") or {}, module, cfg.get("r", rank))
        if expected != rank:
            raise MergeError(
                f"{self.folder}: {module} has rank {rank} in the weights but adapter_config "
                f"says r={expected}"
            )
        alpha = float(
            _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", rank))
        )
        return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank

    def _parse(self) -> None:
        keys = set(self.source.names())
        for key in sorted(keys):
            if not key.startswith(PREFIX):
                raise MergeError(f"{self.folder}: unexpected tensor {key!r} (no {PREFIX!r} prefix)")
            name = key[len(PREFIX) :]
            if "lora_magnitude_vector" in name:
                raise MergeError(f"{self.folder}: {key} is a DoRA magnitude: DoRA is not supported")
            match = re.fullmatch(r"(.+)\.lora_(A|embedding_A)(\.weight)?", name)
            if match:
                module, part, suffix = match.groups()
                b_part = "B" if part == "A" else "embedding_B"
                b_key = f"{PREFIX}{module}.lora_{b_part}{suffix or ''}"
                if b_key not in keys:
                    raise MergeError(f"{self.folder}: {key} has no matching {b_key}")
                rank = self.source.meta(key).shape[0]
                scale = self._scale(module, rank)
                kind = "linear" if part == "A" else "embedding"
                target = f"{module}.weight"
                self.modules[target] = LoraModule(target, key, b_key, kind, scale)
                bias_key = f"{PREFIX}{module}.lora_B.bias"
                if bias_key in keys:
                    self.modules[f"{module}.bias"] = LoraModule(
                        f"{module}.bias", "", bias_key, "bias", scale
                    )
                continue
            if re.search(r"\.lora_(B|embedding_B)(\.weight|\.bias)?$", name):
                continue  # consumed with its A
            if ".lora_" in name or "trainable_tokens" in name:
                raise MergeError(f"{self.folder}: unsupported adapter tensor {key!r}")
            # saved embedding layers (save_embedding_layers) sit under the LoRA wrapper's name
            self.full[name.replace(".base_layer.", ".")] = key

    @property
    def targets(self) -> set[str]:
        """Base tensor names this adapter changes."""
        return set(self.modules) | set(self.full)

    def check_base(
        self, base: TensorSource, base_spec: str | None, check_name: bool, label: str
    ) -> None:
        """MergeError if the base lacks an adapted module or shapes differ; with `check_name`,
        also when the adapter's base signature (babelora_base.json, which babelora writes) does
        not match the base's weights, or, without a signature, when the base names differ."""
        if check_name and has_signature(self.folder):
            check_signature(self.folder, base, base_spec, label)
        elif check_name and self.base_name and not _same_model(self.base_name, base_spec, base):
            raise MergeError(
                f"input {label!r} ({self.folder}) is a LoRA for base {self.base_name!r} but the "
                f"recipe's base is {base_spec!r}; set inputs[].check_base: false if they are the "
                "same model"
            )
        base_keys = set(base.names())
        for target in sorted(self.targets):
            if target not in base_keys:
                raise MergeError(
                    f"input {label!r} ({self.folder}) adapts {target!r}, which the base "
                    f"({base.name}) lacks: the adapter belongs to another architecture"
                )
            want = base.meta(target).shape
            got = self._update_shape(target)
            if tuple(got) != tuple(want):
                raise MergeError(
                    f"input {label!r} ({self.folder}): the update of {target!r} has shape "
                    f"{tuple(got)} but the base tensor has {tuple(want)}: base does not match"
                )

    def _update_shape(self, target: str) -> tuple[int, ...]:
        module = self.modules.get(target)
        if module is None:
            return self.source.meta(self.full[target]).shape
        b_shape = self.source.meta(module.b_key).shape
        if module.kind == "bias":
            return b_shape
        a_shape = self.source.meta(module.a_key).shape
        if module.kind == "embedding" or self.adapter_config.get("fan_in_fan_out"):
            return (a_shape[1], b_shape[0])
        return (b_shape[0], a_shape[1])

    def delta(self, target: str, base: Tensor) -> Tensor | None:
        """delta_W for the base tensor `target` (base given in the compute dtype/device).

        A saved full tensor (modules_to_save, an embedding's base_layer) contributes
        tensor - base, an adapted module scale * B @ A; both add up when both exist.
        """
        update = None
        if target in self.full:
            update = self.source.get(self.full[target]).to(base.device, base.dtype) - base
        module = self.modules.get(target)
        if module is not None:
            lora = self._lora_delta(module, base)
            update = lora if update is None else update + lora
        return update

    def _lora_delta(self, module: LoraModule, base: Tensor) -> Tensor:
        b = self.source.get(module.b_key).to(base.device, base.dtype)
        if module.kind == "bias":
            return b * module.scale
        a = self.source.get(module.a_key).to(base.device, base.dtype)
        update = b @ a  # (out, r) @ (r, in)
        if module.kind == "embedding" or self.adapter_config.get("fan_in_fan_out"):
            update = update.T
        return update * module.scale


def _same_model(adapter_base: str, base_spec: str | None, base: TensorSource) -> bool:
    """Loose name check: the last path component (case-insensitive) of any known name matches."""

    def tail(name: str) -> str:
        return Path(str(name).rstrip("/")).name.lower()

    names = {tail(base_spec or ""), tail(base.name), tail(hub_name(base_spec or base.name) or "")}
    if base.config and base.config.get("_name_or_path"):
        names.add(tail(base.config["_name_or_path"]))
    return tail(adapter_base) in names


def has_signature(folder: str | Path) -> bool:
    return (Path(folder) / BASE_FILE).is_file()


_MATCHED: WeakKeyDictionary[Any, set[str]] = WeakKeyDictionary()  # base -> signatures it matched


def check_signature(
    folder: str | Path, base: TensorSource, base_spec: str | None, label: str
) -> None:
    """BaseMismatchError (a MergeError) when the signature saved in `folder` is not `base`'s
    (shapes or sampled weights differ); a signature that matched this base once is not read
    again (inputs trained on one base share it)."""
    saved = read_base_signature(folder)
    key = json.dumps(saved, sort_keys=True)
    seen = _MATCHED.setdefault(base, set())
    if key in seen:
        return
    try:
        check_base_tensors(
            folder,
            base.names(),
            base.get,
            base.config,
            base_spec or base.name,
            hint=MISMATCH_HINT,
        )
    except BaseMismatchError as err:
        raise BaseMismatchError(f"input {label!r}: {err}") from None
    seen.add(key)


def write_signature(folder: str | Path, base: TensorSource, base_spec: str | None) -> None:
    """The base signature beside a LoRA the merge writes (so decoding can check its base)."""
    names = [k for k in base.names() if base.meta(k).dtype.is_floating_point]
    save_signature(folder, tensors_signature(names, base.get, base.config, base_spec or base.name))


def factorise(delta: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Truncated SVD delta ~= B @ A, B (out, rank), A (rank, in); zero-padded past min(shape)."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    b = delta.new_zeros(delta.shape[0], rank)
    a = delta.new_zeros(rank, delta.shape[1])
    b[:, :r] = u[:, :r] * root
    a[:r] = root[:, None] * vh[:r]
    return b, a


def relative_error(delta: Tensor, b: Tensor, a: Tensor) -> float:
    """||delta - B A||_F / ||delta||_F (0 for a zero delta)."""
    norm = float(torch.linalg.matrix_norm(delta))
    if norm == 0.0:
        return 0.0
    return float(torch.linalg.matrix_norm(delta - b.to(delta.dtype) @ a.to(delta.dtype))) / norm


def write_lora_adapter(
    folder: Path, factors: dict[str, tuple[Tensor, Tensor]], rank: int, base_name: str
) -> None:
    """Write a PEFT adapter: factors maps base tensor names (`<module>.weight`) to (B, A)."""
    tensors: dict[str, Tensor] = {}
    for target, (b, a) in factors.items():
        module = target.removesuffix(".weight")
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = b.contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_name,
        "r": rank,
        "lora_alpha": rank,  # scale alpha / r = 1: B @ A is the merged update itself
        "target_modules": sorted(t.removesuffix(".weight") for t in factors),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
