"""`babelora export`: write a trained model as a CTranslate2 folder (faster-whisper) or a
transformers folder with a model card.

What is exported: `--model` (a base or a merge result) with `--adapter` (a PEFT adapter, merged
in), or one language folded out of `--experts` (`--language de`; `--all-languages` writes one
folder per language under --out). `--format hf --experts SET` without a language writes the
base plus every language's PEFT adapter under adapters/<lang>/.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import AbstractContextManager
from pathlib import Path

from babelora.errors import ConfigError

log = logging.getLogger("babelora.export")
FORMATS = ("ct2", "hf")
CT2_DTYPES = ("float16", "float32")
HF_DTYPES = ("float32", "float16", "bfloat16")

DTYPE_HELP = (
    "weights' precision: ct2 float16 (default) or float32; hf float32 (default), float16 or "
    "bfloat16. int8 is left to CTranslate2's own tools: load the ct2 folder with faster-whisper "
    "compute_type='int8' (quantised at load), or run ct2-transformers-converter --quantization "
    "int8 on the hf export"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a model as a CTranslate2 (faster-whisper) or transformers folder",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--format", choices=FORMATS, required=True, help="ct2 or hf (transformers)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument(
        "--model",
        default=None,
        help="base model: offline name (base, tiny.en), CTranslate2 or transformers folder (e.g. "
        "a `babelora merge` output) or hub id (default: base)",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--adapter", default=None, help="a PEFT LoRA adapter folder, merged in")
    what.add_argument("--experts", default=None, help="an expert set (language experts, MoLoRA)")
    lang = p.add_mutually_exclusive_group()
    lang.add_argument("--language", "-l", default=None, help="fold this language's experts in")
    lang.add_argument(
        "--all-languages",
        action="store_true",
        help="one folder per language of --experts: OUT/<lang>/",
    )
    p.add_argument("--dtype", default=None, help=DTYPE_HELP)
    p.add_argument("--report", default=None, help="report.md / report.json for the model card")
    p.add_argument(
        "--run",
        default=None,
        help="training run folder whose config.yaml goes in the card "
        "(default: found beside --adapter/--experts)",
    )
    p.add_argument(
        "--base-license",
        default=None,
        help="licence of the base (card; default: MIT for OpenAI Whisper, else unknown)",
    )
    p.add_argument("--data-license", default=None, help="licence of the training data (card)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle weights in --model")
    p.add_argument(
        "--ignore-base-mismatch",
        action="store_true",
        help="export --adapter/--experts even when their base signature names another model",
    )
    p.set_defaults(func=run)


def _dtype(args: argparse.Namespace) -> str:
    allowed = CT2_DTYPES if args.format == "ct2" else HF_DTYPES
    dtype = args.dtype or allowed[0]
    if dtype not in allowed:
        raise ConfigError(
            f"--dtype {dtype}: {args.format} exports take {', '.join(allowed)}"
            + ("; for int8 see `babelora export --help`" if "int" in dtype else "")
        )
    return dtype


def _targets(args: argparse.Namespace, languages: list[str]) -> list[tuple[str | None, Path]]:
    out = Path(args.out)
    if args.all_languages:
        return [(lang, out / lang) for lang in languages]
    return [(args.language, out)]


def _check_args(args: argparse.Namespace) -> None:
    if (args.language or args.all_languages) and not args.experts:
        raise ConfigError("--language / --all-languages fold an expert set: give --experts")
    if args.format == "ct2" and args.experts and not (args.language or args.all_languages):
        raise ConfigError(
            "CTranslate2 has no expert routing: give --language LANG (one language folded in) "
            "or --all-languages (one folder per language)"
        )


def _check_free(targets: list[Path], overwrite: bool) -> None:
    taken = [str(t) for t in targets if t.exists()]
    if taken and not overwrite:
        raise ConfigError(f"{taken[0]}: output exists; pass --overwrite to replace it")


def run(args: argparse.Namespace) -> int:
    from babelora.export import sources
    from babelora.export.card import card_info

    _check_args(args)
    dtype = _dtype(args)
    check = not args.ignore_base_mismatch
    info = card_info(
        [args.experts or args.adapter],
        run=args.run,
        report=args.report,
        base_license_text=args.base_license,
        data_license=args.data_license,
    )
    if not args.experts:
        target = Path(args.out)
        _check_free([target], args.overwrite)
        source = sources.load_plain(args.model, args.adapter, check, args.allow_pickle)
        _write(args.format, source, target, dtype, info)
        return 0
    from babelora.languages import check_lang
    from babelora.methods.experts.expert_sets import set_languages

    set_langs = set_languages(args.experts)  # clear errors before the base is loaded
    if args.language:
        check_lang(args.language, set_langs)
    languages = (
        set_langs if args.all_languages else [check_lang(args.language)] if args.language else []
    )
    targets = _targets(args, languages) if languages else [(None, Path(args.out))]
    _check_free([t for _, t in targets], args.overwrite)
    export = sources.load_experts(args.model, args.experts, check, args.allow_pickle)
    if not languages:  # hf: the base and one PEFT adapter per language
        _write_with_adapters(export, Path(args.out), dtype, info)
        return 0
    sources.check_foldable(export)  # before any folder is written
    for lang, target in targets:
        _write(args.format, sources.fold_language(export, lang), target, dtype, info)
    return 0


def _atomic(target: Path) -> AbstractContextManager[Path]:
    from babelora.merging.io import atomic_folder

    return atomic_folder(target, overwrite=True)


def _write(fmt: str, source, target: Path, dtype: str, info) -> None:
    from babelora.export.card import model_card

    if fmt == "ct2" and source.config.vocab_size < 51865 and source.method != "base":
        log.warning(
            "%s has Whisper's English-only vocabulary: faster-whisper decodes it without "
            "language and task tokens, while babelora's experts and fine-tunes are trained with "
            "them (babelora decodes this export as it was trained: `babelora transcribe --model "
            "%s --prompt-style multilingual`)",
            source.base,
            target,
        )
    with _atomic(target) as tmp:
        if fmt == "ct2":
            from babelora.export.ct2 import write_ct2_files

            write_ct2_files(
                tmp,
                source.state,
                source.config,
                source.tokenizer,
                dtype,
                source.generation_config,
                source.base_ct2_config,
            )
        else:
            from babelora.export.hf import write_hf_files

            write_hf_files(tmp, source, dtype)
        (tmp / "README.md").write_text(model_card(source, fmt, dtype, info), encoding="utf-8")
    what = f"{source.language} " if source.language else ""
    print(f"wrote {fmt} {what}model to {target}")


def _write_with_adapters(export, target: Path, dtype: str, info) -> None:
    from babelora.export.card import adapter_card, model_card
    from babelora.export.hf import write_hf_files, write_language_adapter
    from babelora.export.sources import check_foldable
    from babelora.models.base_check import hub_name

    check_foldable(export)
    source = export.base
    langs = list(export.languages)
    with _atomic(target) as tmp:
        write_hf_files(tmp, source, dtype)
        for lang in langs:
            folder = write_language_adapter(
                tmp / "adapters" / lang, export.adapter, lang, source.base
            )
            card = adapter_card(source, lang, info, hub_name(source.base))
            (folder / "README.md").write_text(card, encoding="utf-8")
        card = model_card(source, "hf", dtype, info, adapters=langs)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    print(
        f"wrote hf base model and {len(langs)} language adapters ({', '.join(langs)}) to {target}"
    )
