"""The dataset card written next to the manifests: counts per language, task and split, hours of
audio, text sources, voices and their licences per language and split, speech and noise
settings, and how the splits were made."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from babelora.data.manifest import Utterance

MANIFEST_ORDER = ("train", "dev", "test", "train_cs", "dev_cs", "test_cs")


def task_label(u: Utterance) -> str:
    return "ASR" if u.task == "asr" else f"ST {u.lang}->{u.target_lang}"


def _text_kind(u: Utterance) -> str:
    src = u.source.get("text", {}) if isinstance(u.source, dict) else {}
    kind = src.get("kind", "?")
    if kind == "codeswitch":
        return f"codeswitch/{src.get('pattern')}"
    if kind == "cldr":
        return f"cldr/{src.get('field')}"
    return kind


def corpus_stats(manifests: Mapping[str, Sequence[Utterance]], cfg: Any) -> dict[str, Any]:
    """Numbers for the card (deterministic for a config): per manifest lines, clips, hours; lines
    per (language, task); text sources; speakers."""
    stats: dict[str, Any] = {"manifests": {}, "counts": {}, "sources": {}, "speech": {}}
    for name, utts in manifests.items():
        clips = {u.audio_filepath: u.duration for u in utts}
        stats["manifests"][name] = {
            "lines": len(utts),
            "clips": len(clips),
            "hours": round(sum(clips.values()) / 3600, 4),
            "mean_clip_seconds": round(sum(clips.values()) / max(len(clips), 1), 2),
        }
        stats["counts"][name] = dict(
            sorted(Counter(f"{u.lang}|{task_label(u)}" for u in utts).items())
        )
        stats["sources"][name] = dict(sorted(Counter(_text_kind(u) for u in utts).items()))
    stats["speech"] = speaker_stats(manifests)
    stats["total_hours"] = round(sum(m["hours"] for m in stats["manifests"].values()), 3)
    return stats


def speaker_stats(manifests: Mapping[str, Sequence[Utterance]]) -> dict[str, Any]:
    """Clips per engine, per voice, and per (language, speaker) and split (train/dev/test, with
    their code-switched and noisy manifests). A code-switched clip counts for the speaker of
    each of its span languages."""
    engines, voices = Counter(), Counter()
    speakers: dict[str, dict[str, Counter]] = {}
    for name, utts in manifests.items():
        split = name.split("_")[0]
        seen = set()
        for u in utts:
            sp = u.source.get("speech", {}) if isinstance(u.source, dict) else {}
            if u.audio_filepath in seen or not sp:
                continue
            seen.add(u.audio_filepath)
            engines[sp.get("engine", "espeak")] += 1
            voices[sp.get("voice")] += 1
            for lang, who in (sp.get("speakers") or {u.lang: sp.get("speaker")}).items():
                speakers.setdefault(lang, {}).setdefault(str(who), Counter())[split] += 1
    return {
        "engines": dict(sorted(engines.items())),
        "voices": dict(sorted(voices.items())),
        "speakers": {
            lang: {who: dict(sorted(c.items())) for who, c in sorted(by.items())}
            for lang, by in sorted(speakers.items(), key=lambda kv: (kv[0] != "en", kv[0]))
        },
    }


def _speaker_table(stats: dict[str, Any]) -> str:
    from babelora.data.corpus.voices import speaker_licence

    rows = []
    for lang, by in stats["speech"]["speakers"].items():
        for who, counts in by.items():
            splits = [counts.get(s, 0) for s in ("train", "dev", "test")]
            unseen = "yes" if splits[2] and not splits[0] else ""
            rows.append([lang, who, speaker_licence(who), unseen, *splits])
    head = ["lang", "speaker", "licence", "test, unseen in train", "train", "dev", "test"]
    return _table(head, rows, left=4)


def _ordered(names: Sequence[str]) -> list[str]:
    return [n for n in MANIFEST_ORDER if n in names] + sorted(
        n for n in names if n not in MANIFEST_ORDER
    )


_TEMPLATE = """\
# Dataset card: babelora offline speech corpus

Synthetic multilingual speech for ASR and speech translation, built with no network from
human-made translations that ship inside Python and Debian packages, spoken by {engines}.

## Build

- command: `{command}`
- size preset `{size}`, seed {seed}, languages: en + {langs}
- wall time {seconds:.0f} s with {jobs} worker process(es)
- {hours:.2f} hours of audio (a clip shared by several lines counts once per manifest)
- {silent} clip(s) came out of the synthesizer silent and were left out with their {silent_rows}
  line(s) (`card.json`: `silent_clips`); no line points at missing or silent audio
- the same config and seed give identical manifests and identical audio bytes

## Layout

