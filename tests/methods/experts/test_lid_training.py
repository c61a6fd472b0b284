"""LID training: features as decode-time routing computes them; accuracy report."""

from __future__ import annotations

import pytest
import torch

from babelora.data.manifest import read_manifest
from babelora.decode.routing import predict_languages
from babelora.decode.runner import Request, RunnerOptions
from babelora.errors import ConfigError
from babelora.methods.experts.lid_training import (
    evaluate_lid,
    lid_examples,
    pooled_features,
    train_lid,
)
from babelora.models.lid import LidConfig, LidHead, predict

OPTS = RunnerOptions(show_progress=False, min_input_seconds=0.0, max_batch_size=3)


def test_head_predicts_as_decode_routing_does(corpus_dir, tiny_handle):
    utts = read_manifest(corpus_dir / "train.jsonl")
    head = train_lid(tiny_handle, utts, ["de", "fr"], LidConfig(epochs=20), OPTS)
    paths = [p for p, _ in lid_examples(utts, ["de", "fr"])]
    ours, _ = predict(head, pooled_features(tiny_handle, paths, OPTS))
    reqs = [Request(str(i), p, lang="de") for i, p in enumerate(paths)]
    routed = predict_languages(tiny_handle, head, reqs, OPTS)
    assert [r.lang for r in routed] == ours


def test_accuracy_report_and_duplicate_audio(corpus_dir, tiny_handle):
    utts = read_manifest(corpus_dir / "train.jsonl")
    twice = utts + utts  # an ST row reusing the ASR row's audio counts once
    assert len(lid_examples(twice, ["de", "fr"])) == len(utts)
    head = LidHead(64, ("de", "fr"))
    with torch.no_grad():
        head.mlp[-1].bias.copy_(torch.tensor([-9.0, 9.0]))  # always French
    report = evaluate_lid(head.eval(), tiny_handle, twice, OPTS)
    assert report.n == 10 and report.accuracy == pytest.approx(4 / 10)
    assert report.per_lang == {"de": 0.0, "fr": 1.0}
    assert report.confusion["de"] == {"fr": 6}


def test_missing_language_is_an_error(corpus_dir, tiny_handle):
    utts = read_manifest(corpus_dir / "train.jsonl")
    with pytest.raises(ConfigError, match=r"no utterance of \['es'\]"):
        train_lid(tiny_handle, utts, ["de", "es"], LidConfig(epochs=1), OPTS)
