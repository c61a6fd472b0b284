"""Tensor sources: read checkpoints one tensor at a time, with shapes known before reading.

A `TensorSource` lists its tensor names, gives each tensor's shape and dtype without loading it,
and loads one tensor on request. Implementations:
- `SafetensorsSource`: a .safetensors file, a folder with model.safetensors, or a sharded folder
  (model.safetensors.index.json); tensors are read lazily with `safetensors.safe_open`.
- `StateDictSource`: an in-memory state dict (Python callers, pickle files, load_whisper models);
  tied tensors (one storage under two names) keep only their first name, as save_pretrained does.
Pickle files (.bin/.pt/.pth/.ckpt) are refused unless allowed, then read with
`torch.load(weights_only=True)`, which cannot run code.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from torch import Tensor

from babelora.errors import BabeloraError, MergeError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# small files of a transformers folder copied next to a merged model.safetensors
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "added_tokens.json",
    "special_tokens_map.json",
)
# config fields that must agree between base and inputs when both have a config.json
ARCH_FIELDS = (
    "model_type",
    "d_model",
    "hidden_size",
    "encoder_layers",
    "decoder_layers",
    "num_hidden_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "vocab_size",
    "num_mel_bins",
)
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype


class TensorSource(Protocol):
    """Named tensors read one at a time (`names`, `meta`, `get`)."""

    name: str  # for messages: a path or a label
    config: dict[str, Any] | None  # the model's config.json, when known

    def names(self) -> list[str]: ...
    def meta(self, key: str) -> TensorMeta: ...
    def get(self, key: str) -> Tensor: ...
    def write_side_files(self, folder: Path) -> list[str]: ...


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise MergeError(f"{path}: cannot read JSON ({err})") from None


class SafetensorsSource:
    """One or more .safetensors files read lazily (the key -> file map comes from the headers)."""

    def __init__(self, files: list[Path], name: str, folder: Path | None = None) -> None:
        self.name = name
        self.folder = folder
        self.config = None
        if folder is not None and (folder / "config.json").is_file():
            self.config = _read_json(folder / "config.json")
        self._handles = {}
        self._file_of: dict[str, Path] = {}
        for file in files:
            if not file.is_file():
                raise MergeError(f"{name}: shard {file} is missing")
            try:
                handle = safe_open(str(file), framework="pt", device="cpu")
            except Exception as err:  # safetensors raises its own error types
                raise MergeError(f"{file}: not a readable safetensors file ({err})") from None
            self._handles[file] = handle
            for key in handle.keys():  # noqa: SIM118 - safe_open is not iterable
                if key in self._file_of:
                    raise MergeError(f"{name}: tensor {key!r} is in two shards")
                self._file_of[key] = file

    def names(self) -> list[str]:
        return list(self._file_of)

    def _handle(self, key: str):
        if key not in self._file_of:
            raise MergeError(f"{self.name}: no tensor {key!r}")
        return self._handles[self._file_of[key]]

    def meta(self, key: str) -> TensorMeta:
        piece = self._handle(key).get_slice(key)
        code = piece.get_dtype()
        if code not in SAFETENSORS_DTYPES:
            raise MergeError(f"{self.name}: tensor {key!r} has unsupported dtype {code}")
        return TensorMeta(tuple(piece.get_shape()), SAFETENSORS_DTYPES[code])

    def get(self, key: str) -> Tensor:
        return self._handle(key).get_tensor(key)

    def write_side_files(self, folder: Path) -> list[str]:
        copied = []
        if self.folder is not None:
            for name in SIDE_FILES:
                if (self.folder / name).is_file():
                    shutil.copy2(self.folder / name, folder / name)
                    copied.append(name)
        return copied


class StateDictSource:
    """An in-memory state dict; tied duplicates (same storage) keep their first name."""

    def __init__(
        self,
        state_dict: Mapping[str, Tensor],
        name: str = "<state dict>",
        config: dict[str, Any] | None = None,
        extras: list[Any] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        # objects with save_pretrained (config, generation config, tokenizer) for the output
        self._extras = [x for x in extras or [] if hasattr(x, "save_pretrained")]
        self._tensors: dict[str, Tensor] = {}
        seen: set[tuple[int, int, tuple[int, ...]]] = set()
        for key, value in state_dict.items():
            if not isinstance(value, Tensor):
                raise MergeError(f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor")
            ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
            if value.numel() and ident in seen:
                continue  # tied weight, e.g. proj_out.weight = embed_tokens.weight
            seen.add(ident)
            self._tensors[key] = value

    def names(self) -> list[str]:
        return list(self._tensors)

    def meta(self, key: str) -> TensorMeta:
        tensor = self.get(key)
        return TensorMeta(tuple(tensor.shape), tensor.dtype)

    def get(self, key: str) -> Tensor:
        if key not in self._tensors:
            raise MergeError(f"{self.name}: no tensor {key!r}")
        return self._tensors[key].detach()

    def write_side_files(self, folder: Path) -> list[str]:
        before = {p.name for p in folder.iterdir()}
        for extra in self._extras:
            extra.save_pretrained(folder)
        return sorted({p.name for p in folder.iterdir()} - before)


def load_pickle(path: Path, allow_pickle: bool) -> dict[str, Tensor]:
    """torch.load(weights_only=True) a pickle checkpoint, only when the recipe allows it."""
    if not allow_pickle:
        raise MergeError(
            f"{path}: pickle checkpoints can run code when loaded; convert it to safetensors or "
            "set allow_pickle: true (it is then read with torch.load(weights_only=True))"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # UnpicklingError, RuntimeError, ...: all mean "not a state dict"
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or ["?"]
        why = next((line for line in lines if "GLOBAL" in line), lines[0])  # the blocked global
        raise MergeError(f"{path}: not a weights-only state dict ({why[:200]})") from None
    if isinstance(data, Mapping) and not any(isinstance(v, Tensor) for v in data.values()):
        for nested in ("state_dict", "model_state_dict", "model"):
            if isinstance(data.get(nested), Mapping):
                data = data[nested]
                break
    if not isinstance(data, Mapping):
        raise MergeError(f"{path}: expected a state dict, got {type(data).__name__}")
    return dict(data)


def _pickle_source(files: list[Path], name: str, folder: Path | None, allow: bool):
    state: dict[str, Tensor] = {}
    for file in files:
        state.update(load_pickle(file, allow))
    config = (
        _read_json(folder / "config.json")
        if folder and (folder / "config.json").is_file()
        else None
    )
    return StateDictSource(state, name=name, config=config)


def open_checkpoint(path: str | Path, allow_pickle: bool = False) -> TensorSource:
    """A full checkpoint (file or folder) as a TensorSource; errors name the path."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise MergeError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix == ".safetensors":
            return SafetensorsSource([path], name)
        if path.suffix in PICKLE_SUFFIXES:
            return _pickle_source([path], name, None, allow_pickle)
        raise MergeError(f"{path}: unknown checkpoint format (expected .safetensors)")
    for index_name, pickled in (
        ("model.safetensors.index.json", False),
        ("pytorch_model.bin.index.json", True),
    ):
        index = path / index_name
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise MergeError(f"{index}: has no weight_map")
            shards = [path / shard for shard in dict.fromkeys(weight_map.values())]
            if pickled:
                return _pickle_source(shards, name, path, allow_pickle)
            return SafetensorsSource(shards, name, folder=path)
    if (path / "model.safetensors").is_file():
        return SafetensorsSource([path / "model.safetensors"], name, folder=path)
    found = sorted(p for p in path.glob("*.safetensors") if p.name != "adapter_model.safetensors")
    if len(found) == 1:
        return SafetensorsSource(found, name, folder=path)
    if len(found) > 1:
        raise MergeError(f"{path}: {len(found)} .safetensors files but no index.json")
    pickles = [
        path / f for f in ("pytorch_model.bin", "model.pt", "model.pth") if (path / f).is_file()
    ]
    if pickles:
        return _pickle_source(pickles[:1], name, path, allow_pickle)
    listing = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    raise MergeError(f"{path}: no model.safetensors (or index) in the folder; it holds {listing}")


