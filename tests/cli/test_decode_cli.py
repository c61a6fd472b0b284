"""End-to-end: `babelora transcribe / translate / evaluate` as a user runs them (on the small
tiny.en, named: the default model, base, is slower)."""

from __future__ import annotations

import json
import subprocess
import sys

from reference.speech import needs_espeak, speak

from babelora.cli.main import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "babelora.cli", *args], capture_output=True, text=True, timeout=300
    )


@needs_espeak
def test_transcribe_prints_the_right_words(tmp_path):
    wav = speak("Please correct the error below.", tmp_path / "a.wav")
    proc = run_cli("transcribe", str(wav), "--model", "tiny.en", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "Please correct the error below." in proc.stdout


def test_transcribe_missing_file_is_one_line_error(tmp_path, tone_wav, capsys):
    good = tone_wav(0.5)
    code = main(
        [
            "transcribe",
            str(good),
            str(tmp_path / "missing.wav"),
            "--model",
            "tiny.en",
            "--no-progress",
            "--max-new-tokens",
            "3",
            "--out",
            str(tmp_path / "o.jsonl"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "missing.wav: audio file not found" in err and "1 of 2 items failed" in err
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert rows[0]["error"] is None if "error" in rows[0] else True
    assert "error" in rows[1]


def test_bad_language_and_model(tmp_path, tone_wav, capsys):
    assert main(["transcribe", str(tone_wav(0.5)), "--language", "xx", "--model", "tiny.en"]) == 2
    assert "unknown language code 'xx'" in capsys.readouterr().err
    assert main(["translate", str(tone_wav(0.5)), "--model", str(tmp_path / "nomodel")]) == 2
    assert "not found" in capsys.readouterr().err


@needs_espeak
def test_evaluate_writes_per_language_report(tmp_path):
    rows = []
    for i, (lang, voice, text) in enumerate(
        [
            ("en", "en-us", "Please correct the error below."),
            ("en", "en-us", "This field is required."),
            ("de", "de", "Guten Morgen."),
        ]
    ):
        speak(text, tmp_path / f"{i}.wav", voice)
        rows.append(
            {
                "id": f"u{i}",
                "audio_filepath": f"{i}.wav",
                "duration": 2.0,
                "lang": lang,
                "text": text,
            }
        )
    rows.append(
        {
            "id": "st0",
            "audio_filepath": "2.wav",
            "duration": 2.0,
            "lang": "de",
            "task": "st",
            "text": "Guten Morgen.",
            "translation": "Good morning.",
            "target_lang": "en",
        }
    )
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "eval"
    proc = run_cli(
        "evaluate",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--model",
        "tiny.en",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    text = json.dumps(report).lower()
    assert "bleu" in text and '"de"' in text and '"en"' in text
    assert (out / "hypotheses.jsonl").read_text().count("\n") == 4
    assert "given" in text


def test_language_auto_on_english_only_model_points_to_lid(tmp_path, tone_wav, capsys):
    wav = str(tone_wav(0.5))
    assert main(["transcribe", wav, "--model", "tiny.en", "--language", "auto"]) == 2
    err = capsys.readouterr().err
    assert "English-only" in err and "--lid DIR" in err
    manifest = tmp_path / "m.jsonl"
    row = {"id": "a", "audio_filepath": wav, "duration": 0.5, "lang": "de", "text": "x"}
    manifest.write_text(json.dumps(row) + "\n")
    args = ["evaluate", "-m", str(manifest), "--out", str(tmp_path / "o"), "--model", "tiny.en"]
    assert main([*args, "--language", "auto"]) == 2
    assert "English-only" in capsys.readouterr().err
