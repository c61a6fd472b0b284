"""What the corpus needs to know about Debian packages: their installed version (for provenance)
and the exact command that installs missing ones (for error messages).

The voices and the real speech come from Debian packages (espeak-ng, mbrola-*, libttspico-*,
fillets-ng-data-*); several live in the `contrib` and `non-free` archive areas, which a fresh
machine does not enable: `scripts/install_system_deps.sh` enables them and installs the set.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

DOC_ROOT = Path("/usr/share/doc")
SCRIPT = "scripts/install_system_deps.sh"
_HEAD = re.compile(r"^\S+ \(([^)]+)\)")


@lru_cache(maxsize=64)
def package_version(package: str, doc_root: Path = DOC_ROOT) -> str | None:
    """The installed version of a Debian package, from the first line of its changelog; None
    when the package (or its changelog) is not there."""
    for name in ("changelog.Debian.gz", "changelog.gz"):
        path = doc_root / package / name
        if path.is_file():
            try:
                with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
                    m = _HEAD.match(f.readline())
            except OSError:
                return None
            return m.group(1) if m else None
    return None


def copyright_file(package: str, doc_root: Path = DOC_ROOT) -> Path:
    """Where Debian keeps a package's licence text."""
    return doc_root / package / "copyright"


def apt_hint(packages: Iterable[str], non_free: bool = False) -> str:
    """The install step for `packages`, said in full."""
    names = " ".join(sorted(set(packages)))
    hint = f"install it with `sudo apt-get install -y {names}`"
    if non_free:
        hint += (
            " (the packages are in Debian's contrib/non-free areas: "
            f"`bash {SCRIPT}` enables them and installs every voice)"
        )
    else:
        hint += f" or run `bash {SCRIPT}`"
    return hint
