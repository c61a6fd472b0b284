"""The offline multilingual speech corpus: human translations from packages, spoken by espeak-ng,
SVOX Pico and (opt-in) MBROLA voices, with speaker-disjoint test splits.

`build_corpus(preset_config("tiny", langs=("de",)), "out/")` writes manifests, audio and a card.
"""

from babelora.data.corpus.build import BuildResult, available_languages, build_corpus
from babelora.data.corpus.config import DEFAULT_LANGS, PRESETS, CorpusConfig, preset_config

__all__ = [
    "DEFAULT_LANGS",
    "PRESETS",
    "BuildResult",
    "CorpusConfig",
    "available_languages",
    "build_corpus",
    "preset_config",
]
