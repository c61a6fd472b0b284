"""bench/serve_load.py on the tiny random model: openai-client and plain-HTTP threads, a bad upload
interleaved every third request; nothing lost or mixed up, every bad request a 4xx JSON error."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "serve_load.py"


@pytest.mark.slow
def test_serve_load_smoke_with_bad_requests(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_serve_load_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        out = tmp_path / "serve.json"
        args = ["--clients", "1", "4", "--requests", "9", "--bad-every", "3", "--out", str(out)]
        assert module.main(args) == 0
    finally:
        sys.modules.pop(spec.name, None)
    levels = json.loads(out.read_text())["levels"]
    for level in levels:
        assert level["bad_sent"] == 3 and level["bad_answered_4xx_json"] == 3
        assert level["ok"] == 6 and level["lost"] == 0 and level["mixed_up"] == 0
