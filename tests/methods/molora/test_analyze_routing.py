"""End-to-end: `babelora analyze routing` on a tiny random Whisper with a saved MoLoRA set."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from reference.tiny_models import randomize_experts

from babelora.adapters import LoRAConfig, MoLoRAConfig, inject
from babelora.adapters.mgrf import MGRFConfig
from babelora.cli.main import main
from babelora.methods.molora.model import attach_mgrf, save_molora
from babelora.models.whisper import tiny_random_whisper

LANGS = ("de", "fr", "es")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    base = tiny_random_whisper(seed=0)
    base.model.save_pretrained(str(root / "model"), safe_serialization=True)
    base.tokenizer.save_pretrained(str(root / "model"))
    rows = []
    for i in range(9):
        lang = LANGS[i % 3]
        wave = 0.2 * np.random.default_rng(i).standard_normal(int(16000 * (0.4 + 0.1 * i)))
        sf.write(str(root / f"{i}.wav"), wave.astype(np.float32), 16000)
        rows.append(
            {"id": f"u{i}", "audio_filepath": f"{i}.wav", "duration": 0.4 + 0.1 * i}
            | {"lang": lang, "text": "guten morgen" if i % 2 else "hola"}
        )
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def save_set(root, name, **cfg):
    handle = tiny_random_whisper(seed=0)
    config = MoLoRAConfig(lora=LoRAConfig(rank=2), languages=LANGS[:2], **cfg)
    adapter = inject(handle.model, config)
    randomize_experts(adapter, seed=1, scale=0.3)
    with torch.no_grad():
        for layer in adapter.layers.values():
            if layer.router is not None:
                for p in layer.router.parameters():
                    p.normal_(std=0.5)
    mgrf = attach_mgrf(handle.model, adapter, MGRFConfig())
    return save_molora(adapter, root / name, mgrf)


def run(root, experts, out, *extra):
    args = ["analyze", "routing", "--model", str(root / "model"), "--experts", str(experts)]
    return main([*args, "--manifest", str(root / "m.jsonl"), "--out", str(out), *extra])


def read_table(out, group="all"):
    with open(out / "routing_usage.csv", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r["group"] == group]


def test_learned_router_heatmap_and_table(setup, tmp_path, capsys):
    experts = save_set(setup, "learned", router="learned", top_k=1)
    out = tmp_path / "out"
    assert run(setup, experts, out, "--no-progress", "--batch-size", "4") == 0
    for suffix in ("png", "csv", "json", "md"):
        assert (out / f"routing_usage.{suffix}").stat().st_size > 0
    assert (out / "routing_usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "routing_usage.json").read_text())
    assert data["languages"] == ["de", "es", "fr"] and data["experts"] == ["de", "fr"]
    assert data["utterances"] == {"de": 3, "es": 3, "fr": 3}
    assert set(data["groups"]) == {"all", "encoder", "decoder"}
    for group in data["groups"].values():  # top-1 gates sum to 1 for every utterance
        assert np.allclose(np.sum(group, axis=1), 1.0, atol=1e-5)
    assert len(read_table(out)) == 3 * 2
    assert "| de (3) |" in capsys.readouterr().out


def test_language_router_is_one_hot_and_unknown_languages_get_nothing(setup, tmp_path):
    experts = save_set(setup, "lang", router="language")
    out = tmp_path / "out"
    assert run(setup, experts, out, "--no-progress", "--max-items", "6", "--seed", "1") == 0
    table = {(r["language"], r["expert"]): float(r["weight"]) for r in read_table(out)}
    assert table[("de", "de")] == 1.0 and table[("de", "fr")] == 0.0
    assert table[("fr", "fr")] == 1.0 and table[("es", "de")] == table[("es", "fr")] == 0.0
    assert sum(int(r["utterances"]) for r in read_table(out)) // 2 == 6


def test_errors_are_one_line(setup, tmp_path, capsys):
    assert run(setup, tmp_path / "missing", tmp_path / "o") == 2
    assert "expert set folder not found" in capsys.readouterr().err
    experts = save_set(setup, "x", router="language")
    assert run(setup, experts, tmp_path / "o", "--langs", "it") == 2
    assert "no utterances to analyse" in capsys.readouterr().err
    assert main(["analyze", "routing", "--experts", str(experts), "--manifest", "no.jsonl",
                 "--out", str(tmp_path)]) == 2  # fmt: skip
    assert "manifest not found" in capsys.readouterr().err
