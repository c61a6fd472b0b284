"""bench/gpu.py runs end to end on CPU (--smoke), so the GPU benchmark cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench/gpu.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert checks["tokens_equal_cpu_static"] and checks["losses_equal"]
    assert checks["experts_equal_cpu_static_beam1"] and checks["experts_equal_cpu_static_beam3"]
    assert checks["ends"] == ["eot", "guard", "limit"]  # the check covers every way a row ends
    assert report["complete"]
    systems = {(r["system"], r["input_seconds"]) for r in report["decoding"]}
    assert systems == {("dynamic", 10), ("static", 10), ("static", 30), ("transformers", 30)}
    assert all(r["audio_s_per_s"] > 0 for r in report["decoding"] + report["training"])
