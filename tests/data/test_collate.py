"""SpeechDataset + WhisperCollator: shapes, label masking, padding, prompts, cache, SpecAugment."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from babelora.data.audio import load_audio, log_mel
from babelora.data.collate import IGNORE_INDEX, SpecAugment, SpeechDataset, WhisperCollator
from babelora.data.manifest import Utterance, read_manifest
from babelora.errors import LanguageError, ManifestError
from babelora.data.prompts import whisper_prompt_ids

from reference.corpus import write_corpus


@pytest.fixture(scope="module")
def utts(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return read_manifest(write_corpus(root, {"de": 3, "fr": 2}))


@pytest.fixture(scope="module")
def tok(tiny_handle):
    return tiny_handle.tokenizer


def batch_of(utts, tok, **kw):
    ds = SpeechDataset(utts)
    collate = WhisperCollator(tok, ["de", "fr"], **kw)
    return collate([ds[i] for i in range(len(utts))]), ds


def test_shapes_and_lengths(utts, tok):
    batch, ds = batch_of(utts, tok)
    B = len(utts)
    feats = batch["input_features"]
    lens = batch["feature_lens"]
    assert feats.shape[:2] == (B, 80)
    assert feats.shape[2] % 2 == 0
    assert feats.shape[2] in (int(lens.max()), int(lens.max()) + 1)
    assert batch["decoder_input_ids"].shape == batch["labels"].shape
    assert batch["lang_ids"].tolist() == [0 if u.lang == "de" else 1 for u in utts]
    assert batch["langs"] == [u.lang for u in utts]
    assert batch["ids"] == [u.id for u in utts]
    assert batch["tasks"] == ["asr"] * B
    for b, u in enumerate(utts):
        ref = log_mel(load_audio(u.audio_filepath))
        assert int(lens[b]) == ref.shape[-1]
        torch.testing.assert_close(feats[b, :, : ref.shape[-1]], ref)
        # padding = what Whisper's front end gives zero-padded audio: the clamp floor
        assert torch.all(feats[b, :, ref.shape[-1] :] == ref.max() - 2.0)


def test_labels_masked_on_prompt_and_padding(utts, tok):
    batch, _ = batch_of(utts, tok)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    for b, u in enumerate(utts):
        prompt = whisper_prompt_ids(tok, u.lang, "asr")
        text = tok.encode(" " + u.text, add_special_tokens=False)
        ids = batch["decoder_input_ids"][b].tolist()
        labels = batch["labels"][b].tolist()
        n = len(prompt) + len(text)
        assert ids[:n] == prompt + text
        assert all(t == eot for t in ids[n:])  # padding
        assert labels[: len(prompt) - 1] == [IGNORE_INDEX] * (len(prompt) - 1)
        assert labels[len(prompt) - 1 : n] == text + [eot]
        assert all(t == IGNORE_INDEX for t in labels[n:])
        # labels are the next tokens of the full sequence
        assert labels[len(prompt) - 1 : n - 1] == ids[len(prompt) : n]


def test_pad_to_30s_and_pad_seconds(utts, tok):
    batch, _ = batch_of(utts, tok, pad_to_30s=True)
    assert batch["input_features"].shape[-1] == 3000
    ds = SpeechDataset(utts)
    collate = WhisperCollator(tok, ["de", "fr"])
    out = collate([ds[(0, 4.0)], ds[(1, 4.0)]])
    assert out["input_features"].shape[-1] == 400
    out = WhisperCollator(tok, ["de", "fr"], min_input_seconds=10.0)([ds[0]])
    assert out["input_features"].shape[-1] == 1000


def test_st_prompt_and_english_style(tok, utts):
    u = utts[0]
    st = Utterance(u.id, u.audio_filepath, u.duration, "de", "st", "hallo", "hello", "en")
    ds = SpeechDataset([st])
    out = WhisperCollator(tok, ["de"])([ds[0]])
    prompt = whisper_prompt_ids(tok, "de", "st", "en")
    assert out["decoder_input_ids"][0, : len(prompt)].tolist() == prompt
    assert tok.convert_tokens_to_ids("<|translate|>") in prompt
    text = tok.encode(" hello", add_special_tokens=False)
    assert out["labels"][0, len(prompt) - 1 : len(prompt) - 1 + len(text)].tolist() == text
    eng = WhisperCollator(tok, ["de"], prompt_style="english")([ds[0]])
    assert eng["decoder_input_ids"][0, :2].tolist() == whisper_prompt_ids(
        tok, "de", style="english"
    )


def test_errors_name_the_utterance(utts, tok):
    ds = SpeechDataset(utts)
    with pytest.raises(LanguageError, match=utts[-1].id):
        WhisperCollator(tok, ["de"])([ds[len(utts) - 1]])
    with pytest.raises(ManifestError, match="decoder tokens"):
        WhisperCollator(tok, ["de", "fr"], max_target_tokens=3)([ds[0]])


def test_feature_cache(utts, tmp_path):
    ds = SpeechDataset(utts[:2], feature_cache=tmp_path / "cache")
    first = ds[0]["features"]
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 1
    again = SpeechDataset(utts[:2], feature_cache=tmp_path / "cache")
    assert torch.equal(again[0]["features"], first)


def test_spec_augment_off_by_default_and_deterministic(utts, tok):
    plain, _ = batch_of(utts, tok)
    off, _ = batch_of(utts, tok, spec_augment=SpecAugment())
    assert torch.equal(plain["input_features"], off["input_features"])
    aug = SpecAugment(enabled=True, freq_width=10, time_width=0.2)
    a, _ = batch_of(utts, tok, spec_augment=aug, seed=1)
    b, _ = batch_of(utts, tok, spec_augment=aug, seed=1)
    c, _ = batch_of(utts, tok, spec_augment=aug, seed=2)
    assert torch.equal(a["input_features"], b["input_features"])
    assert not torch.equal(a["input_features"], plain["input_features"])
    assert not torch.equal(a["input_features"], c["input_features"])
    assert torch.equal(a["labels"], plain["labels"])
