"""Write a transformers Whisper as a CTranslate2 model folder (what faster-whisper loads).

The inverse of babelora.models.ct2's reader, and byte for byte what CTranslate2 4.x's own
converter (`ct2-transformers-converter`, WhisperLoader) writes for the same weights:

- model.bin, little-endian: uint32 binary version (6), the spec name `WhisperSpec`, uint32
  spec revision (3), uint32 variable count; per variable (sorted by name) its name, uint8 rank,
  rank x uint32 dims, uint8 dtype id (0 float32, 1 int8, 2 int16, 3 int32, 4 float16,
  5 bfloat16), uint32 byte count and the raw bytes; then uint32 alias count and (alias, target)
  name pairs. A string is a uint16 length (counting a trailing NUL) and the bytes. A tensor
  equal to one earlier in name order is stored once and aliased (the converter compares values
  at the source precision; here the bytes are compared, so -0.0 and 0.0 are never merged and
  the read-back is bit-exact).
- Self-attention q/k/v are fused into `linear_0` (Whisper's k projection has no bias: its slice
  is zeros), cross-attention k/v into `linear_1`; the output projection is `decoder/projection`
  (Whisper ties it to the token embedding, so it ends up an alias).
- config.json: suppress_ids, suppress_ids_begin, lang_ids, alignment_heads (sorted keys);
  vocabulary.json: the tokens by id, padded with Whisper's timestamp tokens up to the
  vocabulary size; tokenizer.json as given; preprocessor_config.json with the mel count
  (faster-whisper reads `feature_size` there, e.g. 128 for large-v3).

Weights are written as float16 or float32; int8 is left to CTranslate2's own tools (quantise
at load time with faster-whisper's `compute_type="int8"`, or convert the transformers export
with `ct2-transformers-converter --quantization int8`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from babelora.errors import ConfigError

BINARY_VERSION = 6
SPEC_NAME = "WhisperSpec"
SPEC_REVISION = 3
DTYPES = {"float16": np.float16, "float32": np.float32}
_TYPE_IDS = {
    np.dtype(np.float32): 0,
    np.dtype(np.int8): 1,
    np.dtype(np.int16): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.float16): 4,
}
_LANG_TOKEN = re.compile(r"<\|([a-z]{2,3})\|>")
GELU = 3  # CTranslate2's Activation enum


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array at its own precision (bfloat16, which numpy lacks, widened to
    float32 exactly)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.contiguous().numpy()


def _contiguous(arr: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def whisper_variables(state: Mapping[str, torch.Tensor], config: Any) -> dict[str, np.ndarray]:
    """CTranslate2 WhisperSpec variables from a transformers WhisperForConditionalGeneration
    state dict (names without the `model.` prefix are accepted too), at the source precision."""
    sd = {k.removeprefix("model."): v for k, v in state.items()}
    sd["proj_out.weight"] = state.get("proj_out.weight", sd["decoder.embed_tokens.weight"])
    out: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        try:
            return _numpy(sd[name])
        except KeyError:
            raise ConfigError(f"not a Whisper state dict: no tensor {name}") from None

    def linear(src: str, dst: str, bias: bool = True) -> None:
        out[f"{dst}/weight"] = get(f"{src}.weight")
        if bias and f"{src}.bias" in sd:
            out[f"{dst}/bias"] = get(f"{src}.bias")

    def norm(src: str, dst: str) -> None:
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = get(f"{src}.weight"), get(f"{src}.bias")

    def fused(src: str, names: tuple[str, ...], dst: str) -> None:
        weights = [get(f"{src}.{n}.weight") for n in names]
        biases = [
            get(f"{src}.{n}.bias") if f"{src}.{n}.bias" in sd else np.zeros(len(w), w.dtype)
            for n, w in zip(names, weights)
        ]
        out[f"{dst}/weight"] = np.concatenate(weights)
        out[f"{dst}/bias"] = np.concatenate(biases)

    def layer(s: str, t: str, cross: bool) -> None:
        fused(f"{s}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{t}/self_attention/linear_0")
        linear(f"{s}.self_attn.out_proj", f"{t}/self_attention/linear_1")
        norm(f"{s}.self_attn_layer_norm", f"{t}/self_attention/layer_norm")
        if cross:
            linear(f"{s}.encoder_attn.q_proj", f"{t}/attention/linear_0")
            fused(f"{s}.encoder_attn", ("k_proj", "v_proj"), f"{t}/attention/linear_1")
            linear(f"{s}.encoder_attn.out_proj", f"{t}/attention/linear_2")
            norm(f"{s}.encoder_attn_layer_norm", f"{t}/attention/layer_norm")
        linear(f"{s}.fc1", f"{t}/ffn/linear_0")
        linear(f"{s}.fc2", f"{t}/ffn/linear_1")
        norm(f"{s}.final_layer_norm", f"{t}/ffn/layer_norm")

    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    out["encoder/position_encodings/encodings"] = get("encoder.embed_positions.weight")
    norm("encoder.layer_norm", "encoder/layer_norm")
    out["encoder/num_heads"] = np.array(config.encoder_attention_heads, np.int16)
    for i in range(config.encoder_layers):
        layer(f"encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    out["decoder/embeddings/weight"] = get("decoder.embed_tokens.weight")
    out["decoder/position_encodings/encodings"] = get("decoder.embed_positions.weight")
    norm("decoder.layer_norm", "decoder/layer_norm")
    for i in range(config.decoder_layers):
        layer(f"decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    out["decoder/projection/weight"] = get("proj_out.weight")
    # TransformerDecoderSpec's flags, as the converter sets them for Whisper
    out["decoder/num_heads"] = np.array(config.decoder_attention_heads, np.int16)
    out["decoder/activation"] = np.array(GELU, np.int8)
    out["decoder/pre_norm"] = np.array(1, np.int8)
    for flag in ("alibi", "alibi_use_positive_positions", "scale_alibi", "scale_embeddings"):
        out[f"decoder/{flag}"] = np.array(0, np.int8)
    out["decoder/start_from_zero_embedding"] = np.array(0, np.int8)
    out["decoder/alignment_heads"] = np.array(1, np.int16)
    out["decoder/alignment_layer"] = np.array(-1, np.int16)
    return out


def alias_table(variables: Mapping[str, np.ndarray]) -> dict[str, str]:
    """{name: earlier name} for every non-scalar variable whose dtype, shape and bytes equal
    those of a variable earlier in name order (the earliest such one)."""
    first: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for name in sorted(variables):
        arr = _contiguous(variables[name])
        if arr.ndim == 0:
            continue
        key = (arr.dtype.str, arr.shape, hashlib.sha256(arr.data).digest())
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def cast(variables: Mapping[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Float variables as `dtype` (float16 or float32), little-endian; flags keep their types."""
    if dtype not in DTYPES:
        raise ConfigError(
            f"CTranslate2 export dtype must be one of {', '.join(DTYPES)}, got {dtype!r} "
            "(int8: quantise with CTranslate2's own tools, e.g. faster-whisper "
            "compute_type='int8')"
        )
    out = {}
    for name, arr in variables.items():
        if arr.dtype.kind == "f":
            arr = arr.astype(np.dtype(DTYPES[dtype]).newbyteorder("<"), copy=False)
        out[name] = _contiguous(arr)
    return out


