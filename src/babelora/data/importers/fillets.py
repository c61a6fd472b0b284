"""Fish Fillets NG's voice acting (real human speech) into babelora manifests.

Input (Debian: `fillets-ng-data` for the scripts, `fillets-ng-data-nl` / `fillets-ng-data-cs`
for the voice packs, all GPL-2.0-or-later), under the data root (/usr/share/games/fillets-ng):
    script/<level>/dialogs_<lang>.lua   dialogId("id", font, "English") + dialogStr("X")
    sound/<level>/<lang>/<id>.ogg       the line spoken by a voice actor (22.05 kHz Ogg Vorbis)
(`script/share/` and `sound/share/<kind>/` hold lines shared by many levels.) Each clip gives an
ASR line (its transcript) and an ST line to English (the English original), with the speaker
(`fillets-<lang>:small-fish` / `big-fish`, from the font) in `source.speaker`. Audio is decoded,
checked, mixed to mono and resampled to 16 kHz WAV under <out>/audio/fillets/<lang>/.

Splits: `fillets.<lang>.test.jsonl` (about 70 % of the lines) and a small
`fillets.<lang>.train.jsonl`, by a hash of the English text (`corpus.fillets.real_split`); the
synthetic corpus' `fillets` text source uses only train lines. A clip with no transcript, no
English original, a truncated or undecodable Ogg file or silent audio is skipped, counted and
named in the report; a row never points at missing or silent audio.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from babelora.data.audio import SAMPLE_RATE, resample
from babelora.data.corpus.debian import apt_hint, package_version
from babelora.data.corpus.fillets import (
    SPEAKERS,
    Dialog,
    data_root,
    dialogs,
    real_split,
)
from babelora.data.corpus.text_sources import tidy
from babelora.data.importers.common import (
    ImportReport,
    SkipRow,
    audio_seconds,
    check_tasks,
    lang_code,
    write_lines,
    write_wav_atomic,
)
from babelora.data.manifest import Utterance
from babelora.errors import DependencyError, ManifestError

SPLITS = ("train", "test")
SILENCE = 1e-3
"""Peak amplitude (-60 dBFS) under which a clip counts as silent."""
_LETTER = re.compile(r"[^\W\d_]")


def voice_packs(root: Path) -> tuple[str, ...]:
    """Languages with a voice pack (`sound/**/<lang>/*.ogg`) and dialogue scripts."""
    from babelora.data.corpus.fillets import script_languages

    scripts = set(script_languages(root))
    found = {p.parent.name for p in (root / "sound").glob("**/*.ogg")} if scripts else set()
    return tuple(sorted(found & scripts))


def ogg_problem(path: Path) -> str | None:
    """Why an Ogg file is damaged, or None: every page must be whole and the stream must end
    with an end-of-stream page. libsndfile decodes a file cut short as shorter audio without a
    word, so this is the truncation check."""
    data = path.read_bytes()
    pos, pages, eos = 0, 0, False
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS":
            return f"no Ogg page at byte {pos} (not an Ogg file, or corrupt)"
        if pos + 27 > len(data) or pos + 27 + data[pos + 26] > len(data):
            return f"truncated inside the page header at byte {pos}"
        nseg = data[pos + 26]
        size = 27 + nseg + sum(data[pos + 27 : pos + 27 + nseg])
        if pos + size > len(data):
            return f"truncated: its last page needs {pos + size - len(data)} more bytes"
        eos, pages, pos = bool(data[pos + 5] & 4), pages + 1, pos + size
    if not pages:
        return "empty file"
    return None if eos else "truncated: the stream has no end-of-stream page"


def decode(path: Path) -> np.ndarray:
    """A clip as 16 kHz mono float32; SkipRow saying why when it is damaged or silent."""
    import soundfile as sf

    problem = ogg_problem(path)
    if problem:
        raise SkipRow(f"damaged Ogg file ({problem})")
    try:
        info = sf.info(str(path))
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, ValueError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SkipRow(f"does not decode ({why})") from None
    if len(data) == 0:
        raise SkipRow("holds no audio (0 frames)")
    if len(data) != info.frames:
        raise SkipRow(f"decodes to {len(data)} of its {info.frames} frames")
    wave = data.mean(axis=1)
    if not np.isfinite(wave).all() or float(np.abs(wave).max()) < SILENCE:
        raise SkipRow("silent audio (peak below -60 dBFS)")
    return resample(wave, sr, SAMPLE_RATE)


def import_fillets(
    out_dir: str | Path,
    langs: Sequence[str] | None = None,
    root: str | Path | None = None,
    tasks: Sequence[str] = ("asr", "st"),
    splits: Sequence[str] = SPLITS,
) -> ImportReport:
    """Import the installed voice packs (or `langs`) into <out>/fillets.<lang>.<split>.jsonl."""
    out_dir = Path(out_dir)
    tasks = check_tasks(tasks)
    if not splits or any(s not in SPLITS for s in splits):
        raise ManifestError(f"Fish Fillets splits must be a subset of {SPLITS}, got {splits}")
    base = data_root(root)
    packs = voice_packs(base)
    if langs is None:
        langs = packs
        if not langs:
            raise DependencyError(
                f"no Fish Fillets voice pack under {base}/sound; "
                + apt_hint(["fillets-ng-data-nl", "fillets-ng-data-cs"])
            )
    report = ImportReport("fillets")
    for code in langs:
        lang = lang_code(code, "Fish Fillets language")
        if lang not in packs:
            raise DependencyError(
                f"no Fish Fillets voice pack for {lang!r} under {base}/sound (installed: "
                f"{', '.join(packs) or 'none'}); " + apt_hint([f"fillets-ng-data-{lang}"])
            )
        rows = _language(base, lang, out_dir, tasks, report)
        for split in splits:
            write_lines(report, f"fillets.{lang}.{split}", rows[split], out_dir, f"{base} ({lang})")
    return report


def _index(base: Path, lang: str) -> tuple[dict[tuple[str, str], Dialog], dict[str, Dialog]]:
    """{(script folder, id): line} and {id: line} for ids found in one folder only."""
    by_folder: dict[tuple[str, str], Dialog] = {}
    by_id: dict[str, list[Dialog]] = {}
    for d in dialogs(lang, base):
        by_folder.setdefault((Path(d.script).parts[1], d.id), d)
        by_id.setdefault(d.id, []).append(d)
    return by_folder, {k: v[0] for k, v in by_id.items() if len(v) == 1}


def _language(
    base: Path, lang: str, out_dir: Path, tasks: Sequence[str], report: ImportReport
) -> dict[str, list[Utterance]]:
    by_folder, by_id = _index(base, lang)
    version = package_version(f"fillets-ng-data-{lang}") or "?"
    rows: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for ogg in sorted((base / "sound").glob(f"**/{lang}/*.ogg")):
        rel = ogg.relative_to(base)
        folder, uid = rel.parts[1], ogg.stem
        try:
            d = by_folder.get((folder, uid)) or by_id.get(uid)
            if d is None:
                raise SkipRow(f"no transcript: no dialogue line {uid!r} in the {lang} scripts")
            split = real_split(d.english)
            rows[split].extend(_rows(d, ogg, rel, lang, folder, split, out_dir, tasks, version))
        except SkipRow as err:
            report.skip(str(ogg), str(err))
    return rows


def _rows(
    d: Dialog,
    ogg: Path,
    rel: Path,
    lang: str,
    folder: str,
    split: str,
    out_dir: Path,
    tasks: Sequence[str],
    version: str,
) -> list[Utterance]:
    text, english = tidy(d.text or ""), tidy(d.english)
    if not _LETTER.search(text):
        raise SkipRow(f"no transcript ({d.script}:{d.line} has no {lang} text)")
    if not _LETTER.search(english):
        raise SkipRow(f"no translation ({d.script}:{d.line} has no English text)")
    target = out_dir / "audio" / "fillets" / lang / folder / f"{d.id}.wav"
    if not target.is_file():
        write_wav_atomic(target, decode(ogg))
    seconds = audio_seconds(target)
    source = {
        "corpus": "fillets-ng",
        "split": split,
        "speaker": f"fillets-{lang}:{SPEAKERS.get(d.font, d.font)}",
        "level": folder,
        "id": d.id,
        "script": d.script,
        "line": d.line,
        "audio": rel.as_posix(),
        "package": f"fillets-ng-data-{lang} {version}",
    }
    uid = f"fillets-{lang}-{split}-{folder}-{d.id}"
    out = []
    if "asr" in tasks:
        out.append(Utterance(f"{uid}-asr", str(target), seconds, lang, "asr", text, source=source))
    if "st" in tasks:
        out.append(
            Utterance(
                f"{uid}-st", str(target), seconds, lang, "st", text, english, "en", source=source
            )
        )
    return out
