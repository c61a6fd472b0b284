"""`babelora score`: score a hypotheses JSONL against a manifest (WER/CER, BLEU/chrF, confusion).

    babelora score --manifest M --hyps H.jsonl [--out report.json] [--markdown report.md]
    babelora score --manifest M --hyps B.jsonl --baseline A.jsonl [--compare-out diff.json]

Prints the Markdown report; `--out` writes the JSON report, `--markdown` the Markdown one.
With `--baseline`, also the difference of each row (B - A) with its paired bootstrap 95 %
interval (babelora.evaluate.compare): how every benchmark table's differences are re-derived
from the raw hypotheses kept in bench/results/. Hypotheses may be gzip-compressed (.jsonl.gz).
Audio files are not opened, so a manifest scores even where its audio is absent.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from babelora.data.manifest import read_manifest
from babelora.errors import ConfigError, ManifestError
from babelora.evaluate.compare import CompareConfig, compare
from babelora.evaluate.compare import markdown as compare_markdown
from babelora.evaluate.hypotheses import read_hypotheses
from babelora.evaluate.report import ScoreConfig, score, write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "score",
        help="score hypotheses against a manifest (WER/CER, BLEU/chrF, language confusion)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--manifest", required=True, help="manifest JSONL with the references")
    p.add_argument("--hyps", required=True, help="hypotheses JSONL: {id, hypothesis, lang_used?}")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--markdown", help="write the Markdown report here")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="score utterances without a hypothesis as empty outputs instead of failing",
    )
    p.add_argument(
        "--lang-source",
        choices=("given", "predicted"),
        help="whether the decoding language was given (oracle) or predicted, for hypotheses "
        "that do not say (field lang_source)",
    )
    p.add_argument("--no-langid", action="store_true", help="skip the language-confusion rate")
    p.add_argument(
        "--subset",
        action="store_true",
        help="score only the manifest rows that --hyps covers (a decoded subset: evaluate's "
        "--limit, --langs or --task); the baseline must cover them too",
    )
    p.add_argument(
        "--baseline",
        help="hypotheses of a baseline system A: print each row's difference (--hyps minus A) "
        "with a paired bootstrap 95%% interval",
    )
    p.add_argument("--compare-out", help="write the differences as JSON here (with --baseline)")
    p.add_argument(
        "--resamples",
        type=int,
        default=CompareConfig.n_resamples,
        help="bootstrap resamples (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=CompareConfig.seed, help="bootstrap seed")
    p.add_argument(
        "--lid-margin",
        type=float,
        default=ScoreConfig.lid_margin,
        help="nats per character n-gram by which another language must win to count an output "
        "as wrong-language (default %(default)s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = ScoreConfig(
        langid=not args.no_langid,
        lid_margin=args.lid_margin,
        allow_missing=args.allow_missing,
        lang_source=args.lang_source,
    )
    utts = read_manifest(args.manifest, require_lang=False)  # unlabelled: predicted language
    if not utts:
        raise ManifestError(f"{args.manifest}: no utterances to score")
    hyps = read_hypotheses(args.hyps)
    if args.subset:
        utts = [u for u in utts if u.id in hyps]
        if not utts:
            raise ManifestError(f"{args.hyps}: no hypothesis matches an id of {args.manifest}")
    report = score(hyps, utts, config)
    write_report(report, args.out, args.markdown)
    print(report.to_markdown(), end="")
    if args.compare_out and not args.baseline:
        raise ConfigError("--compare-out needs --baseline (the system to compare against)")
    if args.baseline:
        if args.resamples < 1:
            raise ConfigError(f"--resamples must be at least 1, got {args.resamples}")
        options = CompareConfig(args.resamples, args.seed, allow_missing=args.allow_missing)
        diffs = compare(read_hypotheses(args.baseline), hyps, utts, options)
        print(f"\n## Difference: {args.hyps} - {args.baseline} (paired bootstrap)\n")
        print(compare_markdown(diffs, "baseline", "system"), end="")
        if args.compare_out:
            payload = {
                "baseline": str(args.baseline),
                "system": str(args.hyps),
                "manifest": str(args.manifest),
                "config": asdict(options),
                "rows": [d.to_json() for d in diffs],
            }
            path = Path(args.compare_out)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0