def _string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _header(name: str, arr: np.ndarray) -> bytes:
    try:
        type_id = _TYPE_IDS[np.dtype(arr.dtype).newbyteorder("=")]
    except KeyError:
        raise ConfigError(f"{name}: dtype {arr.dtype} has no CTranslate2 type") from None
    dims = struct.pack(f"<B{arr.ndim}I", arr.ndim, *arr.shape)
    return _string(name) + dims + struct.pack("<BI", type_id, arr.nbytes)


def write_model_bin(
    path: str | Path,
    variables: Mapping[str, np.ndarray],
    aliases: Mapping[str, str] | None = None,
    spec: str = SPEC_NAME,
    revision: int = SPEC_REVISION,
) -> Path:
    """Write model.bin: the variables not in `aliases` (sorted), then the alias table.
    Streams tensor by tensor (no second copy of the model in memory)."""
    path = Path(path)
    aliases = dict(aliases or {})
    stored = sorted(n for n in variables if n not in aliases)
    with open(path, "wb") as f:
        f.write(struct.pack("<I", BINARY_VERSION) + _string(spec))
        f.write(struct.pack("<II", revision, len(stored)))
        for name in stored:
            arr = _contiguous(variables[name])
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            f.write(_header(name, arr))
            f.write(arr.reshape(-1).data)
        f.write(struct.pack("<I", len(aliases)))
        for alias in sorted(aliases):
            f.write(_string(alias) + _string(aliases[alias]))
    return path


# ---- config, vocabulary, tokenizer ------------------------------------------------------------


def backend_tokenizer(tokenizer: Any):
    """A `tokenizers.Tokenizer` from a transformers fast tokenizer, a Tokenizer, or a path to a
    tokenizer.json."""
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if isinstance(tokenizer, str | os.PathLike):
        return Tokenizer.from_file(str(tokenizer))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; CTranslate2 needs a "
            "tokenizer.json (load the model with its tokenizer.json)"
        )
    return backend


