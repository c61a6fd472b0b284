"""`build_corpus(cfg, out)`: text pairs -> splits -> clip jobs -> audio -> manifests + card.

Layout of `out` (see the dataset card):
    train.jsonl dev.jsonl test.jsonl           ASR X, ASR en, ST X->en, ST en->X
    train_cs.jsonl dev_cs.jsonl test_cs.jsonl  code-switched speech (ST -> en, and ASR)
    <split>_noisy.jsonl                        noisy copies (only with cfg.noise)
    audio/speech/<lang>/*.wav, audio/cs/<lang>/*.{wav,json}, audio/noisy/<lang>/*.wav
    README.md (dataset card), card.json (its numbers), config.yaml (resolved config)
    .build.lock (held while a build runs: a second build of the same folder is refused)

A re-run resumes: clips already there are decoded to the end and reused when whole, rendered
again when damaged (counted as re-rendered), and the rest rendered.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from babelora.config import dump_config
from babelora.data.corpus import speakers
from babelora.data.corpus.card import corpus_stats, render_card, write_card
from babelora.data.corpus.codeswitch import CodeSwitchItem, make_items
from babelora.data.corpus.config import CorpusConfig
from babelora.data.corpus.espeak import VoiceSettings, espeak_binary, speech_languages, voices_for
from babelora.data.corpus.lock import build_lock
from babelora.data.corpus.render import (
    RENDERED,
    RERENDERED,
    REUSED,
    SILENT,
    TMP_MARK,
    ClipInfo,
    ClipJob,
    NoiseSpec,
    clip_name,
    render_all,
)
from babelora.data.corpus.splits import SPLITS, sample_pairs, split_pairs
from babelora.data.corpus.text_sources import TextPair, norm, text_languages, text_pairs
from babelora.data.manifest import Segment, Utterance, read_manifest, write_manifest
from babelora.errors import LanguageError
from babelora.languages import check_lang

log = logging.getLogger(__name__)
CORPUS = "babelora-espeak"


@dataclass
class BuildResult:
    out: Path
    manifests: dict[str, Path]
    stats: dict[str, Any]
    seconds: float
    rendered: int = 0  # clips made new
    reused: int = 0  # clips found whole
    removed: list[str] = field(default_factory=list)
    rerendered: int = 0  # clips found damaged (e.g. truncated) and made again
    silent: int = 0  # clips the synthesizer spoke as silence (not written, rows left out)


def available_languages() -> tuple[str, ...]:
    """Languages the corpus can be built for: espeak-ng speaks them and Django translates them."""
    speech = set(speech_languages())
    return tuple(sorted(c for c in text_languages() if c in speech))


def resolve_langs(langs: tuple[str, ...]) -> tuple[str, ...]:
    """Validate requested languages (English is implicit); LanguageError says what is missing
    (a Whisper code, translated text or an espeak-ng voice) and lists the available languages."""
    espeak_binary()
    out: list[str] = []
    for code in langs:
        why = ""
        try:
            lang = check_lang(code)
        except LanguageError:
            lang, why = None, "is not a Whisper language code"
        if lang is not None and lang != "en":
            if lang not in text_languages():
                why = "has no translations in Django's catalogs"
            elif not voices_for(lang):
                why = "has no espeak-ng voice"
        if lang is None or why:
            raise LanguageError(
                f"cannot build a corpus for language {code!r}: it {why}; available: "
                + ", ".join(available_languages())
            )
        if lang != "en" and lang not in out:
            out.append(lang)
    if not out:
        raise LanguageError("no language besides English was asked for; e.g. --langs de,fr")
    return tuple(out)


def speaker(cfg: CorpusConfig, lang: str, key: str, split: str = "train") -> VoiceSettings:
    """The speaker of one clip in `split`, drawn from a RNG seeded by (seed, lang, key) alone, so
    it does not depend on build order, other languages or the number of worker processes; test
    clips are spoken by held-out speakers only (`speakers.py`)."""
    return speakers.draw(cfg, lang, split, key)


def _short(*parts: str) -> str:
    return hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:10]


class _Plan:
    """Clip jobs plus manifest rows waiting for their clips' durations."""

    def __init__(self, cfg: CorpusConfig) -> None:
        self.cfg = cfg
        self.jobs: dict[str, ClipJob] = {}
        names = [*SPLITS, *(f"{s}_cs" for s in SPLITS)]
        names += [f"{s}_noisy" for s in cfg.noise_splits] if cfg.noise else []
        self.rows: dict[str, list[tuple[dict[str, Any], str]]] = {n: [] for n in names}
        self.speech: dict[str, dict[str, Any]] = {}

    def clip(self, lang: str, text: str, split: str) -> str:
        settings = speaker(self.cfg, lang, text, split)
        path = clip_name("speech", lang, {"text": text, **settings.__dict__})
        if path not in self.jobs:
            self.jobs[path] = ClipJob(path, ((lang, text),), settings)
            self.speech[path] = settings.to_dict()
        return path

    def cs_clip(self, item: CodeSwitchItem, split: str) -> str:
        settings = speaker(self.cfg, item.lang, "cs:" + item.text, split)
        langs = sorted({lg for lg, _ in item.spans})
        voices = tuple(
            (lg, settings if lg == item.lang else self._voice(lg, item, split, settings))
            for lg in langs
        )
        spoken = [(lg, s.__dict__) for lg, s in voices]
        payload = {"spans": item.spans, "voices": spoken, "pause": self.cfg.cs_pause}
        path = clip_name("cs", item.lang, {**payload, **settings.__dict__})
        if path not in self.jobs:
            self.jobs[path] = ClipJob(
                path, item.spans, settings, voices=voices, pause=self.cfg.cs_pause
            )
            self.speech[path] = {
                **settings.to_dict(),
                "voices": {lg: s.voice for lg, s in voices},
                "speakers": {lg: s.speaker for lg, s in voices},
            }
        return path

    def _voice(
        self, lang: str, item: CodeSwitchItem, split: str, matrix: VoiceSettings
    ) -> VoiceSettings:
        return speakers.span_settings(self.cfg, lang, split, matrix, item.text)

    def add(self, manifest: str, row: dict[str, Any], path: str) -> None:
        self.rows.setdefault(manifest, []).append((row, path))


