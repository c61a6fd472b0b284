"""Session fixture `zoo`: a base folder, full fine-tunes and LoRA adapters (see merging_zoo)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # merging_zoo, lors_reference

from merging_zoo import (  # noqa: E402 - needs the path above (pytest --import-mode=importlib)
    LANGS,
    LORA_CONVENTIONS,
    finetuned,
    make_lora,
    save_model,
    tiny_model,
)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """base/, de/, fr/, es/ (full fine-tunes) and lora_<convention>/ + lora_<lang>/ adapters."""
    root = tmp_path_factory.mktemp("zoo")
    base = tiny_model(0)
    paths = {"root": root, "base": save_model(base, root / "base")}
    for i, lang in enumerate(LANGS):
        paths[lang] = save_model(finetuned(base, seed=10 + i), root / lang)
    for i, (name, kwargs) in enumerate(LORA_CONVENTIONS.items()):
        paths[f"lora_{name}"] = make_lora(base, root / f"lora_{name}", seed=20 + i, **kwargs)
    for i, lang in enumerate(LANGS):
        paths[f"lora_{lang}"] = make_lora(base, root / f"lora_{lang}", seed=30 + i)
    paths["model"] = base
    return paths
