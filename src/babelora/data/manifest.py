"""The JSONL manifest: one utterance a line, NeMo-compatible field names plus language and task.

Fields (shared/DESIGN.md): `id`, `audio_filepath` (relative to the manifest's folder, or absolute),
`duration` (s), `lang` (ISO 639-1; optional where read with `require_lang=False`: evaluation
predicts a missing language with Whisper's LID, training refuses the row), `task` (`asr` | `st`),
`text` (transcript in `lang`), `translation` + `target_lang` (ST), optional `segments`
[{start, end, lang}] for code-switched audio, optional `source` (provenance). Readers validate
every line and name file, line and field in the error; common aliases from other toolkits
(`wav`, `audio`, `key`, `sentence`, ...) load.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from babelora.errors import LanguageError, ManifestError
from babelora.languages import check_lang

TASKS = ("asr", "st")
ALIASES = {
    "audio_filepath": ("wav", "audio", "path", "audio_path"),
    "id": ("key", "utt_id", "utterance_id"),
    "text": ("txt", "sentence", "transcript"),
    "lang": ("source_lang", "language", "src_lang"),
}


@dataclass
class Segment:
    """A span of code-switched audio in one language (seconds)."""

    start: float
    end: float
    lang: str


@dataclass
class Utterance:
    """One manifest line. `audio_filepath` is resolved to an absolute path on read."""

    id: str
    audio_filepath: str
    duration: float
    lang: str | None  # None: not given (only where read with require_lang=False)
    task: str = "asr"
    text: str = ""
    translation: str | None = None
    target_lang: str | None = None
    segments: list[Segment] | None = None
    source: dict[str, Any] | str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        """The text the model should output: the transcript for ASR, the translation for ST."""
        return self.translation if self.task == "st" and self.translation is not None else self.text

    @property
    def output_lang(self) -> str | None:
        """Language of `reference` (None: an ASR row whose language is not given)."""
        return self.target_lang if self.task == "st" and self.target_lang else self.lang

    def to_json(self, relative_to: str | Path | None = None) -> dict[str, Any]:
        """The manifest line as a dict; paths made relative to `relative_to` when inside it."""
        row = asdict(self)
        extra = row.pop("extra")
        if relative_to is not None:
            with contextlib.suppress(ValueError):  # different drive on Windows
                row["audio_filepath"] = os.path.relpath(self.audio_filepath, relative_to)
        row = {k: v for k, v in row.items() if v is not None}
        row.update(extra)
        return row


def _pick(row: dict[str, Any], name: str) -> Any:
    if name in row:
        return row[name]
    for alias in ALIASES.get(name, ()):
        if alias in row:
            return row[alias]
    return None


def parse_line(
    row: Any,
    where: str,
    base_dir: Path,
    data_root: Path | None = None,
    langs: Iterable[str] | None = None,
    require_lang: bool = True,
) -> Utterance:
    """Validate one decoded JSON object; `where` is `file:line` for error messages. Without
    `require_lang` a row may leave out `lang` (then `Utterance.lang` is None)."""
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(row).__name__}")

    def need(name: str, types: tuple[type, ...], required: bool = True) -> Any:
        value = _pick(row, name)
        if value is None:
            if required:
                raise ManifestError(f"{where}: field '{name}' is missing")
            return None
        if not isinstance(value, types) or isinstance(value, bool):
            want = "/".join(t.__name__ for t in types)
            raise ManifestError(
                f"{where}: field '{name}' must be {want}, got {type(value).__name__} {value!r:.40}"
            )
        return value

    uid = str(need("id", (str, int)))
    if not uid.strip():
        raise ManifestError(f"{where}: field 'id' is empty")
    path = need("audio_filepath", (str,))
    if not path.strip():
        raise ManifestError(f"{where}: field 'audio_filepath' is empty")
    duration = float(need("duration", (int, float)))
    if not math.isfinite(duration) or duration <= 0:
        raise ManifestError(f"{where}: field 'duration' must be a positive number, got {duration}")
    allowed = tuple(langs) if langs is not None else None
    lang = need("lang", (str,), required=False)
    if lang is None and require_lang:
        raise ManifestError(
            f"{where}: field 'lang' is missing (id {uid!r}); training needs each utterance's "
            "language (only `babelora evaluate` can predict it, with Whisper's LID)"
        )
    if lang is not None:
        try:
            lang = check_lang(lang, allowed)
        except LanguageError as err:
            raise ManifestError(f"{where}: field 'lang': {err}") from None
    task = need("task", (str,), required=False) or "asr"
    if task not in TASKS:
        raise ManifestError(f"{where}: field 'task' must be one of {TASKS}, got {task!r}")
    text = need("text", (str,), required=False) or ""
    translation = need("translation", (str,), required=False)
    target_lang = need("target_lang", (str,), required=False)
    if task == "st":
        if translation is None:
            raise ManifestError(f"{where}: field 'translation' is required when task is 'st'")
        if target_lang is None:
            raise ManifestError(f"{where}: field 'target_lang' is required when task is 'st'")
    if target_lang is not None:
        try:
            target_lang = check_lang(target_lang)
        except LanguageError as err:
            raise ManifestError(f"{where}: field 'target_lang': {err}") from None
    segments = None
    raw_segments = row.get("segments")
    if raw_segments is not None:
        if not isinstance(raw_segments, list):
            raise ManifestError(f"{where}: field 'segments' must be a list")
        segments = []
        for i, seg in enumerate(raw_segments):
            name = f"segments[{i}]"
            if not isinstance(seg, dict) or not {"start", "end", "lang"} <= set(seg):
                raise ManifestError(f"{where}: field '{name}' needs start, end and lang")
            try:
                start, end = float(seg["start"]), float(seg["end"])
                seg_lang = check_lang(seg["lang"])
            except (TypeError, ValueError, LanguageError) as err:
                raise ManifestError(f"{where}: field '{name}': {err}") from None
            if not (0 <= start < end) or end > duration + 0.5:
                raise ManifestError(
                    f"{where}: field '{name}' has bad times {start}-{end} for duration {duration}"
                )
            segments.append(Segment(start, end, seg_lang))
    audio = Path(path)
    if not audio.is_absolute():
        audio = base_dir / audio
    audio = Path(os.path.normpath(audio))
    if data_root is not None:
        root = Path(os.path.realpath(data_root))
        real = Path(os.path.realpath(audio))
        if root != real and root not in real.parents:
            raise ManifestError(
                f"{where}: field 'audio_filepath' {path!r} escapes the data root {str(root)!r}"
            )
    known = {"id", "audio_filepath", "duration", "lang", "task", "text", "translation"}
    known |= {"target_lang", "segments", "source"}
    for names in ALIASES.values():
        known |= set(names)
    extra = {k: v for k, v in row.items() if k not in known}
    return Utterance(
        id=uid,
        audio_filepath=str(audio),
        duration=duration,
        lang=lang,
        task=task,
        text=text,
        translation=translation,
        target_lang=target_lang,
        segments=segments,
        source=row.get("source"),
        extra=extra,
    )


def _check_utf8(line: str, where: str) -> None:
    """ManifestError naming the first byte of `line` (read with surrogateescape) that was not
    valid UTF-8, and its column."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as err:
        byte = ord(line[err.start]) - 0xDC00
        raise ManifestError(
            f"{where}: not valid UTF-8 (byte 0x{byte:02x} at column {err.start + 1}); "
            "manifests must be saved as UTF-8"
        ) from None


