"""merge_report.json's peak memory is the merge process's own, not its parent's."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from babelora.merging.report import _vm_hwm_mb, peak_rss_mb


def test_vm_hwm_line_is_parsed():
    status = "Name:\tpython\nVmPeak:\t  999999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n"
    assert _vm_hwm_mb(status) == 2.0
    assert _vm_hwm_mb("Name:\tpython\n") is None


def test_peak_rss_is_positive():
    assert peak_rss_mb() > 1.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss/execve is Linux's")
def test_a_child_does_not_inherit_the_parents_peak():
    # Linux keeps ru_maxrss across execve, so a merge started by a large process used to report
    # the parent's peak; the child below imports only the report module (and torch).
    ballast = np.ones(600 * 2**20 // 8)  # 600 MiB, touched
    code = "from babelora.merging.report import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert float(out.split()[-1]) < 550, out
    del ballast