def _pair_rows(plan: _Plan, split: str, lang: str, pairs: list[TextPair]) -> None:
    for p in pairs:
        x_clip, en_clip = plan.clip(lang, p.text, split), plan.clip("en", p.en, split)
        text_src = {"corpus": CORPUS, "pair": p.key, "text": p.source}
        base = {"lang": lang, "text": p.text, "source": text_src}
        plan.add(split, {"id": f"{split}-{lang}-asr-{p.key}", "task": "asr", **base}, x_clip)
        st = {"task": "st", "translation": p.en, "target_lang": "en"}
        plan.add(split, {"id": f"{split}-{lang}-en-st-{p.key}", **base, **st}, x_clip)
        row = {"id": f"{split}-en-{lang}-st-{p.key}", "lang": "en", "task": "st", "text": p.en}
        row.update(translation=p.text, target_lang=lang, source=text_src)
        plan.add(split, row, en_clip)


def _english_asr(plan: _Plan, split: str, chosen: dict[str, list[TextPair]], n: int) -> None:
    seen: dict[str, TextPair] = {}
    for lang in sorted(chosen):
        for p in sorted(chosen[lang], key=lambda p: p.key):
            seen.setdefault(norm(p.en), p)
    keys = sorted(seen)
    random.Random(f"{plan.cfg.seed}:{split}:en-asr").shuffle(keys)
    for k in sorted(keys[:n]):
        p = seen[k]
        row = {"id": f"{split}-en-asr-{_short(p.en)}", "lang": "en", "task": "asr", "text": p.en}
        row["source"] = {"corpus": CORPUS, "pair": p.key, "text": p.source}
        plan.add(split, row, plan.clip("en", p.en, split))


def _cs_rows(plan: _Plan, split: str, lang: str, items: list[CodeSwitchItem]) -> None:
    name = f"{split}_cs"
    for item in items:
        path = plan.cs_clip(item, split)
        key = _short(item.text, item.translation)
        src = {"corpus": CORPUS, "text": item.source()}
        base = {"lang": lang, "text": item.text, "source": src}
        st = {"task": "st", "translation": item.translation, "target_lang": "en"}
        plan.add(name, {"id": f"{split}-cs-{lang}-st-{key}", **base, **st}, path)
        plan.add(name, {"id": f"{split}-cs-{lang}-asr-{key}", "task": "asr", **base}, path)


def _noise_rows(plan: _Plan, split: str) -> None:
    cfg = plan.cfg
    clips = sorted({path for _, path in plan.rows.get(split, [])})
    noisy: dict[str, str] = {}
    for path in clips:
        rng = random.Random(f"{cfg.seed}:noise:{path}")
        kind = rng.choice(sorted(cfg.noise))
        snr = round(rng.uniform(*cfg.snr), 1)
        others = [c for c in clips if c != path]
        talkers = (
            tuple(rng.sample(others, min(cfg.babble_talkers, len(others))))
            if kind == "babble"
            else ()
        )
        spec = NoiseSpec(path, kind, snr, rng.randrange(2**32), talkers)
        lang = plan.jobs[path].spans[0][0]
        out = clip_name("noisy", lang, spec.__dict__)
        plan.jobs[out] = ClipJob(out, noise=spec)
        plan.speech[out] = {
            **plan.speech[path],
            "noise": {"type": kind, "snr_db": snr, "talkers": list(talkers)},
        }
        noisy[path] = out
    for row, path in list(plan.rows.get(split, [])):
        plan.add(f"{split}_noisy", {**row, "id": row["id"] + "-noisy"}, noisy[path])


