"""CoVoST-2 (Wang et al. 2020, arXiv:2007.10310) into babelora manifests.

Input layout (as CoVoST's `get_covost_splits.py` writes it, plus Common Voice's clips):
    <tsv_dir>/covost_v2.<src>_<tgt>.<split>.tsv   header: path, sentence, translation, client_id
    <clips_dir>/<path>                            Common Voice MP3 clips (48 kHz)
The TSVs are written unquoted (csv.QUOTE_NONE), so they are read the same way.
Output: <out>/covost2.<src>_<tgt>.<split>.jsonl with ST lines (speech in src, translation in tgt)
and, with task `asr`, ASR lines of the same clips. MP3 is decoded by soundfile (libsndfile >= 1.1
reads MP3); `audio="wav"` converts clips to 16 kHz WAV once, which is faster to train on.
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
from babelora.errors import DependencyError, ManifestError

COLUMNS = ("path", "sentence", "translation", "client_id")
SPLITS = ("train", "dev", "test")


def covost_tsv(tsv_dir: Path, src: str, tgt: str, split: str) -> Path:
    return tsv_dir / f"covost_v2.{src}_{tgt}.{split}.tsv"


def import_covost2(
    tsv_dir: str | Path,
    clips_dir: str | Path,
    src: str,
    tgt: str,
    out_dir: str | Path,
    splits: Sequence[str] = SPLITS,
    tasks: Sequence[str] = ("asr", "st"),
    audio: str = "link",
) -> ImportReport:
    """Import the CoVoST-2 pair `src`->`tgt` (Common Voice codes such as `de`, `zh-CN`)."""
    tsv_dir, clips_dir, out_dir = Path(tsv_dir), Path(clips_dir), Path(out_dir)
    check_mode(audio)
    check_tasks(tasks)
    need_dir(tsv_dir, "CoVoST-2 TSV")
    need_dir(clips_dir, "Common Voice clips", f"expected the `clips` folder of Common Voice {src}")
    src_lang = lang_code(src, f"CoVoST-2 source language {src!r}")
    tgt_lang = lang_code(tgt, f"CoVoST-2 target language {tgt!r}")
    _check_mp3()
    report = ImportReport("covost2")
    for split in splits:
        tsv = need_file(
            covost_tsv(tsv_dir, src, tgt, split),
            "CoVoST-2 TSV",
            "make it with CoVoST's get_covost_splits.py",
        )
        utts = []
        with open(tsv, encoding="utf-8", newline="") as f:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(rows, None)
            if header is None or any(c not in header for c in COLUMNS):
                raise ManifestError(
                    f"{tsv}:1: header must name columns {', '.join(COLUMNS)}, got {header}"
                )
            col = {name: header.index(name) for name in COLUMNS}
            for lineno, row in enumerate(rows, 2):
                where = f"{tsv}:{lineno}"
                try:
                    utts.extend(
                        _row(
                            row,
                            col,
                            header,
                            clips_dir,
                            out_dir,
                            src_lang,
                            tgt_lang,
                            split,
                            tasks,
                            audio,
                        )
                    )
                except SkipRow as err:
                    report.skip(where, str(err))
        write_lines(report, f"covost2.{src}_{tgt}.{split}", utts, out_dir, str(tsv))
    return report


def _check_mp3() -> None:
    """Common Voice clips are MP3: libsndfile reads MP3 from version 1.1.0 on."""
    import soundfile as sf

    if "MP3" not in sf.available_formats():
        raise DependencyError(
            f"libsndfile {sf.__libsndfile_version__} cannot read MP3 (Common Voice clips); "
            "upgrade it with `pip install -U soundfile` (wheels bundle libsndfile >= 1.1) "
            "or convert the clips to WAV/FLAC with the same names"
        )


def _row(
    row: list[str],
    col: dict[str, int],
    header: list[str],
    clips_dir: Path,
    out_dir: Path,
    src: str,
    tgt: str,
    split: str,
    tasks: Sequence[str],
    audio: str,
) -> list[Utterance]:
    if len(row) != len(header):
        raise SkipRow(f"expected {len(header)} tab-separated columns, got {len(row)}")
    name, sentence = row[col["path"]].strip(), row[col["sentence"]].strip()
    translation = row[col["translation"]].strip()
    if not name or not sentence or not translation:
        raise SkipRow("empty path, sentence or translation")
    stem = Path(name).stem
    path, duration = place_audio(
        clips_dir / name, out_dir, f"audio/covost2/{src}/{stem}.wav", audio
    )
    source = {"corpus": "covost2", "split": split, "client_id": row[col["client_id"]], "clip": name}
    out = []
    if "st" in tasks:
        out.append(
            Utterance(
                f"covost2-{src}-{tgt}-st-{stem}",
                path,
                duration,
                src,
                "st",
                sentence,
                translation,
                tgt,
                source=source,
            )
        )
    if "asr" in tasks:
        out.append(
            Utterance(
                f"covost2-{src}-asr-{stem}", path, duration, src, "asr", sentence, source=source
            )
        )
    return out
