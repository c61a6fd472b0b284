"""A corpus build's numbers per language, for BENCHMARKS.md: utterances (manifest lines), clips,
hours and speakers per split (code-switched lines counted with their split), and how many test
speakers are unseen in training. Reads the manifests a `babelora corpus build` wrote.

    python bench/corpus_card.py /work/data/corpus_large [--json bench/results/corpus_large.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

SPLITS = ("train", "dev", "test")


def summarize(folder: Path) -> dict:
    """{lang: {split: {lines, clips, hours, speakers}, unseen_test_speakers}} plus totals."""
    from babelora.data.manifest import read_manifest

    out: dict = {}
    for split in SPLITS:
        for name in (split, f"{split}_cs"):
            path = folder / f"{name}.jsonl"
            if not path.is_file():
                continue
            for u in read_manifest(path):
                cell = out.setdefault(u.lang, {}).setdefault(
                    split, {"lines": 0, "clips": {}, "speakers": set()}
                )
                cell["lines"] += 1
                cell["clips"][u.audio_filepath] = u.duration
                speech = u.source.get("speech", {}) if isinstance(u.source, dict) else {}
                who = (speech.get("speakers") or {}).get(u.lang) or u.source.get("speaker")
                cell["speakers"].add(who)  # a code-switched clip: its matrix language's voice
    for by in out.values():
        train = by.get("train", {}).get("speakers", set())
        by["unseen_test_speakers"] = sorted(by.get("test", {}).get("speakers", set()) - train)
        by["all_speakers"] = sorted(set().union(*(by[s]["speakers"] for s in SPLITS if s in by)))
        for split in SPLITS:
            if split in by:
                cell = by[split]
                cell["hours"] = round(sum(cell["clips"].values()) / 3600, 3)
                cell["clips"] = len(cell["clips"])
                cell["speakers"] = sorted(cell["speakers"])
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != "en", kv[0])))


def table(summary: dict) -> str:
    head = "| lang | voices | train lines / h / voices | dev lines / h / voices | "
    head += "test lines / h / voices | test voices unseen in train |"
    lines = [head, "|---|---:|---|---|---|---|"]
    for lang, by in summary.items():
        cells = []
        for split in SPLITS:
            c = by.get(split)
            cells.append(f"{c['lines']:,} / {c['hours']:.2f} / {len(c['speakers'])}" if c else "-")
        unseen = by["unseen_test_speakers"]
        test = by.get("test", {}).get("speakers", [])
        lines.append(
            f"| {lang} | {len(by['all_speakers'])} | {' | '.join(cells)} | "
            f"{len(unseen)} of {len(test)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    summary = summarize(args.folder)
    print(table(summary))
    if args.json:
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
