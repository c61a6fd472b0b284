"""Issue 8, point 3: the bad-input matrix through the user-facing CLI. Every bad item gives ONE
line naming the item (id, or file:line) and the field; the batch job (`babelora evaluate`)
finishes the good items and exits 1 with a summary. Non-batch inputs (an adapter for another
base model, a merge recipe naming missing files) exit 2 with one line."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from rel_matrix import BY_NAME, CASES, save_tiny_model, write_matrix

from babelora.cli.main import main

BAD_AUDIO = [c.name for c in CASES if c.kind == "audio"]
BAD_LINES = [c.name for c in CASES if c.kind == "line"]
WORKS = [c.name for c in CASES if c.kind == "works"]


@dataclass
class Batch:
    code: int
    out: str
    err: list[str]
    results: dict[str, dict]
    report: dict
    manifest: Path
    line: dict[str, int]


def run_cli(*args: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def batch(tmp_path_factory, model_dir) -> Batch:
    """`babelora evaluate` once over the whole matrix (a manifest of good and bad items)."""
    root = tmp_path_factory.mktemp("matrix") / "data"
    manifest, line = write_matrix(root)
    out = root.parent / "eval"
    code, stdout, stderr = run_cli(
        "evaluate",
        "--manifest",
        manifest,
        "--model",
        model_dir,
        "--out",
        out,
        "--data-root",
        root,
        "--no-progress",
        "--max-new-tokens",
        "4",
        "--min-input-seconds",
        "0",
    )
    rows = [json.loads(x) for x in (out / "hypotheses.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    return Batch(
        code, stdout, stderr.splitlines(), {r["id"]: r for r in rows}, report, manifest, line
    )


def _lines_about(batch: Batch, needle: str) -> list[str]:
    return [x for x in batch.err if needle in x and x.startswith(("error:", "skipped:"))]


@pytest.mark.parametrize("name", BAD_AUDIO)
def test_bad_audio_is_one_line_naming_the_item(batch, name):
    case = BY_NAME[name]
    (line,) = _lines_about(batch, f"error: {name}: ")  # one line, led by the item id
    assert line.startswith("error: ")
    for word in case.error:
        assert word in line, line
    suffix = ".flac" if name == "too_long" else ".wav"
    assert f"{name}{suffix}" in line  # the file (the item's audio_filepath)
    assert "\n" not in batch.results[name]["error"]  # hypotheses.jsonl holds it too


@pytest.mark.parametrize("name", BAD_LINES)
def test_bad_manifest_line_is_one_line_naming_line_and_field(batch, name):
    case = BY_NAME[name]
    where = f"{batch.manifest}:{batch.line[name]}:"
    (line,) = _lines_about(batch, where)
    assert line.startswith("skipped: ")
    for word in case.error:
        assert word in line, line
    if case.field != "line":
        assert f"'{case.field}'" in line, line
    assert name not in batch.results  # skipped, not decoded


@pytest.mark.parametrize("name", WORKS)
def test_unusual_but_valid_audio_is_decoded(batch, name):
    res = batch.results[name]
    assert "error" not in res, res
    assert isinstance(res["hypothesis"], str)
    if name in ("resampled", "stereo"):
        assert res["audio_seconds"] == pytest.approx(1.0, abs=0.01)
    if name == "long_chunked":
        assert res["chunks"] == 2 and res["audio_seconds"] == pytest.approx(45.0, abs=0.01)
    assert not _lines_about(batch, f"error: {name}: ")


def test_batch_finishes_good_items_and_exits_1_with_a_summary(batch):
    assert batch.code == 1
    assert set(batch.results) == set(WORKS) | set(BAD_AUDIO)  # every parsed line has a row
    assert all("error" not in batch.results[n] for n in WORKS)  # no good item lost
    summary = f"{len(BAD_AUDIO)} audio failures, {len(BAD_LINES)} bad manifest lines"
    assert batch.err[-1] == summary
    assert batch.report  # the report is written despite the failures
    assert "# babelora scores" in batch.out


def test_transcribe_batch_finishes_the_good_files(batch, model_dir):
    """The files path (`babelora transcribe`): same rule, one line per bad file, exit 1."""
    audio = batch.manifest.parent / "audio"
    files = [audio / "good.wav", audio / "truncated.wav", audio / "stereo.wav"]
    code, out, err = run_cli(
        "transcribe", *files, "--model", model_dir, "--no-progress", "--max-new-tokens", "3"
    )
    assert code == 1
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: {files[1]}: truncated WAV")
    assert err.splitlines()[-1] == "1 of 3 items failed"
    assert [x.split("\t")[0] for x in out.splitlines()] == [str(files[0]), str(files[2])]


def test_empty_reference_is_scored_without_crashing():
    """Decision: an empty transcript is a valid reference (e.g. silence). Its hypothesis words
    count as insertions; the corpus WER denominator counts reference words only."""
    from babelora.evaluate.metrics import wer

    assert wer([""], [""], "en").score == 0.0
    both = wer(["some words", "a tone"], ["", "a tone"], "en")
    assert both.insertions == 2 and both.hits == 2 and both.score == pytest.approx(100.0)


def test_report_lists_the_skipped_lines(batch):
    """report.json and report.md name every skipped manifest line and why (before: only
    stderr did), so that a row's n can be audited."""
    skipped = {item["line"]: item["error"] for item in batch.report["skipped"]}
    assert set(skipped) == {batch.line[name] for name in BAD_LINES}
    assert batch.report["counts"]["skipped"] == len(BAD_LINES)
    md = (batch.manifest.parent.parent / "eval" / "report.md").read_text()
    assert "## Skipped manifest lines" in md
    for name in BAD_LINES:
        error = skipped[batch.line[name]]
        assert error.startswith(f"{batch.manifest}:{batch.line[name]}: ")
        assert all(word in error for word in BY_NAME[name].error)
        assert f"- {error}" in md