- `train.jsonl`, `dev.jsonl`, `test.jsonl`: ASR in X and in English, ST X->en, ST en->X.
- `train_cs.jsonl`, `dev_cs.jsonl`, `test_cs.jsonl`: code-switched speech, each clip with an ST
  line (to English) and an ASR line (the mixed transcript), both with `segments`.
- `<split>_noisy.jsonl`: noisy copies of a split's lines (only when noise is asked for).
- `audio/speech/<lang>/`, `audio/cs/<lang>/`, `audio/noisy/<lang>/`: 16 kHz mono 16-bit WAV,
  named by a hash of their content; a `.json` next to each code-switched clip keeps its spans,
  speaker and segments.
- `config.yaml` (the resolved build config), `card.json` (the numbers of this card).

The manifests follow babelora's schema (`babelora.data.manifest.read_manifest` validates them).
The ASR and ST X->en lines of a sentence share one clip (as in CoVoST-2); the English clip of a
sentence serves ASR en and every ST en->X line with that English text.

## Lines per language, task and manifest

{count_table}

{size_table}

## Text sources

- `gettext`: Django's translation catalogs (English msgid -> human translation); entries with
  placeholders, markup, URLs, plural forms, abbreviations or the fuzzy flag are dropped.
- `cldr/<field>`: Unicode CLDR through Babel: names of languages, territories, currencies,
  months and days; full dates; units with counts; relative times; lists. Each is rendered from
  the same inputs in both languages (Portuguese uses pt_PT, like Django's and espeak's `pt`).
- `numbers`: cardinals, ordinals and years spelled out by num2words.
- `weblate`: Weblate's own catalogs (`weblate/locale/<code>/LC_MESSAGES/django.po`, read from
  its wheel), with the same filters as Django's.
- `fillets`: the dialogue scripts of the game Fish Fillets NG (`script/*/dialogs_<lang>.lua`:
  English original + translation), with the same filters; "..." becomes a spoken pause (…).
  Only lines of the game's human-speech *train* split (a hash of the English text), so no line
  of the human-speech test set (`babelora corpus import fillets`) is in this corpus.
- `codeswitch/<pattern>`: see below.

Sources in this build: {texts}. Every line's `source.text` keeps the catalog file and line, the
CLDR field and input, the number, or the script, line and dialogue id; `source.speaker` is the
speaker id and `source.speech` the voice settings. Pairs are deduplicated across sources by
their English and their X text. The sentence pairs of each language are drawn with these shares
of the sources (a source short of text leaves its share to the others): {weights}. Lines per
source:

{source_table}

## Speech

