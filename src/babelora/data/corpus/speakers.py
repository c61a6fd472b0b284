"""Who speaks each clip, and speaker-disjoint splits.

Held-out speakers: within each engine's voices of a language (all espeak variants count as one
group, shared by every language, so `espeak:m3` is held out everywhere or nowhere), a share
`unseen_fraction` of the speakers (at least one, never all) is kept out of training: the splits
in `unseen_splits` (default: test) are spoken only by them, the other splits only by the rest.
So every test speaker is unseen in training. An engine with a single voice for a language (Pico)
cannot be split; its voice stays with the training splits. `heldout_voices` names the held-out
speakers explicitly instead. The choice hashes (seed, speaker), so it does not depend on the
languages or sizes of a build.

Each clip draws an engine (uniformly among those with a voice in its pool), then a voice, then a
rate, pitch and (espeak) accent, from a generator seeded by (seed, language, text): a sentence
keeps its speaker across builds of other languages or sizes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from babelora.data.corpus.espeak import VoiceSettings
from babelora.data.corpus.splits import SPLITS, unit_hash
from babelora.data.corpus.voices import Voice, check_languages, language_voices
from babelora.errors import ConfigError


def _key(cfg: Any) -> tuple:
    return (tuple(cfg.voices), tuple(cfg.variants), cfg.accents)


@lru_cache(maxsize=128)
def _voices(key: tuple, lang: str) -> tuple[Voice, ...]:
    selection, variants, accents = key
    return language_voices(lang, selection, variants, accents)


def voices(cfg: Any, lang: str) -> tuple[Voice, ...]:
    """Every voice a build with `cfg` uses for `lang` (installed: checked)."""
    return _voices(_key(cfg), lang)


def held_out(
    pool: Sequence[Voice], seed: int, fraction: float, names: Sequence[str] = ()
) -> set[str]:
    """Speaker ids of `pool` kept out of training (see the module docstring)."""
    if names:
        return {v.speaker for v in pool if v.speaker in names}
    out: set[str] = set()
    groups: dict[str, list[Voice]] = {}
    for v in pool:
        groups.setdefault(v.engine, []).append(v)
    for group in groups.values():
        n = len(group)
        k = min(n - 1, max(1, round(fraction * n))) if fraction > 0 else 0  # a lone voice: 0
        ranked = sorted(group, key=lambda v: (unit_hash("heldout", seed, v.speaker), v.speaker))
        out |= {v.speaker for v in ranked[:k]}
    return out


def split_pool(cfg: Any, lang: str, split: str) -> tuple[Voice, ...]:
    """The voices that may speak `lang` in `split` (all of them when `unseen_fraction` is 0 and
    no voice is named in `heldout_voices`)."""
    held = (cfg.seed, cfg.unseen_fraction, tuple(cfg.heldout_voices), tuple(cfg.unseen_splits))
    return _split_pool(_key(cfg), held, lang, split)


@lru_cache(maxsize=256)
def _split_pool(key: tuple, held: tuple, lang: str, split: str) -> tuple[Voice, ...]:
    seed, fraction, names, unseen_splits = held
    pool = _voices(key, lang)
    if not names and fraction <= 0:
        return pool  # speaker-disjoint splits are off
    unseen = held_out(pool, seed, fraction, names)
    want = split in unseen_splits
    out = tuple(v for v in pool if (v.speaker in unseen) == want)
    if not out:
        raise ConfigError(
            f"no voice left for {lang!r} in the {split} split: every speaker of "
            f"{', '.join(v.speaker for v in pool)} is {'seen' if want else 'held out'}; "
            "use more voices (--voices) or change corpus.heldout_voices / unseen_fraction"
        )
    return out


def pick(pool: Sequence[Voice], rng: random.Random, engine: str | None = None) -> Voice:
    """An engine uniformly (or `engine` when the pool has it), then one of its voices."""
    engines = sorted({v.engine for v in pool})
    if engine not in engines:
        engine = rng.choice(engines)
    return rng.choice([v for v in pool if v.engine == engine])


def draw(cfg: Any, lang: str, split: str, key: str) -> VoiceSettings:
    """The settings of one clip of `lang` in `split`, seeded by (seed, lang, key)."""
    rng = random.Random(f"{cfg.seed}:speaker:{lang}:{key}")
    voice = pick(split_pool(cfg, lang, split), rng)
    return voice.settings(rng.randint(*cfg.rate), rng.randint(*cfg.pitch), _accent(voice, rng))


def span_settings(
    cfg: Any, lang: str, split: str, matrix: VoiceSettings, key: str
) -> VoiceSettings:
    """Who says a code-switched span in `lang` when `matrix` speaks the clip: espeak keeps its
    variant (the same timbre) and draws an accent; other engines take one of their own voices
    for `lang` in this split's pool (another engine's when they have none); rate and pitch stay
    the matrix speaker's."""
    rng = random.Random(f"{cfg.seed}:accent:{lang}:{key}")
    pool = split_pool(cfg, lang, split)
    same = [v for v in pool if v.speaker == matrix.speaker]
    voice = same[0] if same else pick(pool, rng, matrix.engine)
    return voice.settings(matrix.rate, matrix.pitch, _accent(voice, rng))


def _accent(voice: Voice, rng: random.Random) -> str | None:
    return rng.choice(voice.accents) if voice.accents else None


def check(cfg: Any, langs: Sequence[str]) -> None:
    """Before a build: every language (English too) has installed voices of the selection
    (DependencyError / LanguageError otherwise) and a voice left in every split."""
    check_languages(langs, cfg.voices, cfg.variants, cfg.accents)
    for lang in ("en", *langs):
        for split in SPLITS:
            split_pool(cfg, lang, split)
