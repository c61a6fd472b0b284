"""Read a CTranslate2 Whisper model (faster-whisper format) into a transformers state dict.

Facts (shared/reference/ctranslate2-whisper.md): model.bin is little-endian: uint32 version,
string spec name, uint32 revision, uint32 variable count; each variable is a name string,
uint8 rank, rank x uint32 dims, uint8 dtype id, uint32 byte count, raw bytes; then a uint32
alias count and (alias, target) string pairs, a variable equal to another being stored once.
A string is a uint16 length (with trailing NUL) then bytes. Self-attention q/k/v are fused in
`linear_0`; cross-attention k/v in `linear_1`. The output projection is tied to the token
embedding. babelora.export.ct2 writes this format.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch

from babelora.errors import ModelLoadError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
CT2_FILES = ("model.bin", "config.json", "tokenizer.json")


def is_ct2_dir(path: str | Path) -> bool:
    """True when `path` is a folder holding a CTranslate2 model.bin."""
    path = Path(path)
    return path.is_dir() and (path / "model.bin").is_file()


def _read_string(buf: memoryview, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<H", buf, pos)
    pos += 2
    text = bytes(buf[pos : pos + length]).rstrip(b"\0").decode("utf-8")
    return text, pos + length


def _read_aliases(data: memoryview, pos: int, variables: dict[str, np.ndarray], path: Path) -> None:
    """Resolve the alias table after the variables (the converter stores a tensor equal to an
    earlier one once, e.g. Whisper's output projection, tied to the token embedding)."""
    if pos == len(data):  # no table (writers before binary version 3)
        return
    (count,) = struct.unpack_from("<I", data, pos)
    pos += 4
    for _ in range(count):
        alias, pos = _read_string(data, pos)
        target, pos = _read_string(data, pos)
        if target not in variables:
            raise ModelLoadError(f"{path}: alias {alias!r} names unknown variable {target!r}")
        variables[alias] = variables[target]


def read_ct2_variables(model_bin: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """All variables of a CTranslate2 model.bin as numpy arrays, with the spec name."""
    path = Path(model_bin)
    try:
        data = memoryview(path.read_bytes())
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read CTranslate2 model ({err})") from None
    try:
        (version,) = struct.unpack_from("<I", data, 0)
        spec, pos = _read_string(data, 4)
        _revision, count = struct.unpack_from("<II", data, pos)
        pos += 8
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name, pos = _read_string(data, pos)
            (rank,) = struct.unpack_from("<B", data, pos)
            pos += 1
            dims = struct.unpack_from(f"<{rank}I", data, pos)
            pos += 4 * rank
            dtype_id, nbytes = struct.unpack_from("<BI", data, pos)
            pos += 5
            if dtype_id == 5:  # bfloat16: widen through uint16 -> float32
                raw = np.frombuffer(data[pos : pos + nbytes], dtype=np.uint16)
                arr = (raw.astype(np.uint32) << 16).view(np.float32)
            elif dtype_id in _DTYPES:
                arr = np.frombuffer(data[pos : pos + nbytes], dtype=_DTYPES[dtype_id])
            else:
                raise ModelLoadError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
            variables[name] = arr.reshape(dims) if rank else arr.reshape(())
            pos += nbytes
        _read_aliases(data, pos, variables, path)
    except struct.error as err:
        raise ModelLoadError(f"{path}: truncated or corrupt model.bin ({err})") from None
    if version < 5:
        raise ModelLoadError(f"{path}: CTranslate2 binary version {version} is too old (need >= 5)")
    if "Whisper" not in spec:
        raise ModelLoadError(f"{path}: model spec is {spec!r}, not a Whisper model")
    return spec, variables


def _t(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, dtype=np.float32))


def _linear(sd: dict, v: dict, src: str, dst: str, bias: bool = True) -> None:
    sd[f"{dst}.weight"] = _t(v[f"{src}/weight"])
    if bias:
        sd[f"{dst}.bias"] = _t(v[f"{src}/bias"])


def _norm(sd: dict, v: dict, src: str, dst: str) -> None:
    sd[f"{dst}.weight"] = _t(v[f"{src}/gamma"])
    sd[f"{dst}.bias"] = _t(v[f"{src}/beta"])


def _split_rows(arr: np.ndarray, parts: int) -> list[np.ndarray]:
    return np.split(np.asarray(arr), parts, axis=0)


def _attention(sd: dict, v: dict, src: str, dst: str, fused: str) -> None:
    """Unfuse q/k/v (`fused`='qkv') or k/v (`fused`='kv') into HF's separate projections."""
    names = {"qkv": ("q_proj", "k_proj", "v_proj"), "kv": ("k_proj", "v_proj")}[fused]
    first = "linear_0" if fused == "qkv" else "linear_1"
    weights = _split_rows(v[f"{src}/{first}/weight"], len(names))
    biases = _split_rows(v[f"{src}/{first}/bias"], len(names))
    for name, w, b in zip(names, weights, biases):
        sd[f"{dst}.{name}.weight"] = _t(w)
        if name != "k_proj":  # Whisper's k projection has no bias (its fused slice is zero)
            sd[f"{dst}.{name}.bias"] = _t(b)


def ct2_state_dict(
    variables: dict[str, np.ndarray], n_enc: int, n_dec: int
) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variable names to transformers' WhisperForConditionalGeneration."""
    v, sd = variables, {}
    e, d = "model.encoder", "model.decoder"
    _linear(sd, v, "encoder/conv1", f"{e}.conv1")
    _linear(sd, v, "encoder/conv2", f"{e}.conv2")
    sd[f"{e}.embed_positions.weight"] = _t(v["encoder/position_encodings/encodings"])
    _norm(sd, v, "encoder/layer_norm", f"{e}.layer_norm")
    for i in range(n_enc):
        s, t = f"encoder/layer_{i}", f"{e}.layers.{i}"
        _attention(sd, v, f"{s}/self_attention", f"{t}.self_attn", "qkv")
        _linear(sd, v, f"{s}/self_attention/linear_1", f"{t}.self_attn.out_proj")
        _norm(sd, v, f"{s}/self_attention/layer_norm", f"{t}.self_attn_layer_norm")
        _linear(sd, v, f"{s}/ffn/linear_0", f"{t}.fc1")
        _linear(sd, v, f"{s}/ffn/linear_1", f"{t}.fc2")
        _norm(sd, v, f"{s}/ffn/layer_norm", f"{t}.final_layer_norm")
    sd[f"{d}.embed_tokens.weight"] = _t(v["decoder/embeddings/weight"])
    sd[f"{d}.embed_positions.weight"] = _t(v["decoder/position_encodings/encodings"])
    _norm(sd, v, "decoder/layer_norm", f"{d}.layer_norm")
    for i in range(n_dec):
        s, t = f"decoder/layer_{i}", f"{d}.layers.{i}"
        _attention(sd, v, f"{s}/self_attention", f"{t}.self_attn", "qkv")
        _linear(sd, v, f"{s}/self_attention/linear_1", f"{t}.self_attn.out_proj")
        _norm(sd, v, f"{s}/self_attention/layer_norm", f"{t}.self_attn_layer_norm")
        _linear(sd, v, f"{s}/attention/linear_0", f"{t}.encoder_attn.q_proj")
        _attention(sd, v, f"{s}/attention", f"{t}.encoder_attn", "kv")
        _linear(sd, v, f"{s}/attention/linear_2", f"{t}.encoder_attn.out_proj")
        _norm(sd, v, f"{s}/attention/layer_norm", f"{t}.encoder_attn_layer_norm")
        _linear(sd, v, f"{s}/ffn/linear_0", f"{t}.fc1")
        _linear(sd, v, f"{s}/ffn/linear_1", f"{t}.fc2")
        _norm(sd, v, f"{s}/ffn/layer_norm", f"{t}.final_layer_norm")
    sd["proj_out.weight"] = sd[f"{d}.embed_tokens.weight"]
    return sd


def _count_layers(variables: dict[str, np.ndarray], side: str) -> int:
    pattern = re.compile(rf"^{side}/layer_(\d+)/")
    return len({m.group(1) for k in variables if (m := pattern.match(k))})


def load_ct2_whisper(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Read a CTranslate2 Whisper folder.

    Returns (transformers state dict, WhisperConfig kwargs, the folder's config.json).
    """
    path = Path(path)
    missing = [name for name in CT2_FILES if not (path / name).is_file()]
    if missing:
        raise ModelLoadError(
            f"{path}: not a CTranslate2 Whisper folder (missing {', '.join(missing)})"
        )
    _spec, v = read_ct2_variables(path / "model.bin")
    n_enc, n_dec = _count_layers(v, "encoder"), _count_layers(v, "decoder")
    vocab, d_model = v["decoder/embeddings/weight"].shape
    n_mels = v["encoder/conv1/weight"].shape[1]
    default_heads = max(1, d_model // 64)
    heads = (
        int(v["encoder/num_heads"].reshape(-1)[0]) if "encoder/num_heads" in v else default_heads
    )
    dec_heads = int(v["decoder/num_heads"].reshape(-1)[0]) if "decoder/num_heads" in v else heads
    ffn = v["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    ct2_config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    multilingual = vocab >= 51865
    config = dict(
        vocab_size=int(vocab),
        num_mel_bins=int(n_mels),
        d_model=int(d_model),
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=heads,
        decoder_attention_heads=dec_heads,
        encoder_ffn_dim=int(ffn),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        decoder_start_token_id=50258 if multilingual else 50257,
        eos_token_id=50257 if multilingual else 50256,
        pad_token_id=50257 if multilingual else 50256,
        bos_token_id=50257 if multilingual else 50256,
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", [220, 50256]),
        suppress_tokens=ct2_config.get("suppress_ids", []),
        tie_word_embeddings=True,
    )
    return ct2_state_dict(v, n_enc, n_dec), config, ct2_config