def plan_corpus(cfg: CorpusConfig) -> _Plan:
    """Every clip job and manifest row of the corpus (no audio made yet)."""
    langs = resolve_langs(cfg.langs)
    speakers.check(cfg, langs)
    pairs = {lang: text_pairs(lang, cfg.texts, cfg.weblate, cfg.fillets) for lang in langs}
    by_split = split_pairs(pairs, cfg.seed, cfg.split_fractions)
    plan = _Plan(cfg)
    for split in SPLITS:
        chosen = {}
        for lang in langs:
            rng = random.Random(f"{cfg.seed}:{split}:{lang}:pairs")
            chosen[lang] = sample_pairs(
                by_split[split][lang], cfg.pairs(split), cfg.source_weights, rng
            )
            if len(chosen[lang]) < cfg.pairs(split):
                log.warning(
                    "%s/%s: only %d of %d pairs available",
                    split,
                    lang,
                    len(chosen[lang]),
                    cfg.pairs(split),
                )
            _pair_rows(plan, split, lang, chosen[lang])
        _english_asr(
            plan, split, chosen, cfg.en_asr if cfg.en_asr is not None else cfg.pairs(split)
        )
        for lang in langs:
            rng = random.Random(f"{cfg.seed}:{split}:{lang}:cs")
            others = {y: by_split[split][y] for y in langs if y != lang}
            _cs_rows(
                plan,
                split,
                lang,
                make_items(lang, by_split[split][lang], others, cfg.cs_items(split), rng),
            )
    if cfg.noise:
        for split in cfg.noise_splits:
            _noise_rows(plan, split)
    return plan


def _utterances(plan: _Plan, infos: dict[str, ClipInfo], out: Path, name: str) -> list[Utterance]:
    utts = []
    for row, path in plan.rows.get(name, []):
        info = infos[path]
        if info.status == SILENT:
            continue
        row = dict(row)
        speech = plan.speech[path]
        row["source"] = {**row["source"], "speaker": speech["speaker"], "speech": speech}
        segments = None
        if info.segments is not None:
            segments = [Segment(s["start"], s["end"], s["lang"]) for s in info.segments]
        utts.append(
            Utterance(
                audio_filepath=str(out / path),
                duration=round(info.duration, 4),
                segments=segments,
                **row,
            )
        )
    return utts


def _remove_orphans(out: Path, keep: set[str]) -> list[str]:
    """Delete audio files of an earlier, different build and temporary files of a killed one."""
    removed = []
    audio = out / "audio"
    if not audio.is_dir():
        return removed
    for path in sorted(audio.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if (
            path.is_file()
            and path.suffix in (".wav", ".json")
            and (rel not in keep or TMP_MARK in path.name)
        ):
            path.unlink()
            removed.append(rel)
    return removed


def build_corpus(
    cfg: CorpusConfig,
    out: str | Path,
    jobs: int = 2,
    progress: bool = False,
    command: str | None = None,
) -> BuildResult:
    """Build (or finish building) the corpus in `out`; see the module docstring for the layout.
    ConfigError when another build holds `out`'s lock."""
    out = Path(out).resolve()
    with build_lock(out):
        return _build(cfg, out, jobs, progress, command)


def _build(
    cfg: CorpusConfig, out: Path, jobs: int, progress: bool, command: str | None
) -> BuildResult:
    start = time.perf_counter()
    plan = plan_corpus(cfg)
    todo = list(plan.jobs.values())
    first = [j for j in todo if j.noise is None]
    second = [j for j in todo if j.noise is not None]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="corpus audio", unit="clip")
    tick = bar.update if bar is not None else None
    infos = render_all(first, out, jobs, tick)
    silent = frozenset(p for p, info in infos.items() if info.status == SILENT)
    infos.update(render_all(second, out, jobs, tick, silent))
    if bar is not None:
        bar.close()
    manifests = {}
    for name in sorted(plan.rows):
        manifests[name] = write_manifest(_utterances(plan, infos, out, name), out / f"{name}.jsonl")
    keep = set(plan.jobs) | {p[:-4] + ".json" for p, j in plan.jobs.items() if j.is_codeswitch}
    removed = _remove_orphans(out, keep)
    read = {name: read_manifest(path) for name, path in manifests.items()}  # validates the output
    stats = corpus_stats(read, cfg)
    stats["silent_clips"] = sorted(p for p, info in infos.items() if info.status == SILENT)
    stats["silent_rows"] = sum(
        1 for rows in plan.rows.values() for _, p in rows if infos[p].status == SILENT
    )
    seconds = time.perf_counter() - start
    dump_config(cfg, out / "config.yaml")
    write_card(out, render_card(stats, cfg, seconds, jobs, command), stats)
    counts = {RENDERED: 0, REUSED: 0, RERENDERED: 0, SILENT: 0}
    for info in infos.values():
        counts[info.status] += 1
    log.info(
        "corpus in %s: %d clips rendered, %d reused, %d re-rendered (damaged), %d silent "
        "(left out), %.1f s",
        out,
        counts[RENDERED],
        counts[REUSED],
        counts[RERENDERED],
        counts[SILENT],
        seconds,
    )
    rendered, reused, rerendered = counts[RENDERED], counts[REUSED], counts[RERENDERED]
    return BuildResult(
        out, manifests, stats, seconds, rendered, reused, removed, rerendered, counts[SILENT]
    )