def ct2_vocabulary(tokenizer: Any, vocab_size: int) -> list[str]:
    """Tokens in id order, cut or padded with Whisper's timestamp tokens to `vocab_size` (the
    converter's vocabulary.json)."""
    vocab = backend_tokenizer(tokenizer).get_vocab(with_added_tokens=True)
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda item: item[1])][:vocab_size]
    tokens += ["<|%.2f|>" % (i * 0.02) for i in range(vocab_size - len(tokens))]
    return tokens


def language_ids(tokenizer: Any) -> list[int]:
    """Ids of the `<|xx|>` language tokens of a Whisper tokenizer (faster-whisper's language
    detection reads them as config.json's `lang_ids`)."""
    vocab = backend_tokenizer(tokenizer).get_vocab(with_added_tokens=True)
    return sorted(i for tok, i in vocab.items() if _LANG_TOKEN.fullmatch(tok))


def ct2_config(
    config: Any,
    tokenizer: Any,
    generation_config: Any = None,
    base_ct2_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """config.json: suppression lists from the generation config (else the model config), as the
    converter does; alignment heads and language ids from the base's own CTranslate2 config
    when the base was one (a fine-tune keeps them), else from the generation config, else the
    converter's defaults (the last half of the decoder layers, every head; the language tokens
    of the vocabulary)."""
    base = dict(base_ct2_config or {})
    source = generation_config if generation_config is not None else config
    heads = base.get("alignment_heads") or getattr(generation_config, "alignment_heads", None)
    if heads is None:
        layers, n = config.decoder_layers, config.decoder_attention_heads
        heads = [[i, h] for i in range(layers // 2, layers) for h in range(n)]
    lang_ids = base.get("lang_ids")
    lang_to_id = getattr(generation_config, "lang_to_id", None)
    if lang_ids is None and lang_to_id:
        lang_ids = sorted(lang_to_id.values())
    if lang_ids is None:
        lang_ids = language_ids(tokenizer)
    return {
        "alignment_heads": [list(map(int, h)) for h in heads],
        "lang_ids": [int(i) for i in lang_ids],
        "suppress_ids": _ints(getattr(source, "suppress_tokens", None)),
        "suppress_ids_begin": _ints(getattr(source, "begin_suppress_tokens", None)),
    }


def _ints(values: Any) -> list[int] | None:
    return None if values is None else [int(v) for v in values]


def preprocessor_config(n_mels: int) -> dict[str, Any]:
    """The feature extractor settings faster-whisper and transformers read (Whisper's front end
    with `n_mels` mel bins)."""
    return {
        "chunk_length": 30,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": int(n_mels),
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": False,
        "sampling_rate": 16000,
    }


def write_ct2_files(
    folder: str | Path,
    state: Mapping[str, torch.Tensor],
    config: Any,
    tokenizer: Any,
    dtype: str = "float16",
    generation_config: Any = None,
    base_ct2_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write the CTranslate2 Whisper files of (`state`, `config`, `tokenizer`) into `folder`
    (created if needed; existing files of these names are replaced)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    variables = whisper_variables(state, config)
    aliases = alias_table(variables)  # at the source precision, as the converter does
    write_model_bin(folder / "model.bin", cast(variables, dtype), aliases)
    del variables
    settings = ct2_config(config, tokenizer, generation_config, base_ct2_config)
    (folder / "config.json").write_text(
        json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    vocab = ct2_vocabulary(tokenizer, int(config.vocab_size))
    (folder / "vocabulary.json").write_text(json.dumps(vocab, indent=2), encoding="utf-8")
    if isinstance(tokenizer, str | os.PathLike):
        (folder / "tokenizer.json").write_bytes(Path(tokenizer).read_bytes())
    else:
        backend_tokenizer(tokenizer).save(str(folder / "tokenizer.json"))
    (folder / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(config.num_mel_bins), indent=2, sort_keys=True) + "\n",
        encoding="utf-8",
    )
    return folder


def write_ct2_model(model: Any, folder: str | Path, tokenizer: Any, dtype: str = "float16") -> Path:
    """Write a loaded WhisperForConditionalGeneration (e.g. `handle.model`) as a CTranslate2
    folder; `tokenizer` is its tokenizer or a path to its tokenizer.json."""
    return write_ct2_files(
        folder,
        model.state_dict(),
        model.config,
        tokenizer,
        dtype,
        getattr(model, "generation_config", None),
    )
