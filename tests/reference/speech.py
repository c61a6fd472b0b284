"""espeak-ng speech for tests (skip marker when espeak-ng is missing)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")


def speak(text: str, path: Path, voice: str = "en-us") -> Path:
    """Synthesize `text` with espeak-ng into a WAV file (22.05 kHz as espeak writes it)."""
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    return path
