"""Write a transformers Whisper state dict as a CTranslate2 model.bin (test fixture builder).

The inverse of babelora.models.ct2 for the fields it reads, so a tiny random model can be
round-tripped through the converter without shipping binaries.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _var(name: str, arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr)
    dtype_id = {np.dtype(np.float32): 0, np.dtype(np.int32): 3, np.dtype(np.float16): 4}[arr.dtype]
    out = _string(name) + struct.pack("<B", arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
    return out + struct.pack("<BI", dtype_id, arr.nbytes) + arr.tobytes()


def write_ct2(model, folder: Path, tokenizer_json: Path, dtype=np.float16) -> Path:
    """Write `model` (WhisperForConditionalGeneration) as a CTranslate2 folder."""
    sd = {k: v.detach().numpy().astype(dtype) for k, v in model.state_dict().items()}
    cfg = model.config
    out: dict[str, np.ndarray] = {}

    def lin(src, dst, bias=True):
        out[f"{dst}/weight"] = sd[f"{src}.weight"]
        if bias:
            out[f"{dst}/bias"] = sd[f"{src}.bias"]

    def norm(src, dst):
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(src, names, dst):
        ws, bs = [], []
        for n in names:
            w = sd[f"{src}.{n}.weight"]
            ws.append(w)
            bs.append(sd.get(f"{src}.{n}.bias", np.zeros(w.shape[0], dtype)))
        out[f"{dst}/weight"], out[f"{dst}/bias"] = np.concatenate(ws), np.concatenate(bs)

    e, d = "model.encoder", "model.decoder"
    lin(f"{e}.conv1", "encoder/conv1")
    lin(f"{e}.conv2", "encoder/conv2")
    out["encoder/position_encodings/encodings"] = sd[f"{e}.embed_positions.weight"]
    norm(f"{e}.layer_norm", "encoder/layer_norm")
    out["encoder/num_heads"] = np.array(cfg.encoder_attention_heads, np.int32)
    for i in range(cfg.encoder_layers):
        s, t = f"{e}.layers.{i}", f"encoder/layer_{i}"
        fused(f"{s}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{t}/self_attention/linear_0")
        lin(f"{s}.self_attn.out_proj", f"{t}/self_attention/linear_1")
        norm(f"{s}.self_attn_layer_norm", f"{t}/self_attention/layer_norm")
        lin(f"{s}.fc1", f"{t}/ffn/linear_0")
        lin(f"{s}.fc2", f"{t}/ffn/linear_1")
        norm(f"{s}.final_layer_norm", f"{t}/ffn/layer_norm")
    out["decoder/embeddings/weight"] = sd[f"{d}.embed_tokens.weight"]
    out["decoder/position_encodings/encodings"] = sd[f"{d}.embed_positions.weight"]
    norm(f"{d}.layer_norm", "decoder/layer_norm")
    out["decoder/num_heads"] = np.array(cfg.decoder_attention_heads, np.int32)
    for i in range(cfg.decoder_layers):
        s, t = f"{d}.layers.{i}", f"decoder/layer_{i}"
        fused(f"{s}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{t}/self_attention/linear_0")
        lin(f"{s}.self_attn.out_proj", f"{t}/self_attention/linear_1")
        norm(f"{s}.self_attn_layer_norm", f"{t}/self_attention/layer_norm")
        lin(f"{s}.encoder_attn.q_proj", f"{t}/attention/linear_0")
        fused(f"{s}.encoder_attn", ("k_proj", "v_proj"), f"{t}/attention/linear_1")
        lin(f"{s}.encoder_attn.out_proj", f"{t}/attention/linear_2")
        norm(f"{s}.encoder_attn_layer_norm", f"{t}/attention/layer_norm")
        lin(f"{s}.fc1", f"{t}/ffn/linear_0")
        lin(f"{s}.fc2", f"{t}/ffn/linear_1")
        norm(f"{s}.final_layer_norm", f"{t}/ffn/layer_norm")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    blob = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<II", 3, len(out))
    blob += b"".join(_var(k, v) for k, v in out.items())
    (folder / "model.bin").write_bytes(blob)
    (folder / "config.json").write_text(
        json.dumps({"suppress_ids": [], "suppress_ids_begin": [220, 50256]})
    )
    (folder / "tokenizer.json").write_bytes(Path(tokenizer_json).read_bytes())
    return folder
