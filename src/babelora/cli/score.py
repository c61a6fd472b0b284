"""`babelora score`: score a hypotheses JSONL against a manifest (WER/CER, BLEU/chrF, confusion).

    babelora score --manifest M --hyps H.jsonl [--out report.json] [--markdown report.md]

Prints the Markdown report; `--out` writes the JSON report, `--markdown` the Markdown one.
Audio files are not opened, so a manifest scores even where its audio is absent.
"""

from __future__ import annotations

import argparse

from babelora.data.manifest import read_manifest
from babelora.errors import ManifestError
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
    utts = read_manifest(args.manifest)
    if not utts:
        raise ManifestError(f"{args.manifest}: no utterances to score")
    report = score(read_hypotheses(args.hyps), utts, config)
    write_report(report, args.out, args.markdown)
    print(report.to_markdown(), end="")
    return 0
