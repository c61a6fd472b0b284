"""MuST-C (Di Gangi et al. 2019, NAACL) into babelora manifests, segments cut to WAV files.

Input layout (one folder per target language, as released):
    <root>/en-<tgt>/data/<split>/txt/<split>.yaml   segment list: [{duration, offset, wav, ...}]
    <root>/en-<tgt>/data/<split>/txt/<split>.en     one English line per segment
    <root>/en-<tgt>/data/<split>/txt/<split>.<tgt>  one translation line per segment
    <root>/en-<tgt>/data/<split>/wav/<talk>.wav     the talks' long recordings
The manifest has no offset field, so every segment is cut from its talk into
<out>/audio/mustc/en-<tgt>/<split>/<talk>_<i>.wav (16 kHz mono; written once, atomically) and
listed in <out>/mustc.en_<tgt>.<split>.jsonl with ST en-><tgt> and, with task `asr`, ASR en lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from babelora.data.audio import SAMPLE_RATE, resample
from babelora.data.importers.common import (
    ImportReport,
    SkipRow,
    audio_seconds,
    check_tasks,
    lang_code,
    need_dir,
    need_file,
    write_lines,
    write_wav_atomic,
)
from babelora.data.manifest import Utterance
from babelora.errors import ManifestError

SPLITS = ("train", "dev", "tst-COMMON", "tst-HE")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def pair_dir(root: Path, tgt: str) -> Path:
    """`root` may be the MuST-C folder holding `en-<tgt>/` or that `en-<tgt>` folder itself."""
    return root / f"en-{tgt}" if (root / f"en-{tgt}").is_dir() else root


def _segments(path: Path) -> list[Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, list):
        raise ManifestError(f"{path}: expected a list of segments, got {type(data).__name__}")
    return data


def _lines(path: Path, count: int, yaml_path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != count:
        raise ManifestError(f"{path}: {len(lines)} lines but {yaml_path} lists {count} segments")
    return lines


class _Talks:
    """Reads segments from the talks' WAVs, keeping the current talk open."""

    def __init__(self, wav_dir: Path) -> None:
        self.wav_dir = wav_dir
        self.name: str | None = None
        self.file: Any = None

    def cut(self, name: str, offset: float, duration: float) -> np.ndarray:
        import soundfile as sf

        if name != self.name:
            self.close()
            path = self.wav_dir / name
            if not path.is_file():
                raise SkipRow(f"talk audio {path} not found")
            try:
                self.file = sf.SoundFile(str(path))
            except (RuntimeError, sf.LibsndfileError) as err:
                raise SkipRow(f"talk audio {path} is unreadable ({err})") from None
            self.name = name
        f = self.file
        start, frames = int(round(offset * f.samplerate)), int(round(duration * f.samplerate))
        if offset < 0 or frames <= 0 or start + frames > f.frames + f.samplerate // 20:
            talk = f.frames / f.samplerate
            raise SkipRow(
                f"segment {offset:.2f}+{duration:.2f} s lies outside {name} ({talk:.2f} s)"
            )
        f.seek(start)
        data = f.read(frames, dtype="float32", always_2d=True).mean(axis=1)
        return resample(data, f.samplerate, SAMPLE_RATE)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.name, self.file = None, None


def import_mustc(
    root: str | Path,
    tgt: str,
    out_dir: str | Path,
    splits: Sequence[str] = SPLITS,
    tasks: Sequence[str] = ("asr", "st"),
) -> ImportReport:
    """Import MuST-C en-`tgt`: cut every listed segment to a file and write one manifest a split."""
    root, out_dir = Path(root), Path(out_dir)
    check_tasks(tasks)
    tgt_lang = lang_code(tgt, f"MuST-C target language {tgt!r}")
    base = need_dir(
        pair_dir(root, tgt) / "data", "MuST-C data", f"expected {root}/en-{tgt}/data/<split>/"
    )
    report = ImportReport("mustc")
    for split in splits:
        txt = need_dir(base / split / "txt", f"MuST-C {split} text")
        yaml_path = need_file(txt / f"{split}.yaml", "MuST-C segment list")
        segments = _segments(yaml_path)
        en = _lines(need_file(txt / f"{split}.en", "MuST-C English text"), len(segments), yaml_path)
        tg = _lines(
            need_file(txt / f"{split}.{tgt}", "MuST-C translation"), len(segments), yaml_path
        )
        talks = _Talks(need_dir(base / split / "wav", f"MuST-C {split} wav"))
        index: dict[str, int] = {}
        utts = []
        for i, (seg, src_text, tgt_text) in enumerate(zip(segments, en, tg), 1):
            where = f"{yaml_path}:{i}"
            try:
                utts.extend(
                    _segment(
                        seg, src_text, tgt_text, talks, index, out_dir, tgt, tgt_lang, split, tasks
                    )
                )
            except SkipRow as err:
                report.skip(where, str(err))
        talks.close()
        write_lines(report, f"mustc.en_{tgt}.{split}", utts, out_dir, str(yaml_path))
    return report


def _segment(
    seg: Any,
    src_text: str,
    tgt_text: str,
    talks: _Talks,
    index: dict[str, int],
    out_dir: Path,
    tgt: str,
    tgt_lang: str,
    split: str,
    tasks: Sequence[str],
) -> list[Utterance]:
    if not isinstance(seg, dict) or not {"offset", "duration", "wav"} <= set(seg):
        raise SkipRow("segment needs offset, duration and wav")
    try:
        offset, duration = float(seg["offset"]), float(seg["duration"])
    except (TypeError, ValueError):
        raise SkipRow(
            f"offset {seg['offset']!r} / duration {seg['duration']!r} are not numbers"
        ) from None
    src_text, tgt_text = src_text.strip(), tgt_text.strip()
    if not src_text or not tgt_text:
        raise SkipRow("empty English text or translation")
    wav = str(seg["wav"])
    talk = Path(wav).stem
    i = index.get(wav, 0)
    index[wav] = i + 1  # numbered within the talk, as fairseq's prep_mustc_data.py does
    target = out_dir / f"audio/mustc/en-{tgt}/{split}/{talk}_{i}.wav"
    if not target.is_file():
        write_wav_atomic(target, talks.cut(wav, offset, duration))
    seconds = audio_seconds(target)
    source = {
        "corpus": "mustc",
        "split": split,
        "talk": wav,
        "offset": offset,
        "duration": duration,
    }
    if "speaker_id" in seg:
        source["speaker_id"] = str(seg["speaker_id"])
    uid = f"mustc-en-{tgt}-{split}-{talk}_{i}"
    out = []
    if "st" in tasks:
        out.append(
            Utterance(
                f"{uid}-st",
                str(target),
                seconds,
                "en",
                "st",
                src_text,
                tgt_text,
                tgt_lang,
                source=source,
            )
        )
    if "asr" in tasks:
        out.append(
            Utterance(f"{uid}-asr", str(target), seconds, "en", "asr", src_text, source=source)
        )
    return out
