"""End-to-end: `babelora export` as a user runs it, on a tiny random base (a transformers
folder) with a tiny language-expert set (de, fr, nl), a PEFT LoRA and a run folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference.expert_sets import make_expert_set
from reference.export_models import random_lora

from babelora.cli.main import main
from babelora.methods.loading import apply_peft_adapter, load_expert_set
from babelora.models.ct2 import load_ct2_whisper
from babelora.models.whisper import load_whisper, tiny_random_whisper

LANGS = ("de", "fr", "nl")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """base/ (tiny_random_whisper(0) saved), experts/ (the set, in a run folder with its
    config.yaml), lora/, report/ (a `babelora evaluate` report)."""
    from babelora.evaluate.report import score_results, write_report

    root = tmp_path_factory.mktemp("export")
    handle = tiny_random_whisper(seed=0)
    handle.model.save_pretrained(str(root / "base"))
    handle.tokenizer.save_pretrained(str(root / "base"))
    run = root / "run"
    make_expert_set(run / "final", langs=LANGS, scale=0.5)
    (run / "config.yaml").write_text("recipe:\n  name: experts\nseed: 1234\n", encoding="utf-8")
    random_lora(handle.model, root / "lora")
    refs = [{"id": "u1", "lang": "de", "task": "asr", "text": "guten morgen"}]
    report = score_results(refs, [{"id": "u1", "hypothesis": "guten morgen"}])
    write_report(report, root / "report" / "report.json", root / "report" / "report.md")
    return {"root": root, "base": root / "base", "experts": run / "final", "lora": root / "lora"}


def _folded(assets, lang: str) -> dict[str, torch.Tensor]:
    """The reference: the set on its base, `lang` folded in by AdapterHandle.unload."""
    handle = load_whisper(assets["base"])
    adapter = load_expert_set(handle, assets["experts"])
    return adapter.unload(lang=lang, merge=True).state_dict()


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.shape == b.shape and a.contiguous().numpy().tobytes() == b.contiguous().numpy().tobytes()
    )


def _export(*args: str) -> int:
    return main(["export", *map(str, args)])


def test_ct2_of_one_language_is_that_language_folded_in(assets, tmp_path):
    out = tmp_path / "de"
    code = _export("--format", "ct2", "--model", assets["base"], "--experts", assets["experts"],
                   "--language", "de", "--dtype", "float32", "--out", out)  # fmt: skip
    assert code == 0
    state, _, _ = load_ct2_whisper(out)
    want = _folded(assets, "de")
    assert set(state) == set(want)
    assert all(_same_bits(state[k], want[k].float()) for k in want)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "- de" in card and "LoRA language experts" in card
    assert "seed: 1234" in card  # the run's config.yaml, found beside the set


def test_all_languages_writes_one_folder_each(assets, tmp_path):
    code = _export(
        "--format",
        "ct2",
        "--model",
        assets["base"],
        "--experts",
        assets["experts"],
        "--all-languages",
        "--out",
        tmp_path,
    )  # fmt: skip  (float16 by default)
    assert code == 0
    states = {lang: load_ct2_whisper(tmp_path / lang)[0] for lang in LANGS}
    name = "model.encoder.layers.0.fc1.weight"
    for lang in LANGS:
        want = _folded(assets, lang)[name].half().float()
        assert _same_bits(states[lang][name], want), lang
    assert not torch.equal(states["de"][name], states["fr"][name])


def test_hf_of_an_expert_set_is_the_base_with_one_adapter_per_language(assets, tmp_path):
    out = tmp_path / "hf"
    code = _export("--format", "hf", "--model", assets["base"], "--experts", assets["experts"],
                   "--out", out, "--data-license", "CC0-1.0")  # fmt: skip
    assert code == 0
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    base = load_whisper(assets["base"]).model.state_dict()
    exported = load_whisper(out)
    assert all(_same_bits(v, base[k]) for k, v in exported.model.state_dict().items())
    for lang in LANGS:
        folder = out / "adapters" / lang
        assert (folder / "adapter_model.safetensors").is_file()
        assert f"# {lang} LoRA expert" in (folder / "README.md").read_text(encoding="utf-8")
    apply_peft_adapter(exported, out / "adapters" / "fr")  # base signature checked
    want = _folded(assets, "fr")
    for k, v in exported.model.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=1e-6)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "adapters/<lang>/" in card and "Training data: CC0-1.0" in card


def test_hf_of_a_fine_tune_has_a_full_model_card(assets, tmp_path):
    out = tmp_path / "hf"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("recipe:\n  name: lora\n", encoding="utf-8")
    report = assets["root"] / "report" / "report.json"
    code = _export("--format", "hf", "--model", assets["base"], "--adapter", assets["lora"],
                   "--out", out, "--run", run, "--report", report,
                   "--base-license", "Apache-2.0")  # fmt: skip
    assert code == 0
    tuned = load_whisper(assets["base"])
    apply_peft_adapter(tuned, assets["lora"])
    want = tuned.model.state_dict()
    got = load_whisper(out).model.state_dict()
    assert all(_same_bits(got[k], want[k]) for k in want)
    card = (out / "README.md").read_text(encoding="utf-8")
    md = (assets["root"] / "report" / "report.md").read_text(encoding="utf-8")
    table = [line for line in md.splitlines() if line.startswith("| de ")]
    assert table and table[0] in card  # report.json rendered as babelora renders report.md
    assert "## Evaluation" in card and "name: lora" in card
    assert "Base model: Apache-2.0" in card and "Training data: not stated" in card
    assert "LoRA fine-tuning" in card and "library_name: transformers" in card


def _bad_set(root: Path) -> Path:
    """A MoLoRA set with a learned router: no plain model equals one language of it."""
    from babelora.adapters import LoRAConfig, MoLoRAConfig, inject
    from babelora.methods.experts.expert_sets import export_expert_set

    handle = tiny_random_whisper(seed=0)
    cfg = MoLoRAConfig(
        lora=LoRAConfig(rank=2, targets=("whisper-qv",)), languages=("de", "fr"), router="learned"
    )
    return export_expert_set(inject(handle.model, cfg), root / "learned", "tiny-random-whisper")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "ct2", "--experts", "{experts}"], "CTranslate2 has no expert routing"),
        (["--format", "ct2", "--language", "de"], "give --experts"),
        (["--format", "ct2", "--experts", "{experts}", "--language", "es"], "'es'; expected"),
        (["--format", "ct2", "--experts", "{experts}", "-l", "de", "--dtype", "int8"], "int8"),
        (["--format", "hf", "--experts", "{base}"], "not an expert set"),
        (["--format", "hf", "--out", "{base}"], "--overwrite"),
        (["--format", "ct2", "--experts", "{learned}", "-l", "de"], "router 'learned'"),
        (["--format", "hf", "--experts", "{learned}"], "router 'learned'"),
        (["--format", "hf", "--report", "{base}"], "--report"),
    ],
)
def test_user_errors_are_one_line(assets, tmp_path, capsys, args, message):
    paths = {"experts": assets["experts"], "base": assets["base"]}
    if any("{learned}" in a for a in args):
        paths["learned"] = _bad_set(tmp_path)
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert main(["export", "--model", str(assets["base"]), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' progress bars
    assert err.startswith("babelora export: error: ") and message in err, err
    assert not (tmp_path / "out").exists()
