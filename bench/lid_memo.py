"""Language-agnostic decoding with and without the encoder memo shared by Whisper's LID and the
decoding (babelora.decode.encoder_memo), side by side in one process.

Both systems run what `babelora evaluate --language auto` runs (Whisper's LID restricted to
`--langs`, then decoding in the predicted language, greedy, the decoder's default input policy)
on the same rows of a manifest, alternating (plain, memo, plain, memo, ...) so that machine load
hits both alike. Reports wall seconds per round, the median ratio plain / memo, how many clips
the encoder ran in each, and whether the two give identical predictions and hypotheses.

    python bench/lid_memo.py --manifest runs/demo/corpus/test.jsonl --langs de,nl --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Stopwatch, first_per_group, log, requests_of, write_json  # noqa: E402
from protocol import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--langs", required=True, help="the LID's candidates and the rows kept")
    p.add_argument("--per-group", type=int, help="rows per (language, task); default: all")
    p.add_argument("--model", default="base")
    p.add_argument("--rounds", type=int, default=2, help="runs of each system (alternating)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lid_memo.json")
    return p.parse_args(argv)


def counting(encoder: torch.nn.Module) -> list[int]:
    """Record the rows of every call that reaches the encoder itself."""
    rows: list[int] = []
    original = encoder.forward

    def forward(input_features, *args, **kwargs):
        rows.append(int(input_features.shape[0]))
        return original(input_features, *args, **kwargs)

    encoder.forward = forward
    return rows


def agnostic(handle, reqs, langs, memo: bool, max_new_tokens: int) -> tuple[list, list]:
    """One language-agnostic pass: (predicted languages, hypotheses)."""
    from contextlib import nullcontext

    from babelora.decode.encoder_memo import memoised_encoder
    from babelora.decode.language import apply_detections, detect_languages
    from babelora.decode.runner import RunnerOptions, decode_requests
    from babelora.decode.search import DecodeOptions

    options = RunnerOptions(show_progress=False)
    with memoised_encoder(handle.model) if memo else nullcontext():
        found = detect_languages(handle, reqs, options, langs)
        predicted = apply_detections(reqs, found)
        results = decode_requests(
            handle, predicted, DecodeOptions(max_new_tokens=max_new_tokens), options
        )
    return [r.lang for r in predicted], [r.hypothesis for r in results]


def run(args) -> dict:
    from babelora.data.manifest import read_manifest
    from babelora.models.whisper import load_whisper

    torch.set_num_threads(args.threads)
    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    utts = [u for u in read_manifest(args.manifest) if u.lang in langs]
    utts = first_per_group(utts, args.per_group)
    reqs = requests_of(utts)
    handle = load_whisper(args.model, prompt_style="multilingual")
    encoded = counting(handle.model.get_encoder())
    log(f"{len(reqs)} rows of {args.manifest}, model {args.model}")
    rounds: dict[str, list[dict]] = {"plain": [], "memo": []}
    outputs: dict[str, tuple] = {}
    for i in range(args.rounds):
        for name in ("plain", "memo"):
            encoded.clear()
            with Stopwatch() as watch:
                outputs[name] = agnostic(handle, reqs, langs, name == "memo", args.max_new_tokens)
            rounds[name].append(
                {
                    "wall_s": round(watch.wall, 2),
                    "cpu_s": round(watch.cpu, 2),
                    "encoded_clips": sum(encoded),
                }  # fmt: skip
            )
            log(f"round {i} {name}: {watch.wall:.1f} s, {sum(encoded)} clips encoded")
    plain = median(r["wall_s"] for r in rounds["plain"])
    memo = median(r["wall_s"] for r in rounds["memo"])
    same_langs = sum(a == b for a, b in zip(outputs["plain"][0], outputs["memo"][0]))
    same_hyps = sum(a == b for a, b in zip(outputs["plain"][1], outputs["memo"][1]))
    return {
        "benchmark": "lid_memo",
        "command": "python bench/lid_memo.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(args.threads),
        "model": args.model,
        "rows": len(reqs),
        "audio_seconds": round(sum(u.duration or 0.0 for u in utts), 1),
        "rounds": rounds,
        "median_wall_s": {"plain": plain, "memo": memo},
        "speedup": round(plain / memo, 3) if memo else None,
        "identical": {"predicted_language": same_langs, "hypothesis": same_hyps, "of": len(reqs)},
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    report = run(args)
    write_json(args.out, report)
    s = report["median_wall_s"]
    log(
        f"plain {s['plain']:.1f} s, memo {s['memo']:.1f} s: {report['speedup']}x; identical "
        f"languages {report['identical']['predicted_language']}/{report['rows']}, hypotheses "
        f"{report['identical']['hypothesis']}/{report['rows']} -> {args.out}"
    )


if __name__ == "__main__":
    main()
