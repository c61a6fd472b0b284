"""Decoding with language experts: mixed-language batches route per row, LID predicts languages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from babelora.adapters import LoRAConfig, export_peft, inject, language_experts, save_adapter_set
from babelora.decode.routing import adapter_batch_hook, predict_languages
from babelora.decode.runner import Request, RunnerOptions, decode_requests
from babelora.decode.search import DecodeOptions
from babelora.methods.loading import apply_peft_adapter
from babelora.models.lid import LidHead
from babelora.models.whisper import tiny_random_whisper

LANGS = ("de", "fr")
OPTS = RunnerOptions(show_progress=False, min_input_seconds=0.0)


def _experts(seed=0):
    handle = tiny_random_whisper(seed=seed)
    adapter = inject(handle.model, language_experts(LoRAConfig(rank=4, alpha=8.0), LANGS))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.model.parameters():
            if p.requires_grad:  # expert A and B: large enough to change the outputs
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return handle, adapter


def _audio(tmp_path, n=4):
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        wave = 0.2 * rng.standard_normal(int(16000 * (0.6 + 0.2 * i))).astype(np.float32)
        paths.append(tmp_path / f"u{i}.wav")
        sf.write(str(paths[-1]), wave, 16000)
    return paths


@pytest.mark.parametrize("beam_size", [1, 3])
def test_mixed_batch_equals_each_language_alone_and_peft(tmp_path, beam_size):
    handle, adapter = _experts()
    files = _audio(tmp_path)
    reqs = [Request(f"u{i}", str(f), lang=LANGS[i % 2]) for i, f in enumerate(files)]
    dec = DecodeOptions(beam_size=beam_size, max_new_tokens=6)
    mixed = decode_requests(handle, reqs, dec, OPTS, before_batch=adapter_batch_hook(adapter))
    for lang in LANGS:
        rows = [r for r in reqs if r.lang == lang]
        alone = decode_requests(handle, rows, dec, OPTS, before_batch=adapter_batch_hook(adapter))
        got = {r.id: r.hypothesis for r in mixed}
        assert [got[r.id] for r in alone] == [r.hypothesis for r in alone]
        export_peft(adapter, tmp_path / lang, lang=lang)
        base = tiny_random_whisper(seed=0)  # same base weights, no experts
        apply_peft_adapter(base, tmp_path / lang)
        peft = decode_requests(base, rows, dec, OPTS)
        assert [got[r.id] for r in peft] == [r.hypothesis for r in peft]
    plain = decode_requests(tiny_random_whisper(seed=0), reqs, dec, OPTS)
    assert [r.hypothesis for r in plain] != [r.hypothesis for r in mixed]  # experts do act


def test_predict_languages_with_lid_head(tmp_path):
    handle, adapter = _experts()
    head = LidHead(64, LANGS)
    with torch.no_grad():
        head.mlp[-1].bias.copy_(torch.tensor([-5.0, 5.0]))  # always French
    reqs = [Request(f"u{i}", str(f), lang="de") for i, f in enumerate(_audio(tmp_path, 3))]
    reqs.append(Request("missing", str(tmp_path / "none.wav"), lang="de"))
    out = predict_languages(handle, head, reqs, OPTS, adapter, posterior=True)
    assert [r.lang for r in out[:3]] == ["fr"] * 3
    assert all(r.lang_source == "predicted" and r.lang_probs[1] > 0.99 for r in out[:3])
    assert out[3].lang == "de" and out[3].lang_source == "given"  # unreadable: left for decode
    results = decode_requests(
        handle, out, DecodeOptions(max_new_tokens=4), OPTS, before_batch=adapter_batch_hook(adapter)
    )
    assert [r.lang_source for r in results[:3]] == ["predicted"] * 3
    assert results[3].error and "not found" in results[3].error


def test_cli_evaluate_with_experts_and_lid(tmp_path, monkeypatch):
    from babelora.cli.main import main
    from babelora.models import whisper as whisper_mod

    handle, adapter = _experts()
    save_adapter_set(adapter, tmp_path / "experts")
    head = LidHead(64, LANGS)
    head.save(tmp_path / "lid")
    files = _audio(tmp_path, 2)
    manifest = tmp_path / "m.jsonl"
    rows = [
        {
            "id": f"u{i}",
            "audio_filepath": str(f),
            "duration": 1.0,
            "lang": LANGS[i],
            "text": "hallo welt",
        }
        for i, f in enumerate(files)
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setattr(whisper_mod, "load_whisper", lambda *a, **k: tiny_random_whisper(seed=0))
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            "--experts",
            str(tmp_path / "experts"),
            "--lid",
            str(tmp_path / "lid"),
            "--no-progress",
            "--max-new-tokens",
            "4",
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["lang_source"] == "predicted"
    hyps = [json.loads(x) for x in (out / "hypotheses.jsonl").read_text().splitlines()]
    assert all(h["lang_source"] == "predicted" for h in hyps)
