"""Never silently the wrong model with `--experts`: a language without an expert is an error
unless `--missing-expert` says what to do, and every output names the expert that decoded it."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from reference.expert_sets import make_expert_set
from rel_matrix import SR, save_tiny_model

from babelora.cli.main import main

LANGS = {"u-de": "de", "u-fr": "fr", "u-es": "es"}


def run_cli(*args: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """The tiny model (seed 0), a de/fr expert set trained on it, and a de/fr/es manifest."""
    root = tmp_path_factory.mktemp("experts")
    model = save_tiny_model(root / "model")
    experts = make_expert_set(root / "set", ("de", "fr"), scale=0.5)
    rows = []
    for i, (uid, lang) in enumerate(LANGS.items()):
        wave = 0.2 * np.random.default_rng(i).standard_normal(int(SR * (0.6 + 0.2 * i)))
        sf.write(root / f"{uid}.wav", wave.astype(np.float32), SR)
        rows.append({"id": uid, "audio_filepath": f"{uid}.wav", "duration": 1.0, "lang": lang})
    manifest = root / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "model": model, "experts": experts, "manifest": manifest}


def evaluate(setup, out: str, *extra: object) -> tuple[int, str, str]:
    return run_cli(
        "evaluate",
        "--manifest",
        setup["manifest"],
        "--model",
        setup["model"],
        "--out",
        setup["root"] / out,
        "--no-progress",
        "--max-new-tokens",
        "4",
        "--min-input-seconds",
        "0",
        *extra,
    )


def hypotheses(setup, out: str) -> dict[str, dict]:
    lines = (setup["root"] / out / "hypotheses.jsonl").read_text().splitlines()
    return {row["id"]: row for row in map(json.loads, lines)}


def test_a_language_without_an_expert_is_an_error(setup):
    """Before: 'es' decoded with the bare base, rc 0, and the report said experts=<set>."""
    code, _, err = evaluate(setup, "default", "--experts", setup["experts"])
    assert code == 2
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert "no experts for language 'es'" in line and "'u-es'" in line
    assert "the expert set has de, fr" in line and "--missing-expert base" in line
    assert not (setup["root"] / "default" / "hypotheses.jsonl").exists()  # nothing decoded


def test_missing_expert_base_decodes_with_the_bare_base_and_says_so(setup):
    code, out, _ = evaluate(
        setup, "base", "--experts", setup["experts"], "--missing-expert", "base"
    )
    assert code == 0
    rows = hypotheses(setup, "base")
    assert {uid: row["expert"] for uid, row in rows.items()} == {
        "u-de": "de",
        "u-fr": "fr",
        "u-es": "base",
    }
    plain_code, _, _ = evaluate(setup, "plain")  # no expert set at all
    assert plain_code == 0
    plain = hypotheses(setup, "plain")
    assert rows["u-es"]["hypothesis"] == plain["u-es"]["hypothesis"]
    assert "expert" not in plain["u-es"]
    report = json.loads((setup["root"] / "base" / "report.json").read_text())
    assert report["experts"] == {"de": 1, "fr": 1, "base": 1}
    by_lang = {row["lang"]: row["experts"] for row in report["rows"]}
    assert by_lang == {"de": {"de": 1}, "es": {"base": 1}, "fr": {"fr": 1}}
    assert report["meta"]["missing_expert"] == "base"
    assert (
        "Experts that decoded the outputs: base 1, de 1, fr 1 (per row: de: de 1;" in out
    )  # report.md, printed


def test_missing_expert_can_name_another_language(setup):
    code, _, _ = evaluate(setup, "to_de", "--experts", setup["experts"], "--missing-expert", "de")
    assert code == 0
    assert hypotheses(setup, "to_de")["u-es"]["expert"] == "de"
    code, _, err = evaluate(setup, "to_it", "--experts", setup["experts"], "--missing-expert", "it")
    assert code == 2
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert "--missing-expert it: the expert set has no 'it' experts (experts: de, fr)" in line


def test_transcribe_names_the_expert_too(setup):
    wav = setup["root"] / "u-de.wav"
    base = ("transcribe", wav, "--model", setup["model"], "--experts", setup["experts"])
    code, _, err = run_cli(*base, "--language", "es", "--no-progress")
    assert code == 2 and "no experts for language 'es'" in err
    out = setup["root"] / "t.jsonl"
    code, _, _ = run_cli(*base, "-l", "fr", "--out", out, "--max-new-tokens", "3", "--no-progress")
    assert code == 0
    assert json.loads(out.read_text())["expert"] == "fr"
