"""`babelora score` end to end: a tiny manifest (audio absent) and a hypotheses file."""

import json

import pytest

from babelora.cli import main as cli_main


def test_score_is_a_registered_command():
    assert cli_main.score in cli_main.COMMANDS


@pytest.fixture
def run():
    return cli_main.main


@pytest.fixture
def files(tmp_path):
    manifest = tmp_path / "m.jsonl"
    rows = [
        {
            "id": "a",
            "audio_filepath": "audio/a.wav",
            "duration": 1.5,
            "lang": "en",
            "text": "The weather is lovely today.",
        },
        {
            "id": "b",
            "audio_filepath": "audio/b.wav",
            "duration": 2.0,
            "lang": "de",
            "text": "Das Wetter ist heute schön.",
        },
        {
            "id": "c",
            "audio_filepath": "audio/c.wav",
            "duration": 2.0,
            "lang": "de",
            "task": "st",
            "text": "Das Wetter ist heute schön.",
            "translation": "The weather is nice today.",
            "target_lang": "en",
        },
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    hyps = tmp_path / "h.jsonl"
    lines = [
        {"id": "a", "hypothesis": "the weather is lovely today", "lang_used": "en"},
        {"id": "b", "hypothesis": "Das Wetter ist heute schön", "lang_used": "de"},
        {"id": "c", "hypothesis": "The weather is nice today.", "lang_used": "de"},
    ]
    hyps.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return manifest, hyps


def test_score_end_to_end(run, files, tmp_path, capsys):
    manifest, hyps = files
    out, md = tmp_path / "r" / "report.json", tmp_path / "r" / "report.md"
    code = run(
        [
            "score",
            "--manifest",
            str(manifest),
            "--hyps",
            str(hyps),
            "--out",
            str(out),
            "--markdown",
            str(md),
            "--lang-source",
            "given",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "## ASR" in printed and "## ST" in printed and "tok:13a" in printed
    assert md.read_text(encoding="utf-8") == printed
    report = json.loads(out.read_text(encoding="utf-8"))
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["en"]["score"] == 0.0 and rows["de"]["score"] == 0.0
    assert rows["de-en"]["score"] == pytest.approx(100.0)
    assert rows["de-en"]["lang_source"] == "given"
    assert rows["de-en"]["lang_used_accuracy"] == 100.0
    assert report["counts"]["scored"] == 3


def test_missing_ids_are_named(run, files, capsys):
    manifest, hyps = files
    hyps.write_text(hyps.read_text().splitlines()[0] + "\n" + '{"id": "zz", "hypothesis": "x"}\n')
    assert run(["score", "--manifest", str(manifest), "--hyps", str(hyps)]) == 2
    err = capsys.readouterr().err
    assert "babelora score: error: 2 of 3 utterances have no hypothesis: 'b', 'c'" in err
    assert "--allow-missing" in err
    code = run(
        [
            "score",
            "--manifest",
            str(manifest),
            "--hyps",
            str(hyps),
            "--allow-missing",
            "--no-langid",
        ]
    )
    assert code == 0
    assert "2 missing, 1 extra" in capsys.readouterr().out


def test_malformed_hypotheses_line(run, files, capsys):
    manifest, hyps = files
    hyps.write_text('{"id": "a", "hypothesis": "x"}\n{"id": "b", "hypo": "y"}\n')
    assert run(["score", "--manifest", str(manifest), "--hyps", str(hyps)]) == 2
    assert f"{hyps}:2: field 'hypothesis' is missing" in capsys.readouterr().err


def test_bad_manifest_and_missing_files(run, files, tmp_path, capsys):
    manifest, hyps = files
    assert run(["score", "--manifest", str(tmp_path / "no.jsonl"), "--hyps", str(hyps)]) == 2
    assert "manifest not found" in capsys.readouterr().err
    assert run(["score", "--manifest", str(manifest), "--hyps", str(tmp_path / "no.jsonl")]) == 2
    assert "hypotheses file not found" in capsys.readouterr().err
    manifest.write_text('{"id": "a", "audio_filepath": "a.wav", "duration": 1, "lang": "xx"}\n')
    assert run(["score", "--manifest", str(manifest), "--hyps", str(hyps)]) == 2
    assert "m.jsonl:1: field 'lang'" in capsys.readouterr().err
    manifest.write_text("\n")
    assert run(["score", "--manifest", str(manifest), "--hyps", str(hyps)]) == 2
    assert "no utterances to score" in capsys.readouterr().err


def test_score_with_baseline_prints_paired_differences(run, files, tmp_path, capsys):
    import gzip

    manifest, hyps = files
    baseline = tmp_path / "a.jsonl.gz"  # compressed, as bench/results keeps hypotheses
    rows = [
        {"id": "a", "hypothesis": "the weather is lovely"},
        {"id": "b", "hypothesis": "Das Wetter ist schön"},
        {"id": "c", "hypothesis": "The weather."},
    ]
    with gzip.open(baseline, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    out = tmp_path / "diff.json"
    args = ["score", "--manifest", str(manifest), "--hyps", str(hyps), "--no-langid"]
    code = run([*args, "--baseline", str(baseline), "--compare-out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| row | n | metric | baseline | system | system - baseline [95 % CI] |" in printed
    diff = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert diff["en"]["a"] == pytest.approx(20.0) and diff["en"]["b"] == 0.0
    assert diff["en"]["delta"]["estimate"] == pytest.approx(-20.0)
    assert diff["de-en"]["metric"] == "bleu" and diff["de-en"]["delta"]["estimate"] > 0
    assert diff["asr"]["a"] == pytest.approx((20.0 + 20.0) / 2)  # macro over en and de
    assert run([*args, "--compare-out", str(out)]) == 2
    assert "--compare-out needs --baseline" in capsys.readouterr().err
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps(rows[0]) + "\n")
    assert run([*args, "--baseline", str(short)]) == 2
    assert "system A: 2 of 3 utterances have no hypothesis" in capsys.readouterr().err


def test_subset_scores_only_the_decoded_rows(run, files, tmp_path, capsys):
    manifest, hyps = files
    hyps.write_text(hyps.read_text().splitlines()[1] + "\n")  # only "b" was decoded
    args = ["score", "--manifest", str(manifest), "--hyps", str(hyps), "--no-langid"]
    assert run(args) == 2  # the whole manifest: a and c have no hypothesis
    capsys.readouterr()
    out = tmp_path / "r.json"
    assert run([*args, "--subset", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["counts"]["references"] == 1
    other = tmp_path / "other.jsonl"
    other.write_text('{"id": "zz", "hypothesis": "x"}\n')
    assert run([*args[:4], str(other), "--subset"]) == 2
    assert "no hypothesis matches an id" in capsys.readouterr().err
