"""The corpus build settings (one frozen dataclass) and the size presets.

Sizes count *sentence pairs per language and split*; each pair gives three manifest lines (ASR in
X, ST X->en, ST en->X) over two clips (X speech, English speech). English ASR gets `en_asr` lines
per split (default: the per-language count). Code-switched items give two lines each (ST to
English, ASR of the mixed transcript).

Voices (`voices`, see `voices.py`) default to espeak-ng + SVOX Pico, whose licences allow any
use of the audio; MBROLA is opt-in (`voices=(..., "mbrola")`). The test split is spoken only by
speakers held out of training (`unseen_fraction`, `unseen_splits`; `speakers.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from babelora.config import build_dataclass
from babelora.data.corpus.espeak import VARIANTS
from babelora.data.corpus.noise import NOISE_TYPES
from babelora.data.corpus.splits import SPLITS
from babelora.data.corpus.text_sources import DEFAULT_SOURCES, SOURCES, source_names
from babelora.data.corpus.voices import DEFAULT_VOICES, ENGINES, parse_selection
from babelora.errors import ConfigError, LanguageError

DEFAULT_LANGS = ("de", "fr", "es", "it", "nl", "pt")


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that decides the corpus' content (same config + seed -> same bytes)."""

    langs: tuple[str, ...] = DEFAULT_LANGS  # languages X besides English (always included)
    size: str = "default"  # preset name, recorded in the card
    seed: int = 0  # drives splits, sampling, speakers and noise
    train: int = 240  # sentence pairs per language in train
    dev: int = 40
    test: int = 80
    cs_train: int = 60  # code-switched items per language
    cs_dev: int = 20
    cs_test: int = 40
    en_asr: int | None = None  # English ASR lines per split; None: same as the language count
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # of sentence groups
    texts: tuple[str, ...] = DEFAULT_SOURCES  # text sources (text_sources.SOURCES)
    source_weights: dict[str, float] = field(
        default_factory=lambda: {
            "gettext": 0.5,
            "cldr": 0.35,
            "numbers": 0.15,
            "weblate": 0.5,
            "fillets": 0.5,
        }
    )  # share of each text source in the sampled pairs (sources not in `texts` are ignored)
    weblate: str | None = None  # Weblate wheel or folder; None: the cache (weblate.py)
    fillets: str | None = None  # Fish Fillets data folder; None: Debian's (fillets.py)
    voices: tuple[str, ...] = DEFAULT_VOICES  # engines (espeak, mbrola, pico) or engine:voice
    unseen_fraction: float = 0.25  # share of each engine's speakers held out of training
    unseen_splits: tuple[str, ...] = ("test",)  # splits spoken only by held-out speakers
    heldout_voices: tuple[str, ...] = ()  # held-out speaker ids (espeak:m3, ...); () = drawn
    variants: tuple[str, ...] = VARIANTS  # espeak variants used as speakers
    rate: tuple[int, int] = (140, 190)  # speaking rate range, words per minute
    pitch: tuple[int, int] = (30, 70)  # espeak pitch range (0-99)
    accents: bool = True  # draw among a language's espeak accents (en-us/en-gb, es/es-419, ...)
    noise: tuple[str, ...] = ()  # noise types for the noisy copies; empty: no noisy set
    snr: tuple[float, float] = (5.0, 20.0)  # SNR range in dB, drawn uniformly per clip
    noise_splits: tuple[str, ...] = ("test",)  # splits that get a <split>_noisy.jsonl
    babble_talkers: int = 4  # utterances summed into babble noise
    cs_pause: float = 0.12  # seconds of silence at each language switch

    def __post_init__(self) -> None:
        for name in ("train", "dev", "test", "cs_train", "cs_dev", "cs_test"):
            if getattr(self, name) < 0:
                raise ConfigError(f"corpus.{name} must be >= 0, got {getattr(self, name)}")
        if len(self.split_fractions) != 3 or min(self.split_fractions) <= 0:
            raise ConfigError(
                f"corpus.split_fractions needs 3 positive numbers, got {self.split_fractions}"
            )
        for kind in self.source_weights:
            if kind not in SOURCES:
                raise ConfigError(
                    f"corpus.source_weights: unknown source {kind!r}; expected {SOURCES}"
                )
        for kind in self.noise:
            if kind not in NOISE_TYPES:
                raise ConfigError(
                    f"corpus.noise: unknown type {kind!r}; expected one of {NOISE_TYPES}"
                )
        for split in self.noise_splits:
            if split not in SPLITS:
                raise ConfigError(
                    f"corpus.noise_splits: unknown split {split!r}; expected {SPLITS}"
                )
        try:
            source_names(self.texts)
        except LanguageError as err:
            raise ConfigError(f"corpus.texts: {err}") from None
        if not self.texts:
            raise ConfigError(f"corpus.texts is empty; e.g. {','.join(DEFAULT_SOURCES)}")
        parse_selection(self.voices)
        if not 0 <= self.unseen_fraction < 1:
            raise ConfigError(
                f"corpus.unseen_fraction must be in [0, 1), got {self.unseen_fraction}"
            )
        for split in self.unseen_splits:
            if split not in SPLITS or split == "train":
                raise ConfigError(
                    f"corpus.unseen_splits: {split!r} must be dev or test (train is seen)"
                )
        for name in self.heldout_voices:
            if name.partition(":")[0] not in ENGINES or not name.partition(":")[2]:
                raise ConfigError(
                    f"corpus.heldout_voices: {name!r} is not a speaker id like espeak:m3, "
                    "mbrola:de2 or pico:en-GB"
                )
        if not self.variants or any(v not in VARIANTS for v in self.variants):
            raise ConfigError(f"corpus.variants must be a non-empty subset of {VARIANTS}")
        for name, lo, hi in (("rate", 80, 450), ("pitch", 0, 99)):
            a, b = getattr(self, name)
            if not lo <= a <= b <= hi:
                raise ConfigError(f"corpus.{name} must be a range within {lo}..{hi}, got {(a, b)}")
        if self.snr[0] > self.snr[1]:
            raise ConfigError(f"corpus.snr must be (low, high), got {self.snr}")

    def pairs(self, split: str) -> int:
        return {"train": self.train, "dev": self.dev, "test": self.test}[split]

    def cs_items(self, split: str) -> int:
        return {"train": self.cs_train, "dev": self.cs_dev, "test": self.cs_test}[split]


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"train": 3, "dev": 2, "test": 2, "cs_train": 3, "cs_dev": 1, "cs_test": 3},
    "default": {},
    "large": {
        "train": 3000,
        "dev": 300,
        "test": 400,
        "cs_train": 600,
        "cs_dev": 100,
        "cs_test": 200,
        "texts": ("gettext", "cldr", "numbers", "weblate", "fillets"),
    },  # fmt: skip
}
"""`tiny`: tests (seconds); `default`: a few minutes on 2 cores (Django, CLDR and num2words
text); `large`: benchmarks, all five text sources (Weblate and Fish Fillets too: about 5,000
pairs a language, 4,000/500/500 in train/dev/test; pt has no Fish Fillets text), so 3,700
sentences a language are spoken in X and in English plus 900 code-switched clips, by 12 espeak
speakers and Pico (de, fr, es, it, en) or more with MBROLA. A split short of pairs gives what it
has, and the card shows the counts. `--jobs N` renders in N processes; a re-run resumes."""


def preset_config(size: str = "default", **overrides: Any) -> CorpusConfig:
    """The preset `size` with `overrides` (field=value) applied; ConfigError for bad names."""
    if size not in PRESETS:
        raise ConfigError(f"unknown corpus size {size!r}; expected one of {', '.join(PRESETS)}")
    return build_dataclass(CorpusConfig, {**PRESETS[size], "size": size, **overrides})
