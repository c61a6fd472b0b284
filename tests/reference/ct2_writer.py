"""`write_ct2(model, folder, tokenizer_json, dtype)`: the package's CTranslate2 writer
(babelora.export.ct2) under the signature the loading tests use."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from babelora.export.ct2 import write_ct2_model


def write_ct2(model, folder: Path, tokenizer_json: Path, dtype=np.float16) -> Path:
    """Write `model` (WhisperForConditionalGeneration) as a CTranslate2 folder."""
    return write_ct2_model(model, folder, tokenizer_json, np.dtype(dtype).name)
