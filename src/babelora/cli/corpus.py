"""`babelora corpus`: build the offline synthetic corpus, or import a real corpus.

    babelora corpus build --out DIR [--langs de,fr,es,it,nl,pt] [--size tiny|default|large]
                          [--voices espeak,pico[,mbrola]] [--text django,cldr,num2words[,weblate,
                          fillets]] [--weblate WHEEL] [--seed N] [--noise white,pink,babble]
                          [--snr 5,20] [--jobs N] [--set key=value ...]
    babelora corpus langs
    babelora corpus import covost2 --tsv-dir D --clips D --src de --tgt en --out DIR
    babelora corpus import mustc --root D --tgt de --out DIR
    babelora corpus import fleurs --lang-dir D/de_de [--en-dir D/en_us] --out DIR
    babelora corpus import fillets --out DIR [--langs nl,cs] [--root D]

`build` resumes: run it again after a kill and it renders only the missing clips (and any clip
found damaged); a second build of the same --out while one runs is refused.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from babelora.errors import ConfigError


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    from babelora.data.corpus.config import DEFAULT_LANGS, PRESETS

    p = subparsers.add_parser("corpus", help="build the offline speech corpus or import one")
    sub = p.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="synthesize the multilingual corpus (offline)")
    b.add_argument("--out", required=True, help="output folder (manifests, audio/, README.md)")
    b.add_argument(
        "--langs",
        default=",".join(DEFAULT_LANGS),
        help="languages besides English (default %(default)s)",
    )
    b.add_argument(
        "--size",
        default="default",
        choices=sorted(PRESETS),
        help="size preset (default %(default)s)",
    )
    b.add_argument(
        "--voices",
        default=None,
        help="speech engines: espeak, pico, mbrola, or one voice as engine:name (mbrola:es1); "
        "default espeak,pico (their licences allow any use; MBROLA voices are non-commercial)",
    )
    b.add_argument(
        "--text",
        default=None,
        help="text sources: django, cldr, num2words, weblate, fillets (default: the size's; "
        "tiny/default: django,cldr,num2words; large: all five)",
    )
    b.add_argument(
        "--weblate", default=None, help="Weblate wheel or unpacked package (for --text weblate)"
    )
    b.add_argument("--seed", type=int, default=0, help="seed of splits, sampling, speakers, noise")
    b.add_argument(
        "--noise", default="", help="noise types for <split>_noisy.jsonl: white,pink,babble"
    )
    b.add_argument("--snr", default=None, help="SNR range in dB, e.g. 5,20")
    b.add_argument("--jobs", type=int, default=2, help="synthesis processes (default %(default)s)")
    b.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any CorpusConfig field, e.g. train=100",
    )
    b.set_defaults(func=run_build)

    lg = sub.add_parser("langs", help="list the languages the corpus can be built for")
    lg.set_defaults(func=run_langs)

    imp = sub.add_parser(
        "import", help="import CoVoST-2, MuST-C, FLEURS or Fish Fillets NG into manifests"
    )
    which = imp.add_subparsers(dest="corpus_name", metavar="CORPUS", required=True)
    c = which.add_parser("covost2", help="CoVoST-2 TSVs + Common Voice clips")
    c.add_argument("--tsv-dir", required=True, help="folder with covost_v2.<src>_<tgt>.<split>.tsv")
    c.add_argument(
        "--clips", required=True, help="Common Voice clips folder of the source language"
    )
    c.add_argument("--src", required=True, help="source language (Common Voice code)")
    c.add_argument("--tgt", required=True, help="target language")
    c.add_argument("--splits", default="train,dev,test")
    _common_import_args(c, audio=True)
    c.set_defaults(func=run_import)
    m = which.add_parser("mustc", help="MuST-C en-XX (segments cut to WAV files)")
    m.add_argument(
        "--root", required=True, help="MuST-C folder holding en-<tgt>/ (or en-<tgt> itself)"
    )
    m.add_argument("--tgt", required=True, help="target language (de, es, fr, it, nl, pt, ro, ru)")
    m.add_argument("--splits", default="train,dev,tst-COMMON,tst-HE")
    _common_import_args(m, audio=False)
    m.set_defaults(func=run_import)
    f = which.add_parser("fleurs", help="FLEURS language folder (TSVs + audio/<split>/)")
    f.add_argument("--lang-dir", required=True, help="one language's folder, e.g. fleurs/de_de")
    f.add_argument("--lang", default=None, help="ISO 639-1 code (default: from the folder name)")
    f.add_argument(
        "--en-dir", default=None, help="the en_us folder: adds ST X->en lines by sentence id"
    )
    f.add_argument("--splits", default="train,dev,test")
    _common_import_args(f, audio=True)
    f.set_defaults(func=run_import)
    g = which.add_parser(
        "fillets", help="Fish Fillets NG voice packs (Dutch, Czech): human speech, ASR + ST to en"
    )
    g.add_argument(
        "--langs", default=None, help="voice packs to import (default: every one installed)"
    )
    g.add_argument(
        "--root", default=None, help="game data folder (default /usr/share/games/fillets-ng)"
    )
    g.add_argument("--splits", default="train,test")
    _common_import_args(g, audio=False)
    g.set_defaults(func=run_import)


def _common_import_args(p: argparse.ArgumentParser, audio: bool) -> None:
    p.add_argument("--out", required=True, help="output folder for the manifests")
    p.add_argument("--tasks", default="asr,st", help="tasks to write (default %(default)s)")
    if audio:
        p.add_argument(
            "--audio",
            default="link",
            choices=("link", "wav"),
            help="link: point at the corpus' files; wav: convert to 16 kHz WAV under --out",
        )


def run_build(args: argparse.Namespace) -> int:
    from babelora.config import apply_overrides
    from babelora.data.corpus import build_corpus, preset_config

    overrides = apply_overrides({}, args.set)
    overrides["langs"] = _csv(args.langs)
    overrides["seed"] = args.seed
    if args.voices is not None:
        overrides["voices"] = _csv(args.voices)
    if args.text is not None:
        from babelora.data.corpus.text_sources import source_names
        from babelora.errors import LanguageError

        try:
            overrides["texts"] = list(source_names(_csv(args.text)))
        except LanguageError as err:
            raise ConfigError(f"--text: {err}") from None
    if args.weblate is not None:
        overrides["weblate"] = args.weblate
    if args.noise:
        overrides["noise"] = _csv(args.noise)
    if args.snr:
        try:
            overrides["snr"] = [float(v) for v in _csv(args.snr)]
        except ValueError:
            raise ConfigError(f"--snr must be two numbers like 5,20, got {args.snr!r}") from None
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    cfg = preset_config(args.size, **overrides)
    command = (
        "babelora " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if sys.argv[1:2] == ["corpus"]
        else None
    )
    result = build_corpus(
        cfg, args.out, jobs=args.jobs, progress=sys.stderr.isatty(), command=command
    )
    for name, path in result.manifests.items():
        m = result.stats["manifests"][name]
        print(f"{path}: {m['lines']} lines, {m['hours']:.3f} h")
    print(
        f"{result.rendered} clips rendered, {result.reused} reused, {result.rerendered} "
        f"re-rendered (found damaged), {result.silent} silent (left out with their lines), "
        f"{result.seconds:.1f} s"
    )
    print(f"dataset card: {result.out / 'README.md'}")
    return 0


def run_langs(args: argparse.Namespace) -> int:
    from babelora.data.corpus import available_languages
    from babelora.languages import LANG_NAMES

    for code in available_languages():
        print(f"{code}\t{LANG_NAMES.get(code, '')}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from babelora.data.importers import import_covost2, import_fillets, import_fleurs, import_mustc

    tasks, splits = _csv(args.tasks), _csv(args.splits)
    if args.corpus_name == "fillets":
        langs = _csv(args.langs) if args.langs else None
        report = import_fillets(args.out, langs, args.root, tasks, splits)
    elif args.corpus_name == "covost2":
        report = import_covost2(
            args.tsv_dir, args.clips, args.src, args.tgt, args.out, splits, tasks, args.audio
        )
    elif args.corpus_name == "mustc":
        report = import_mustc(args.root, args.tgt, args.out, splits, tasks)
    else:
        report = import_fleurs(
            args.lang_dir, args.out, args.lang, args.en_dir, splits, tasks, args.audio
        )
    print(report.summary())
    return 0