- engines (clips): {engine_counts}; voices (clips): {voices}
- speaker ids: `espeak:<variant>` (one espeak-ng timbre in every language; the accent, e.g.
  en-us/en-gb, is drawn per clip), `mbrola:<database>` (one recorded person each),
  `pico:<language>` (SVOX Pico's one voice per language).
- each clip draws an engine (uniformly among those with a voice in its split), a voice, a rate
  ({rate} words/min) and a pitch ({pitch} on espeak's scale; Pico gets them as speed and
  pitch markup), from a generator seeded by (seed, language, text), so a sentence keeps its
  speaker in builds with other languages or sizes.
- noise: {noise}.
  Types: white, pink (1/f), babble (the sum of {talkers} other clips of the same split); SNR
  drawn per clip; type, SNR and babble clips are recorded in `source.speech.noise`.

## Voices and licences per language and split (clips)

{speaker_table}

Speaker-disjoint evaluation: {unseen}

## Splits

Disjoint by text in every language: the English side and the translation of every pair are
linked (after lower-casing and removing punctuation) into sentence groups across all languages;
a whole group goes to train, dev or test by a hash of (seed, group), with probabilities
{fractions}. Code-switched items and babble noise use only sentences of their own split.
Sentence pairs per language: train {train}, dev {dev}, test {test}; code-switched items per
language: train {cs_train}, dev {cs_dev}, test {cs_test}.

## Code-switching

Matrix language X, target always English. Patterns in turn: `halves` (an X sentence, then an
English one), `embedded` (a CLDR list in X with one item said in English: *Montag, Tuesday und
Freitag*), `xy` (an X sentence, then one in another language of the build). Each span is spoken
on its own by the same speaker in its language's voice, trimmed to its speech and joined with a
{pause:g} s pause; `segments` are measured on that audio and tile it from 0 to its end, with
boundaries in the middle of the pauses.

## Licenses and limits

Texts: Django (BSD-3-Clause), Unicode CLDR via Babel (Unicode License, BSD-3-Clause), num2words
(LGPL-2.1), Weblate (GPL-3.0-or-later), Fish Fillets NG (GPL-2.0-or-later). Voices: see the
table above. espeak-ng (GPL-3.0) and SVOX Pico (Apache-2.0) let their output be used for any
purpose; MBROLA databases (only in builds that ask for them) may be used and copied free of
charge only with the MBROLA program, and may not be sold or built into a product that is sold
without their owners' permission (`mbrola-nc`; de4 also excludes military use; en1 follows the
Edinburgh ROGER terms): their full texts are in `/usr/share/doc/mbrola-<name>/copyright`.
espeak-ng is formant synthesis (robotic), MBROLA diphone synthesis, Pico the most natural (about
as well recognised by Whisper as real speech). Good for tests, smoke runs and relative
comparisons; absolute WER/BLEU do not carry over to human speech: use
`babelora corpus import fillets` (Dutch and Czech voice acting) for a human-speech test set.
"""


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    align = ["---"] * left + ["---:"] * (len(head) - left)
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _tally(counter: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.items())


def render_card(
    stats: dict[str, Any], cfg: Any, seconds: float, jobs: int, command: str | None
) -> str:
    """The card as Markdown."""
    names = _ordered(list(stats["manifests"]))
    keys = {k for n in names for k in stats["counts"][n]}
    counts = [
        [*key.split("|"), *(stats["counts"][n].get(key, 0) for n in names)]
        for key in sorted(keys, key=lambda k: (k.split("|")[0] != "en", k))
    ]
    sizes = [
        [n, m["lines"], m["clips"], f"{m['hours']:.3f}", f"{m['mean_clip_seconds']:.2f}"]
        for n, m in ((n, stats["manifests"][n]) for n in names)
    ]
    kinds = sorted({k for n in names for k in stats["sources"][n]})
    sources = [[k, *(stats["sources"][n].get(k, 0) for n in names)] for k in kinds]
    noise = "none in this build (`--noise white,pink,babble` adds `test_noisy.jsonl`)"
    if cfg.noise:
        noise = f"{', '.join(cfg.noise)} at SNR {cfg.snr[0]:g}-{cfg.snr[1]:g} dB"
        noise += f" on {', '.join(cfg.noise_splits)}"
    return _TEMPLATE.format(
        command=command or "babelora corpus build",
        size=cfg.size,
        seed=cfg.seed,
        langs=", ".join(cfg.langs),
        seconds=seconds,
        jobs=jobs,
        hours=stats["total_hours"],
        silent=len(stats.get("silent_clips", ())),
        silent_rows=stats.get("silent_rows", 0),
        count_table=_table(["lang", "task", *names], counts, left=2),
        size_table=_table(["manifest", "lines", "clips", "hours", "mean clip (s)"], sizes),
        weights=", ".join(f"{k} {v:g}" for k, v in sorted(cfg.source_weights.items())),
        source_table=_table(["source", *names], sources),
        engines=", ".join(_engine_names(cfg)),
        texts=", ".join(getattr(cfg, "texts", ())),
        engine_counts=_tally(stats["speech"]["engines"]),
        voices=_tally(stats["speech"]["voices"]),
        speaker_table=_speaker_table(stats),
        unseen=_unseen(cfg),
        rate=f"{cfg.rate[0]}-{cfg.rate[1]}",
        pitch=f"{cfg.pitch[0]}-{cfg.pitch[1]}",
        noise=noise,
        talkers=cfg.babble_talkers,
        fractions=", ".join(f"{f:g}" for f in cfg.split_fractions),
        train=cfg.train,
        dev=cfg.dev,
        test=cfg.test,
        cs_train=cfg.cs_train,
        cs_dev=cfg.cs_dev,
        cs_test=cfg.cs_test,
        pause=cfg.cs_pause,
    )


def _engine_names(cfg: Any) -> list[str]:
    names = {"espeak": "espeak-ng", "mbrola": "MBROLA (through espeak-ng)", "pico": "SVOX Pico"}
    engines = sorted({t.partition(":")[0] for t in getattr(cfg, "voices", ("espeak",))})
    return [names.get(e, e) for e in engines]


def _unseen(cfg: Any) -> str:
    splits = ", ".join(getattr(cfg, "unseen_splits", ()))
    if not splits or (not cfg.unseen_fraction and not cfg.heldout_voices):
        return "off: every split draws from all voices."
    how = (
        f"the speakers {', '.join(cfg.heldout_voices)}"
        if cfg.heldout_voices
        else f"a share {cfg.unseen_fraction:g} of each engine's speakers of a language (at "
        "least one, never all; chosen by a hash of seed and speaker)"
    )
    return (
        f"{splits} is spoken only by {how}, which no other split uses (`unseen in train` "
        "above); an engine with one voice for a language (Pico) keeps it in the training splits."
    )


def write_card(out: Path, card: str, stats: dict[str, Any]) -> None:
    (out / "README.md").write_text(card, encoding="utf-8")
    (out / "card.json").write_text(
        json.dumps(stats, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
