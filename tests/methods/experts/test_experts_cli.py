"""`babelora experts fuse | train-lid | export` end to end on a tiny random Whisper folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference.corpus import write_corpus
from reference.expert_sets import make_expert_set, tiny_batch

from babelora.cli.main import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model folder (seed 0), another base (seed 1), an expert set and a de/fr corpus."""
    from babelora.models.whisper import tiny_random_whisper

    root = tmp_path_factory.mktemp("experts_cli")
    for seed in (0, 1):
        handle = tiny_random_whisper(seed=seed)
        handle.model.save_pretrained(root / f"model{seed}")
        handle.tokenizer.save_pretrained(root / f"model{seed}")
    make_expert_set(root / "set", scale=0.2)
    write_corpus(root)
    write_corpus(root, {"de": 2, "fr": 2}, seed=1, name="dev")
    return root


def _logits(model, batch):
    with torch.no_grad():
        return model(
            input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"]
        ).logits


def _peft(model_dir: Path, adapter: Path):
    from peft import PeftModel

    from babelora.models.whisper import load_whisper

    base = load_whisper(model_dir).model  # variable-length encoder
    return PeftModel.from_pretrained(base, str(adapter)).eval()


def test_export_writes_one_peft_adapter_per_language(setup, capsys):
    out = setup / "peft"
    rc = main(
        [
            "experts",
            "export",
            "--experts",
            str(setup / "set"),
            "--out",
            str(out),
            "--model",
            str(setup / "model0"),
        ]
    )
    assert rc == 0
    assert "de:" in capsys.readouterr().out
    for lang in ("de", "fr"):
        assert (out / lang / "adapter_model.safetensors").is_file()
    rc = main(
        [
            "experts",
            "export",
            "--experts",
            str(setup / "set"),
            "--out",
            str(out / "x"),
            "--model",
            str(setup / "model0"),
            "--langs",
            "it",
        ]
    )
    assert rc == 2
    assert "no experts for language 'it'; experts exist for: de, fr" in capsys.readouterr().err


def test_fuse_with_given_weights(setup, capsys):
    model = str(setup / "model0")
    main(
        [
            "experts",
            "export",
            "--experts",
            str(setup / "set"),
            "--out",
            str(setup / "p2"),
            "--model",
            model,
        ]
    )
    out = setup / "fused_de"
    rc = main(
        [
            "experts",
            "fuse",
            "--experts",
            str(setup / "set"),
            "--out",
            str(out),
            "--weights",
            "de=1.0",
            "--model",
            model,
        ]
    )
    assert rc == 0
    assert "relative reconstruction error max 0.0000" in capsys.readouterr().out
    batch = tiny_batch(["de", "fr"])
    # only German with weight 1 at the experts' rank: exactly the German expert
    torch.testing.assert_close(
        _logits(_peft(setup / "model0", out), batch),
        _logits(_peft(setup / "model0", setup / "p2" / "de"), batch),
        atol=1e-4,
        rtol=1e-4,
    )
    rc = main(
        [
            "experts",
            "fuse",
            "--experts",
            str(setup / "set"),
            "--out",
            str(setup / "avg"),
            "--rank",
            "2",
            "--model",
            model,
        ]
    )
    assert rc == 0
    summary = json.loads((setup / "avg" / "fusion.json").read_text())
    assert summary["rank"] == 2 and summary["max_rel_error"] > 0.05
    assert summary["weights"] == {"de": 0.5, "fr": 0.5}


def test_fuse_learns_weights_and_gates(setup, capsys):
    model = str(setup / "model0")
    common = [
        "--experts",
        str(setup / "set"),
        "--learn",
        str(setup / "dev.jsonl"),
        "--model",
        model,
        "--steps",
        "2",
        "--batch-seconds",
        "40",
    ]
    out = setup / "learned"
    assert main(["experts", "fuse", "--out", str(out), *common]) == 0
    summary = json.loads((out / "fusion.json").read_text())
    assert summary["granularity"] == "per_layer" and len(summary["weights"]) > 1
    assert (out / "adapter_model.safetensors").is_file()
    gated = setup / "gated"
    assert main(["experts", "fuse", "--gated", "--out", str(gated), *common]) == 0
    cfg = json.loads((gated / "babelora_experts.json").read_text())
    assert cfg["router"] == "learned" and cfg["routing_level"] == "utterance"
    assert "decode with --experts" in capsys.readouterr().out


def test_train_lid_reports_accuracy(setup, capsys):
    out = setup / "lid"
    rc = main(
        [
            "experts",
            "train-lid",
            "--manifest",
            str(setup / "train.jsonl"),
            "--langs",
            "de,fr",
            "--out",
            str(out),
            "--eval",
            str(setup / "dev.jsonl"),
            "--epochs",
            "30",
            "--model",
            str(setup / "model0"),
            "--min-input-seconds",
            "0",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "LID accuracy on train:" in printed and "dev.jsonl" in printed
    report = json.loads((out / "lid_report.json").read_text())
    assert report["train"]["n"] == 10 and report[str(setup / "dev.jsonl")]["n"] == 4
    assert report["train"]["accuracy"] >= 0.8  # tones of different pitch per language
    assert (out / "lid.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "xx=1"], "unknown language code 'xx'"),
        (["--weights", "es=1"], "no experts for language 'es'"),
        (["--weights", "de=abc"], "de='abc' is not a number"),
        (["--gated"], "--gated fusion learns its gates"),
        (["--model", "MODEL1"], "adapters were trained on tiny-random-whisper(seed=0)"),
    ],
)
def test_fuse_errors(setup, capsys, args, message):
    args = [a.replace("MODEL1", str(setup / "model1")) for a in args]
    if "--model" not in args:
        args += ["--model", str(setup / "model0")]
    rc = main(
        ["experts", "fuse", "--experts", str(setup / "set"), "--out", str(setup / "err"), *args]
    )
    assert rc == 2
    assert message in capsys.readouterr().err


def test_not_an_expert_set(setup, capsys):
    rc = main(["experts", "export", "--experts", str(setup), "--out", str(setup / "e")])
    assert rc == 2
    assert "not an expert set" in capsys.readouterr().err
