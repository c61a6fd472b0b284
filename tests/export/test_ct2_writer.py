"""The CTranslate2 writer: byte for byte what CTranslate2's own converter writes, read back
bit for bit by babelora's reader, with config/vocabulary as faster-whisper expects."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference.export_models import base_config_json, base_tokenizer_json, perturb

from babelora.errors import ConfigError
from babelora.export.ct2 import (
    alias_table,
    cast,
    ct2_config,
    language_ids,
    whisper_variables,
    write_ct2_model,
)
from babelora.models.ct2 import load_ct2_whisper, read_ct2_variables
from babelora.models.offline import offline_model_path
from babelora.models.whisper import tiny_random_whisper

TINY_EN_TOKENIZER = offline_model_path("tiny.en") / "tokenizer.json"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_writer_is_byte_identical_to_ctranslate2s_converter(tmp_path, dtype):
    """The oracle: ct2-transformers-converter on the same weights (saved as a transformers
    folder). The tiny random model's zero biases and unit norms exercise the alias table."""
    pytest.importorskip("ctranslate2")
    from ctranslate2.converters import TransformersConverter

    handle = tiny_random_whisper(seed=0)
    hf = tmp_path / "hf"
    handle.model.save_pretrained(str(hf))
    handle.tokenizer.save_pretrained(str(hf))
    theirs = tmp_path / "theirs"
    TransformersConverter(str(hf), copy_files=["tokenizer.json"]).convert(
        str(theirs), quantization=dtype
    )
    ours = write_ct2_model(handle.model, tmp_path / "ours", handle.tokenizer, dtype)
    assert (ours / "model.bin").read_bytes() == (theirs / "model.bin").read_bytes()
    assert (ours / "vocabulary.json").read_bytes() == (theirs / "vocabulary.json").read_bytes()
    mine, their = (json.loads((f / "config.json").read_text()) for f in (ours, theirs))
    # the converter takes language ids from a slow tokenizer's additional_special_tokens (none
    # for a tokenizer.json-only tokenizer); ours come from the vocabulary's <|xx|> tokens
    assert their.pop("lang_ids") == [] and len(mine.pop("lang_ids")) == 99
    assert mine == their


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().numpy().tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("perturbed", [False, True], ids=["aliased", "distinct"])
def test_read_of_write_is_the_model_bit_for_bit(tmp_path, dtype, perturbed):
    handle = tiny_random_whisper(seed=2)
    model = handle.model
    if perturbed:
        perturb(model)
    else:  # a -0.0 in a bias that equals the other (zero) biases by value, not by bits
        with torch.no_grad():
            model.model.encoder.layers[0].fc2.bias[0] = -0.0
    folder = write_ct2_model(model, tmp_path / "ct2", TINY_EN_TOKENIZER, dtype)
    state, config, _ = load_ct2_whisper(folder)
    expected = model.state_dict()
    assert set(state) == set(expected)
    torch_dtype = getattr(torch, dtype)
    for name, tensor in expected.items():
        want = tensor.to(torch_dtype).float()
        assert state[name].shape == want.shape, name
        assert _bits(state[name]) == _bits(want), name
    assert config["encoder_layers"] == 2 and config["d_model"] == 64
    assert config["encoder_attention_heads"] == model.config.encoder_attention_heads


def test_equal_tensors_are_stored_once(tmp_path):
    """Aliasing is by bytes: equal tensors share storage, -0.0 keeps its own copy."""
    handle = tiny_random_whisper(seed=0)
    variables = whisper_variables(handle.model.state_dict(), handle.model.config)
    aliases = alias_table(variables)
    assert aliases["decoder/projection/weight"] == "decoder/embeddings/weight"  # tied
    assert "encoder/num_heads" not in aliases  # flags are never aliased
    zero = variables["encoder/layer_0/ffn/linear_1/bias"].copy()
    zero[0] = -0.0
    variables["encoder/layer_0/ffn/linear_1/bias"] = zero
    assert "encoder/layer_0/ffn/linear_1/bias" not in alias_table(variables)
    spec, back = read_ct2_variables(
        write_ct2_model(handle.model, tmp_path / "c", TINY_EN_TOKENIZER, "float32") / "model.bin"
    )
    assert spec == "WhisperSpec"
    np.testing.assert_array_equal(back["encoder/conv1/bias"], np.zeros(64, np.float32))


def test_language_ids_are_whisper_bases_own():
    """config.json's lang_ids from the vocabulary equal those CTranslate2 shipped for base."""
    shipped = json.loads(base_config_json().read_text(encoding="utf-8"))
    assert language_ids(base_tokenizer_json()) == shipped["lang_ids"]


def test_a_fine_tune_keeps_its_bases_alignment_heads_and_language_ids():
    model = tiny_random_whisper(seed=0).model
    base = {"alignment_heads": [[1, 3]], "lang_ids": [7, 8]}
    config = ct2_config(model.config, TINY_EN_TOKENIZER, model.generation_config, base)
    assert config["alignment_heads"] == [[1, 3]] and config["lang_ids"] == [7, 8]
    default = ct2_config(model.config, TINY_EN_TOKENIZER, model.generation_config)
    assert default["alignment_heads"] == [[1, h] for h in range(4)]  # converter's default
    assert default["suppress_ids_begin"] == [220, 50256]


def test_int8_is_left_to_ctranslate2():
    variables = {"a/weight": np.ones((2, 2), np.float32)}
    with pytest.raises(ConfigError, match="compute_type='int8'"):
        cast(variables, "int8")


def test_the_folder_loads_in_ctranslate2_and_sets_the_mel_count(tmp_path):
    """faster-whisper reads preprocessor_config.json's feature_size (128 for large-v3)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    handle = tiny_random_whisper(seed=0)
    folder = write_ct2_model(handle.model, tmp_path / "c", handle.tokenizer, "float16")
    model = ctranslate2.models.Whisper(str(folder), device="cpu")
    assert not model.is_multilingual  # the *.en vocabulary (51864)
    prep = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
    assert prep["feature_size"] == 80 and prep["sampling_rate"] == 16000