def test_unknown_language_on_the_command_line(batch, model_dir, tmp_path):
    code, _, err = run_cli("evaluate", "--manifest", batch.manifest, "--langs", "en,xx")
    assert code == 2
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert "unknown language code 'xx'" in line


@pytest.mark.parametrize(
    "command, flag, value, words",
    [
        ("evaluate", "--limit", "0", "must be >= 1, got 0"),  # was: every utterance
        ("evaluate", "--limit", "-1", "must be >= 1, got -1"),  # was: all but the last
        ("evaluate", "--max-new-tokens", "0", "must be >= 1, got 0"),  # was: a traceback
        ("transcribe", "--max-new-tokens", "-3", "must be >= 1, got -3"),
        ("evaluate", "--limit", "ten", "must be a whole number >= 1, got 'ten'"),
    ],
)
def test_bad_counts_on_the_command_line_exit_2(
    batch, tmp_path, capsys, command, flag, value, words
):
    where = ["--manifest", batch.manifest] if command == "evaluate" else [tmp_path / "a.wav"]
    args = [command, *where, "--out", tmp_path / "out", flag, value]
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in args])
    assert stop.value.code == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line == f"babelora {command}: error: argument {flag}: {words}"
    assert not (tmp_path / "out").exists()  # refused before any work


def test_limit_keeps_the_first_n_utterances(batch, model_dir, tmp_path):
    out = tmp_path / "out"
    code, _, _ = run_cli(
        "evaluate", "--manifest", batch.manifest, "--model", model_dir, "--out", out,
        "--limit", "2", "--no-progress", "--max-new-tokens", "2",
    )  # fmt: skip
    rows = (out / "hypotheses.jsonl").read_text().splitlines()
    assert [json.loads(r)["id"] for r in rows] == [c.name for c in CASES[:2]]
    assert code == 1  # the bad lines further down are still reported


# ----------------------------------------------------------------------------- adapters
@pytest.fixture(scope="module")
def other_base_adapters(tmp_path_factory) -> dict[str, Path]:
    """A PEFT adapter and an expert set trained on a d_model-32 Whisper (the model is 64)."""
    from babelora.adapters import (
        LoRAConfig,
        export_peft,
        inject,
        language_experts,
        save_adapter_set,
    )
    from babelora.models.whisper import tiny_random_whisper

    root = tmp_path_factory.mktemp("adapters")
    other = tiny_random_whisper(seed=1, d_model=32, encoder_attention_heads=2)
    handle = inject(other.model, language_experts(LoRAConfig(rank=2), ("de", "en")))
    export_peft(handle, root / "peft", lang="de")
    return {"peft": root / "peft", "set": save_adapter_set(handle, root / "set")}


@pytest.mark.parametrize("flag", ["--adapter", "--experts"])
def test_adapter_for_a_different_base_model(batch, model_dir, other_base_adapters, flag, tmp_path):
    folder = other_base_adapters["peft" if flag == "--adapter" else "set"]
    manifest = tmp_path / "one.jsonl"
    first = batch.manifest.read_bytes().splitlines()[0]  # bytes: the matrix is not all UTF-8
    manifest.write_bytes(first + b"\n")
    (tmp_path / "audio").symlink_to(batch.manifest.parent / "audio")
    code, _, err = run_cli(
        "evaluate", "--manifest", manifest, "--model", model_dir, flag, folder, "--no-progress"
    )
    assert code == 2
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert line.startswith("babelora evaluate: error: ") and str(folder) in line
    assert "k_proj" in line and "32" in line and "64" in line  # the tensor and both sizes


