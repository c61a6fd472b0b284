"""`babelora train CONFIG [key=value ...] [--resume]` end to end (in-process CLI)."""

from __future__ import annotations

import json

from reference.corpus import config_yaml

from babelora.cli.main import main


def test_train_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = config_yaml(tmp_path, out)
    assert main(["train", str(cfg), "max_steps=3", "stop_after_steps=2", "optim.lr=5e-4"]) == 0
    assert not (out / "final").exists()
    # the same folder without --resume is refused with a clear message
    assert main(["train", str(cfg), "max_steps=3"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(cfg), "max_steps=3", "optim.lr=5e-4", "--resume"]) == 0
    assert (out / "final" / "adapter_model.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert "lr: 0.0005" in (out / "config.yaml").read_text()


def test_config_error_exit_code(tmp_path, capsys):
    cfg = config_yaml(tmp_path, tmp_path / "run")
    assert main(["train", str(cfg), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "babelora train: error: unknown config key 'optim.lrr'" in err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
