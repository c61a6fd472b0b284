"""Frozen-encoder training from cached encoder states (train/encoder_cache.py, issue 14 item 1).

Tolerances: float32 entries equal the live encoder to 1e-6 (the cache encodes in chunks whose
batch size differs from a training batch's); float16 entries to 2^-10 relative (fp16 keeps 11
significant bits) plus 1e-3 absolute.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from reference.corpus import base_config

from babelora.config import build_dataclass
from babelora.data.audio import load_audio, log_mel
from babelora.data.manifest import read_manifest
from babelora.errors import ConfigError
from babelora.methods.registry import build_recipe, train
from babelora.models.whisper import tiny_random_whisper
from babelora.train import cache_store
from babelora.train import checkpoint as ckpt
from babelora.train.config import TrainConfig
from babelora.train.encoder_cache import (
    EncoderStateCollator,
    EncoderStateStore,
    InputPolicy,
    audio_digests,
    cache_blockers,
    encoder_key,
    fill,
    pad_features,
    trained_parts,
    trains_label,
)
from babelora.train.recipe import seq2seq_forward

LORA_DECODER = {"recipe.params": {"rank": 4, "parts": ["decoder"]}}


def make_cfg(corpus_dir: Path, out: Path, **extra) -> TrainConfig:
    return build_dataclass(TrainConfig, base_config(corpus_dir, out, **extra))


@pytest.fixture
def utts(corpus_dir):
    return read_manifest(corpus_dir / "train.jsonl")


def live_states(encoder, utt, policy: InputPolicy) -> torch.Tensor:
    feats = log_mel(load_audio(utt.audio_filepath), n_mels=80)
    x = pad_features(feats, policy.frames(feats.shape[-1]))[None]
    with torch.no_grad():
        return encoder(x).last_hidden_state[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cache_returns_the_live_encoder_states(utts, tmp_path, dtype):
    handle = tiny_random_whisper(0)
    encoder = handle.model.get_encoder()
    policy = InputPolicy(min_frames=150)  # shorter and longer utterances than the floor
    store = EncoderStateStore(tmp_path, encoder_key(encoder, "cpu-no"), policy, dtype)
    digests = audio_digests(utts)
    stats = fill(store, utts, digests, encoder, 80, torch.device("cpu"), batch_frames=700)
    assert stats.encoded == len(set(digests)) and stats.hits == 0
    for utt, digest in zip(utts, digests):
        cached = store.load(digest)["states"]
        assert cached.dtype == dtype
        live = live_states(encoder, utt, policy)
        assert cached.shape == live.shape
        tol = (1e-6, 1e-6) if dtype == torch.float32 else (2**-10, 1e-3)
        torch.testing.assert_close(cached.float(), live, rtol=tol[0], atol=tol[1])
    again = fill(store, utts, digests, encoder, 80, torch.device("cpu"))
    assert again.hits == len(set(digests)) and again.encoded == 0


def test_cache_invalidated_by_model_audio_and_policy(utts, tmp_path):
    handle = tiny_random_whisper(0)
    encoder = handle.model.get_encoder()
    key = encoder_key(encoder, "cpu-no")
    store = EncoderStateStore(tmp_path, key, InputPolicy(min_frames=0), torch.float32)
    digest = audio_digests(utts[:1])[0]
    fill(store, utts[:1], [digest], encoder, 80, torch.device("cpu"))
    assert store.load(digest) is not None
    # the model: one weight moved by one ulp changes the key
    with torch.no_grad():
        p = encoder.layers[1].fc2.weight
        p[0, 0] = torch.nextafter(p[0, 0], torch.tensor(1.0))
    assert encoder_key(encoder, "cpu-no") != key
    assert encoder_key(tiny_random_whisper(0).model.get_encoder(), "cpu-bf16") != key
    other = EncoderStateStore(tmp_path, encoder_key(encoder, "cpu-no"), store.policy, torch.float32)
    assert other.load(digest) is None
    # the input policy
    for policy in (InputPolicy(min_frames=1000), InputPolicy(pad_to_30s=True)):
        assert EncoderStateStore(tmp_path, key, policy, torch.float32).load(digest) is None
    # the audio: same path, other content
    wav = Path(utts[0].audio_filepath)
    data = bytearray(wav.read_bytes())
    data[-2] ^= 0x10
    copy = tmp_path / "a.wav"
    copy.write_bytes(bytes(data))
    assert audio_digests([dataclasses.replace(utts[0], audio_filepath=str(copy))]) != [digest]
    # an entry copied under another audio's name is not used (metadata checked on read)
    target = store.path("f" * 32)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(store.path(digest).read_bytes())
    assert store.load("f" * 32) is None and not target.exists()


def contents(path: Path) -> tuple:
    """An entry's metadata and tensor bytes (safetensors orders the metadata freely)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k).reshape(-1).view(torch.uint8).tolist() for k in f.keys()}  # noqa: SIM118
        return f.metadata(), tensors