def _is_safetensors_checkpoint(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".safetensors" or path.suffix in PICKLE_SUFFIXES
    return (path / "model.safetensors").is_file() or (
        path / "model.safetensors.index.json"
    ).is_file()


def open_base(spec: str | None, allow_pickle: bool = False) -> TensorSource:
    """The base model theta_0, streamed when it is a safetensors file or folder; anything else
    (an offline name, None = the offline default base, a CTranslate2 folder, a hub id) goes through
    `load_whisper` and is held in memory as one state dict."""
    if spec is not None and _is_safetensors_checkpoint(Path(spec).expanduser()):
        return open_checkpoint(Path(spec).expanduser(), allow_pickle)
    from babelora.models.whisper import load_whisper  # lazy: transformers is slow to import

    try:
        handle = load_whisper(spec, allow_pickle=allow_pickle, variable_length=False)
    except (BabeloraError, OSError, ValueError) as err:
        raise MergeError(
            f"base {spec!r}: not a safetensors checkpoint, and load_whisper failed: {err}"
        ) from None
    model = handle.model
    extras = [model.config, getattr(model, "generation_config", None), handle.tokenizer]
    return StateDictSource(
        model.state_dict(), name=str(handle.name), config=model.config.to_dict(), extras=extras
    )


def check_same_architecture(base: TensorSource, other: TensorSource, label: str) -> None:
    """Compare the config.json fields in ARCH_FIELDS when both sides have a config."""
    if not base.config or not other.config:
        return
    for key in ARCH_FIELDS:
        if key in base.config and key in other.config and base.config[key] != other.config[key]:
            raise MergeError(
                f"input {label!r} ({other.name}) has {key}={other.config[key]!r} but the base "
                f"({base.name}) has {key}={base.config[key]!r}: different architectures"
            )


def config_d_model(config: dict[str, Any] | None) -> int | None:
    """d_model (Whisper) or hidden_size (most other models) from a config dict."""
    if not config:
        return None
    value = config.get("d_model", config.get("hidden_size"))
    return int(value) if isinstance(value, int) else None
