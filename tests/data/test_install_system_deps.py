"""scripts/install_system_deps.sh enables Debian's contrib/non-free areas once, in both apt
source formats, and leaves other repositories alone (run on a copy of /etc, no apt-get)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install_system_deps.sh"

DEB822 = """Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main contrib
"""
OTHER = "Types: deb\nURIs: https://download.docker.com/linux/debian\nComponents: stable\n"
ONE_LINE = """# the old format
deb http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm main contrib
deb https://apt.example.org/repo stable main
"""


def _run(root: Path) -> str:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--areas-only"],
        env={"APT_ROOT": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_areas_are_added_once_in_both_formats(tmp_path):
    apt = tmp_path / "etc" / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "debian.sources").write_text(DEB822)
    (apt / "sources.list.d" / "docker.sources").write_text(OTHER)
    (apt / "sources.list").write_text(ONE_LINE)
    (tmp_path / "etc" / "os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    said = _run(tmp_path)
    assert "enabled 'contrib'" in said and "enabled 'non-free'" in said
    deb822 = (apt / "sources.list.d" / "debian.sources").read_text()
    assert deb822.count("Components: main contrib non-free\n") == 2
    assert "Components: main non-free-firmware contrib non-free\n" in deb822
    assert deb822.endswith("Components: main contrib non-free\n")  # contrib not added twice
    assert (apt / "sources.list.d" / "docker.sources").read_text() == OTHER
    lines = (apt / "sources.list").read_text().splitlines()
    assert lines[1] == "deb http://deb.debian.org/debian bookworm main contrib non-free"
    assert lines[2] == "deb-src http://deb.debian.org/debian bookworm main contrib non-free"
    assert lines[3] == "deb https://apt.example.org/repo stable main"
    before = {p: p.read_text() for p in apt.rglob("*") if p.is_file()}
    assert _run(tmp_path) == ""  # a second run changes nothing
    assert {p: p.read_text() for p in apt.rglob("*") if p.is_file()} == before


def test_ubuntu_gets_universe_and_multiverse(tmp_path):
    apt = tmp_path / "etc" / "apt"
    apt.mkdir(parents=True)
    (apt / "sources.list").write_text("deb http://archive.ubuntu.com/ubuntu jammy main\n")
    (tmp_path / "etc" / "os-release").write_text("ID=ubuntu\nID_LIKE=debian\n")
    _run(tmp_path)
    assert (apt / "sources.list").read_text() == (
        "deb http://archive.ubuntu.com/ubuntu jammy main universe multiverse\n"
    )