def test_damaged_entries_are_detected_and_rebuilt(utts, tmp_path, caplog):
    encoder = tiny_random_whisper(0).model.get_encoder()
    store = EncoderStateStore(tmp_path, "k", InputPolicy(min_frames=0), torch.float16)
    digest = audio_digests(utts[:1])[0]
    fill(store, utts[:1], [digest], encoder, 80, torch.device("cpu"))
    good = store.path(digest).read_bytes()
    reference = contents(store.path(digest))
    damages = {
        "bit flip in the data": lambda b: b[:-10] + bytes([b[-10] ^ 0x01]) + b[-9:],
        "truncated": lambda b: b[: len(b) - 7],
        "empty": lambda b: b"",
        "garbage header": lambda b: b"\xff" * 8 + b[8:],
    }
    for what, damage in damages.items():
        store.path(digest).write_bytes(damage(good))
        assert store.load(digest) is None, what
        assert not store.path(digest).exists(), what
        stats = fill(store, utts[:1], [digest], encoder, 80, torch.device("cpu"))
        assert stats.encoded == 1, what
        assert contents(store.path(digest)) == reference, what
    assert "damaged or stale" in caplog.text


def test_write_is_atomic_and_killed_temporaries_are_cleaned(tmp_path, monkeypatch):
    path = tmp_path / "e" / "x.safetensors"

    def crash(*args):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(cache_store.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        cache_store.write_entry(path, {"a": torch.ones(3)}, {"k": "v"})
    monkeypatch.undo()
    assert not path.exists()  # never a partial entry under the real name
    tmp = next(path.parent.iterdir())
    dead = tmp.with_name(f".x.safetensors.{2**22 + 12345}.tmp")  # a pid that cannot be alive
    tmp.rename(dead)
    assert cache_store.clean_temporaries(tmp_path) == 1 and not dead.exists()


def test_masked_cross_attention_equals_rows_alone(utts, tmp_path):
    """A cached batch of rows with different lengths gives each row what it gives alone."""
    handle = tiny_random_whisper(0)
    model = handle.model
    encoder = model.get_encoder()
    store = EncoderStateStore(tmp_path, "k", InputPolicy(min_frames=0), torch.float32)
    digests = audio_digests(utts[:4])
    fill(store, utts[:4], digests, encoder, 80, torch.device("cpu"))
    from babelora.data.collate import WhisperCollator

    collator = EncoderStateCollator(WhisperCollator(handle.tokenizer, ["de", "fr"]))
    items = [
        {"states": store.load(d)["states"], "feature_len": 1, "utt": u}
        for u, d in zip(utts[:4], digests)
    ]
    batch = collator(items)
    assert len(set(batch["encoder_lens"].tolist())) > 1  # the test needs mixed lengths
    with torch.no_grad():
        together = seq2seq_forward(model, batch).logits
        for b, item in enumerate(items):
            alone = seq2seq_forward(model, collator([item])).logits[0]
            n = alone.shape[0]
            torch.testing.assert_close(together[b, :n], alone, rtol=1e-5, atol=1e-5)


def weights(result) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(result.last_checkpoint).trainable


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


RECIPES = {
    "lora": LORA_DECODER,
    "experts": {
        "recipe.name": "experts",
        "recipe.params": {"rank": 4, "targets": ["whisper-decoder"]},
    },
    "molora": {
        "recipe.name": "molora",
        "recipe.params": {
            "molora": {
                "router": "language",
                "num_shared": 1,
                "lora": {"rank": 4, "targets": ["whisper-decoder"]},
            }
        },
    },
}


@pytest.mark.parametrize(
    "recipe", [r if r == "lora" else pytest.param(r, marks=pytest.mark.slow) for r in RECIPES]
)
def test_training_from_the_cache_equals_live_training(corpus_dir, tmp_path, recipe):
    """min_input_seconds above the longest utterance: live batches pad every row alike, so the
    cached run must match it (fp32 entries: to float32 rounding)."""
    extra = {
        **RECIPES[recipe],
        "data.min_input_seconds": 2.5,
        "data.dev": [str(corpus_dir / "dev.jsonl")],
        "cache_dir": str(tmp_path / "cache"),
        "encoder_cache_dtype": "float32",
        "max_steps": 3,
    }
    live = train(make_cfg(corpus_dir, tmp_path / "live", encoder_cache="off", **extra))
    cached = train(make_cfg(corpus_dir, tmp_path / "cached", encoder_cache="on", **extra))
    assert cached.encoder_cache and not live.encoder_cache
    assert cached.trains == live.trains == "decoder"
    torch.testing.assert_close(
        torch.tensor(losses(tmp_path / "cached")), torch.tensor(losses(tmp_path / "live")),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    assert cached.eval_metrics["dev_loss"] == pytest.approx(live.eval_metrics["dev_loss"], 1e-5)
    a, b = weights(live), weights(cached)
    assert a.keys() == b.keys()
    for name in a:
        # Adam divides by sqrt(v): a weight whose gradient is ~0 moves by up to a whole step
        # (lr = 1e-3) on float32 noise; 1e-5 is 1 % of one step
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    info = json.loads((tmp_path / "cached" / "run_info.json").read_text())
    assert info["trains"] == "decoder" and info["encoder_cache"]["used"]


@pytest.mark.slow
def test_fp16_cache_trains_like_live(corpus_dir, tmp_path):
    extra = {**LORA_DECODER, "data.min_input_seconds": 2.5, "cache_dir": str(tmp_path / "c")}
    train(make_cfg(corpus_dir, tmp_path / "live", encoder_cache="off", **extra))
    cached = train(make_cfg(corpus_dir, tmp_path / "cached", **extra))  # auto, float16
    assert cached.encoder_cache
    torch.testing.assert_close(
        torch.tensor(losses(tmp_path / "cached")), torch.tensor(losses(tmp_path / "live")),
        rtol=1e-3, atol=1e-3,
    )  # fmt: skip


CASES = {
    "encoder LoRA": ({"recipe.params": {"rank": 4}}, "encoder parameters train"),
    "full": ({"recipe.name": "full", "recipe.params": {}}, "encoder parameters train"),
    "MGRF": (
        {
            "recipe.name": "molora",
            "recipe.params": {
                "molora": {"router": "language", "lora": {"targets": ["whisper-decoder"]}},
                "mgrf": {},
            },
        },
        "encoder parameters train",
    ),
    "SpecAugment": (
        {**LORA_DECODER, "data.spec_augment": {"enabled": True}},
        "spec_augment",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cache_refused_when_the_encoder_would_change(corpus_dir, tmp_path, case):
    extra, why = CASES[case]
    cfg = make_cfg(corpus_dir, tmp_path / "r", encoder_cache="on", **extra)
    with pytest.raises(ConfigError, match="encoder_cache: on"):
        train(cfg)
    recipe = build_recipe(make_cfg(corpus_dir, tmp_path / "r2", **extra))
    blockers = cache_blockers(recipe.model, recipe.accepts_encoder_states, "spec" in why)
    assert any(why in b for b in blockers), blockers


def test_cache_refused_for_adapters_and_dropout(tmp_path):
    handle = tiny_random_whisper(0, dropout=0.1)
    handle.model.requires_grad_(False)
    assert any("stochastic" in b for b in cache_blockers(handle.model, True, False))
    from peft import LoraConfig, get_peft_model

    model = tiny_random_whisper(0).model
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=r".*encoder.*q_proj"))
    peft.requires_grad_(False)  # frozen, but still a foreign layer in the encoder
    assert any("non-Whisper" in b for b in cache_blockers(peft, True, False))
    assert cache_blockers(tiny_random_whisper(0).model, False, False)  # recipe did not opt in


def test_trained_parts_label():
    model = tiny_random_whisper(0).model
    model.requires_grad_(False)
    model.model.decoder.layers[0].fc1.weight.requires_grad_(True)
    assert trains_label(trained_parts(model)) == "decoder"
    model.model.encoder.conv1.weight.requires_grad_(True)
    assert trains_label(trained_parts(model)) == "encoder+decoder"
    assert trains_label({"projector": 3, "decoder": 1}) == "decoder+projector"