def iter_manifest(
    path: str | Path,
    data_root: str | Path | None = None,
    langs: Iterable[str] | None = None,
    errors: list[ManifestError] | None = None,
    require_lang: bool = True,
) -> Iterator[Utterance]:
    """Yield validated utterances. With `errors` given, bad lines are collected there and skipped;
    otherwise the first bad line raises ManifestError naming file, line and field.
    `require_lang=False` accepts rows without `lang` (for decoding and evaluation; a `langs`
    restriction then applies to the rows that have one)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base_dir = path.resolve().parent
    root = Path(data_root) if data_root is not None else None
    seen: set[str] = set()
    # surrogateescape: a byte that is not UTF-8 becomes a marker that `_check_utf8` reports as
    # that line's error, instead of a UnicodeDecodeError that ends the whole read
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                _check_utf8(line, where)
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ManifestError(f"{where}: not valid JSON ({err.msg})") from None
                utt = parse_line(row, where, base_dir, root, langs, require_lang)
                if utt.id in seen:
                    raise ManifestError(f"{where}: field 'id' {utt.id!r} is a duplicate")
                seen.add(utt.id)
            except ManifestError as err:
                if errors is None:
                    raise
                errors.append(err)
                continue
            yield utt


def read_manifest(path: str | Path, **kwargs: Any) -> list[Utterance]:
    """Read and validate a whole manifest (see `iter_manifest`)."""
    return list(iter_manifest(path, **kwargs))


def write_manifest(utts: Iterable[Utterance], path: str | Path) -> Path:
    """Write utterances as JSONL, atomically, with audio paths relative to the manifest's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    base = path.resolve().parent
    with open(tmp, "w", encoding="utf-8") as f:
        for utt in utts:
            f.write(json.dumps(utt.to_json(relative_to=base), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
