"""FLEURS (Conneau et al. 2022, arXiv:2205.12446) into babelora manifests.

Input layout (one folder per language, as in the released archives, e.g. `de_de/`):
    <lang_dir>/<split>.tsv          no header; columns: id, file name, raw transcription,
                                    normalized transcription, words, number of samples, gender
    <lang_dir>/audio/<split>/<file> 16 kHz WAV
FLEURS is n-way parallel: rows with the same `id` in two languages say the same sentence. With
`en_dir` (the `en_us` folder) each X clip also gets an ST X->en line whose translation is the
English raw transcription of the same id. Output: <out>/fleurs.<lang>.<split>.jsonl.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from babelora.data.importers.common import (
    ImportReport,
    SkipRow,
    check_mode,
    check_tasks,
    lang_code,
    need_dir,
    need_file,
    place_audio,
    write_lines,
)
from babelora.data.manifest import Utterance
from babelora.errors import ManifestError

SPLITS = ("train", "dev", "test")
N_COLUMNS = 7
csv.field_size_limit(1 << 24)


def _read_tsv(path: Path) -> list[tuple[int, list[str]]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1))


def english_by_id(en_dir: Path, splits: Sequence[str] = SPLITS) -> dict[str, str]:
    """{FLEURS id: English raw transcription} from the `en_us` folder's TSVs that exist."""
    out: dict[str, str] = {}
    for split in splits:
        path = en_dir / f"{split}.tsv"
        if path.is_file():
            for _, row in _read_tsv(path):
                if len(row) >= 3 and row[0].strip() and row[2].strip():
                    out.setdefault(row[0].strip(), row[2].strip())
    return out


def import_fleurs(
    lang_dir: str | Path,
    out_dir: str | Path,
    lang: str | None = None,
    en_dir: str | Path | None = None,
    splits: Sequence[str] = SPLITS,
    tasks: Sequence[str] = ("asr", "st"),
    audio: str = "link",
) -> ImportReport:
    """Import one FLEURS language folder; `lang` defaults to the folder name's prefix (`de_de`)."""
    lang_dir, out_dir = Path(lang_dir), Path(out_dir)
    check_mode(audio)
    tasks = check_tasks(tasks)
    need_dir(lang_dir, "FLEURS language", "expected e.g. fleurs/de_de with <split>.tsv and audio/")
    code = lang_code(lang or lang_dir.name.split("_")[0], f"FLEURS language of {lang_dir}")
    english: dict[str, str] = {}
    if en_dir is not None and "st" in tasks and code != "en":
        en_dir = need_dir(Path(en_dir), "FLEURS English (en_us)")
        english = english_by_id(en_dir)
        if not english:
            raise ManifestError(f"{en_dir}: no FLEURS English rows (expected train/dev/test.tsv)")
    report = ImportReport("fleurs")
    for split in splits:
        tsv = need_file(lang_dir / f"{split}.tsv", "FLEURS TSV", f"expected {lang_dir}/{split}.tsv")
        audio_dir = need_dir(
            lang_dir / "audio" / split, "FLEURS audio", "extract audio/<split>.tar.gz there"
        )
        utts = []
        for lineno, row in _read_tsv(tsv):
            where = f"{tsv}:{lineno}"
            try:
                utts.extend(_row(row, audio_dir, out_dir, code, split, tasks, english, audio))
            except SkipRow as err:
                report.skip(where, str(err))
        write_lines(report, f"fleurs.{code}.{split}", utts, out_dir, str(tsv))
    return report


def _row(
    row: list[str],
    audio_dir: Path,
    out_dir: Path,
    lang: str,
    split: str,
    tasks: Sequence[str],
    english: dict[str, str],
    audio: str,
) -> list[Utterance]:
    if len(row) != N_COLUMNS:
        raise SkipRow(f"expected {N_COLUMNS} tab-separated columns, got {len(row)}")
    sid, name, raw, normalized = (c.strip() for c in row[:4])
    if not sid or not name or not raw:
        raise SkipRow("empty id, file name or transcription")
    stem = Path(name).stem
    path, duration = place_audio(
        audio_dir / name, out_dir, f"audio/fleurs/{lang}/{split}/{stem}.wav", audio
    )
    source = {"corpus": "fleurs", "split": split, "id": sid, "file": name, "gender": row[6].strip()}
    source["normalized"] = normalized
    out = []
    if "asr" in tasks:
        out.append(
            Utterance(
                f"fleurs-{lang}-{split}-{stem}-asr", path, duration, lang, "asr", raw, source=source
            )
        )
    if "st" in tasks and sid in english:
        out.append(
            Utterance(
                f"fleurs-{lang}-{split}-{stem}-st",
                path,
                duration,
                lang,
                "st",
                raw,
                english[sid],
                "en",
                source=source,
            )
        )
    return out
