"""Helpers of the reliability tests (rel_harness, rel_scenarios) importable by the test files."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
