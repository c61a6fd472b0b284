"""Text normalization before WER/CER: Whisper's normalizers, chosen by language.

English uses Whisper's `EnglishTextNormalizer` (contractions, numbers to digits, British ->
American spelling, fillers dropped); every other language uses `BasicTextNormalizer` (lower case,
bracketed spans dropped, marks/symbols/punctuation to spaces). This is the convention of the
Whisper paper, SeamlessM4T's evaluation and the Open ASR Leaderboard. The classes come from
transformers (`transformers.models.whisper.english_normalizer`); the spelling map that the English
normalizer needs ships with babelora (`english_spelling.json`, openai/whisper's `english.json`,
MIT; see english_spelling.NOTICE), because the offline tiny.en tokenizer.json lacks it.

Caveat kept on purpose (it is the convention): the basic normalizer turns combining marks
(Unicode category M) into spaces, which splits words in Indic and some South-East Asian scripts.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

from babelora.errors import DependencyError
from babelora.languages import check_lang

SPELLING_FILE = Path(__file__).with_name("english_spelling.json")
ENGLISH = "whisper_english"
BASIC = "whisper_basic"


@functools.lru_cache(maxsize=1)
def english_spelling_map(path: str | Path = SPELLING_FILE) -> dict[str, str]:
    """Whisper's British -> American spelling map (1,739 words)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as err:
        raise DependencyError(
            f"{path}: Whisper's English spelling map is missing ({err.strerror}); "
            "reinstall babelora (the file is package data)"
        ) from None


def normalizer_name(lang: str) -> str:
    """Which normalizer `lang` gets: 'whisper_english' for English, 'whisper_basic' otherwise."""
    return ENGLISH if check_lang(lang) == "en" else BASIC


@functools.lru_cache(maxsize=2)
def _build(name: str) -> Callable[[str], str]:
    from transformers.models.whisper.english_normalizer import (
        BasicTextNormalizer,
        EnglishTextNormalizer,
    )

    if name == ENGLISH:
        return EnglishTextNormalizer(english_spelling_map())
    return BasicTextNormalizer()


def get_normalizer(lang: str) -> Callable[[str], str]:
    """The Whisper normalizer for `lang` (LanguageError for unknown codes)."""
    return _build(normalizer_name(lang))


def normalize(text: str, lang: str) -> str:
    """`text` normalized for scoring in `lang`, with runs of spaces collapsed and ends stripped."""
    return " ".join(get_normalizer(lang)(text).split())