@pytest.fixture(scope="module")
def signed_adapters(tmp_path_factory, model_dir) -> dict[str, Path]:
    """Adapters as babelora exports them (base signature beside them), each with one defect.

    sig512: an expert set whose signature says d_model=512 (the model has 64);
    seed1: a PEFT adapter trained on another checkpoint of the same architecture (seed 1);
    nomatch: a PEFT adapter whose tensors match no module (PEFT only warns, the base decodes);
    truncated: a PEFT adapter whose adapter_model.safetensors is cut in half.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    from babelora.adapters import LoRAConfig, export_peft, inject, language_experts
    from babelora.methods.experts.expert_sets import export_expert_set
    from babelora.models.base_check import write_base_signature
    from babelora.models.whisper import load_whisper

    root = tmp_path_factory.mktemp("signed")
    handle = load_whisper(model_dir)
    adapter = inject(handle.model, language_experts(LoRAConfig(rank=2), ("de", "en")))
    export_expert_set(adapter, root / "sig512", handle.name)
    sig = json.loads((root / "sig512" / "babelora_base.json").read_text())
    sig["shapes"]["d_model"] = 512
    (root / "sig512" / "babelora_base.json").write_text(json.dumps(sig))
    other = save_tiny_model(root / "seed1_model", seed=1)
    export_peft(adapter, root / "seed1", lang="de")
    write_base_signature(root / "seed1", load_whisper(other).model, "tiny-random-whisper(seed=1)")
    weights = "adapter_model.safetensors"
    shutil.copytree(root / "sig512" / "de", root / "nomatch")
    state = load_file(str(root / "nomatch" / weights))
    save_file(
        {k.replace("model.model.", "model.whisper.", 1): v for k, v in state.items()},
        root / "nomatch" / weights,
    )
    shutil.copytree(root / "sig512" / "de", root / "truncated")
    data = (root / "truncated" / weights).read_bytes()
    (root / "truncated" / weights).write_bytes(data[: len(data) // 2])
    return {name: root / name for name in ("sig512", "seed1", "nomatch", "truncated")}


SIGNED_CASES = {
    # case: (flag, words of the one error line, whether --ignore-base-mismatch decodes it)
    "sig512": ("--experts", ("d_model=512 there, d_model=64 here", "--ignore-base-mismatch"), True),
    "seed1": ("--adapter", ("trained on tiny-random-whisper(seed=1), not on", "differ"), True),
    "nomatch": ("--adapter", ("match no module", "base_model.whisper."), False),
    "truncated": ("--adapter", ("cannot read safetensors",), False),
}


@pytest.mark.parametrize("case", SIGNED_CASES)
def test_adapter_that_would_decode_the_wrong_model(
    batch, model_dir, signed_adapters, case, tmp_path
):
    """Before: sig512, seed1 and nomatch decoded with rc 0 (the wrong or the plain model),
    truncated gave a SafetensorError traceback. Now: one line, exit 2; the base check has an
    explicit escape."""
    flag, words, escapable = SIGNED_CASES[case]
    folder = signed_adapters[case]
    manifest = tmp_path / "one.jsonl"
    first = batch.manifest.read_bytes().splitlines()[0]  # bytes: the matrix is not all UTF-8
    manifest.write_bytes(first + b"\n")
    (tmp_path / "audio").symlink_to(batch.manifest.parent / "audio")
    args = ["evaluate", "--manifest", manifest, "--model", model_dir, flag, folder]
    args += ["--out", tmp_path / "eval", "--no-progress", "--max-new-tokens", "2"]
    code, _, err = run_cli(*args)
    assert code == 2, err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert line.startswith("babelora evaluate: error: ") and str(folder) in line
    for word in words:
        assert word in line, line
    if escapable:
        code, _, err = run_cli(*args, "--ignore-base-mismatch", "--missing-expert", "base")
        assert code == 0, err


# ----------------------------------------------------------------------------- merge
@pytest.mark.parametrize("missing", ["input", "base", "lora_weights"])
def test_merge_recipe_naming_missing_files(model_dir, tmp_path, missing):
    import yaml

    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    paths = {
        "input": tmp_path / "runs" / "de" / "final",
        "base": tmp_path / "no-base",
        "lora_weights": lora,
    }
    recipe = {
        "base": str(paths["base"] if missing == "base" else model_dir),
        "inputs": [{"path": str(paths[missing] if missing != "base" else model_dir)}],
        "output": {"path": str(tmp_path / "out")},
        "progress": False,
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    code, _, err = run_cli("merge", tmp_path / "r.yaml")
    assert code == 2
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert line.startswith("babelora merge: error: ") and str(paths[missing]) in line
    assert not (tmp_path / "out").exists()
