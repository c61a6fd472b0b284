"""CTranslate2 conversion, loading errors and the variable-length encoder."""

from __future__ import annotations

import pytest
import torch

from babelora.errors import ModelLoadError
from babelora.export.ct2 import write_ct2_model
from babelora.models.ct2 import load_ct2_whisper, read_ct2_variables
from babelora.models.offline import offline_model_path
from babelora.models.whisper import load_whisper, tiny_random_whisper


def test_ct2_round_trip_gives_same_logits(tmp_path):
    ref = tiny_random_whisper(seed=3)
    folder = write_ct2_model(
        ref.model, tmp_path / "ct2", offline_model_path("tiny.en") / "tokenizer.json", "float32"
    )
    loaded = load_whisper(folder)
    feats = torch.randn(2, 80, 300)
    ids = torch.tensor([[50257, 50362, 464, 2068]] * 2)
    with torch.no_grad():
        a = ref.model(input_features=feats, decoder_input_ids=ids).logits
        b = loaded.model(input_features=feats, decoder_input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert loaded.prompt_style == "english"  # vocab 51864 = an *.en vocabulary


def test_ct2_real_tiny_en_layout():
    spec, variables = read_ct2_variables(offline_model_path("tiny.en") / "model.bin")
    assert spec == "WhisperSpec"
    state, config, _ = load_ct2_whisper(offline_model_path("tiny.en"))
    assert config["d_model"] == 384 and config["encoder_layers"] == 4
    assert config["vocab_size"] == 51864 and config["decoder_start_token_id"] == 50257
    assert state["model.encoder.layers.0.self_attn.q_proj.weight"].shape == (384, 384)
    assert "model.encoder.layers.0.self_attn.k_proj.bias" not in state  # k has no bias


def test_corrupt_and_missing_models(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_whisper(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.bin").write_bytes(b"\x06\x00\x00\x00garbage")
    (bad / "config.json").write_text("{}")
    (bad / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="corrupt|not a Whisper"):
        load_whisper(bad)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "model.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="missing config.json"):
        load_ct2_whisper(partial)
    afile = tmp_path / "model.bin"
    afile.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="folder"):
        load_whisper(afile)


def test_pickle_only_folder_is_refused(tmp_path):
    folder = tmp_path / "hf"
    tiny = tiny_random_whisper(seed=1)
    tiny.model.config.save_pretrained(folder)
    torch.save(tiny.model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_whisper(folder)


def test_transformers_folder_loads(tmp_path):
    tiny = tiny_random_whisper(seed=2)
    tiny.model.save_pretrained(tmp_path / "hf")
    tiny.tokenizer.save_pretrained(tmp_path / "hf")
    loaded = load_whisper(tmp_path / "hf")
    for (name, a), b in zip(tiny.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_variable_length_encoder_equals_original_at_full_length():
    """At 3000 frames the patched encoder is transformers' encoder exactly."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    tiny = tiny_random_whisper(seed=4)
    enc = tiny.model.get_encoder()
    feats = torch.randn(1, 80, 3000)
    with torch.no_grad():
        ours = enc(feats).last_hidden_state
        original = WhisperEncoder.forward(enc, feats).last_hidden_state
    torch.testing.assert_close(ours, original, rtol=0, atol=1e-6)


def test_variable_length_encoder_uses_first_positions():
    tiny = tiny_random_whisper(seed=5)
    enc = tiny.model.get_encoder()
    feats = torch.randn(1, 80, 300)
    with torch.no_grad():
        out = enc(feats).last_hidden_state
        x = torch.nn.functional.gelu(enc.conv2(torch.nn.functional.gelu(enc.conv1(feats))))
        x = x.permute(0, 2, 1) + enc.embed_positions.weight[:150]
        for layer in enc.layers:
            x = layer(x, None)
            x = x[0] if isinstance(x, tuple) else x
        ref = enc.layer_norm(x)
    assert out.shape == (1, 150, 64)
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="chunk"):
        enc(torch.randn(1, 80, 3002))
