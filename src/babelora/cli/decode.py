"""`babelora transcribe`, `babelora translate`, `babelora evaluate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from babelora.data.manifest import read_manifest
from babelora.decode.runner import Request, RunnerOptions, decode_requests, write_results
from babelora.decode.search import DecodeOptions
from babelora.errors import BabeloraError, ManifestError
from babelora.languages import check_lang

IGNORE_HINT = (
    "decode with the model they were trained on (--model), or pass --ignore-base-mismatch to "
    "use them anyway"
)


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (0 and negatives would silently mean something else,
    e.g. `--limit 0` all utterances and `--limit -1` all but the last)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="offline model name (base, tiny.en: see `babelora models`), CTranslate2 or "
        "transformers folder, or HF id (default: base, multilingual)",
    )
    p.add_argument("--adapter", default=None, help="a PEFT LoRA adapter folder (merged in)")
    p.add_argument(
        "--experts",
        default=None,
        help="a babelora expert set (language experts or MoLoRA): each utterance "
        "is routed by its language, batched",
    )
    p.add_argument(
        "--lid",
        default=None,
        help="a LID head folder: predict each utterance's language (language-agnostic)",
    )
    p.add_argument(
        "--lid-mode",
        choices=["argmax", "posterior"],
        default="argmax",
        help="route to the predicted language's experts, or weight experts by the LID posterior",
    )
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy (default)")
    p.add_argument(
        "--max-new-tokens", type=_positive_int, default=128, help="tokens per utterance (>= 1)"
    )
    p.add_argument("--batch-seconds", type=float, default=120.0, help="audio seconds per batch")
    p.add_argument("--pad-to-30s", action="store_true", help="exact original Whisper input")
    p.add_argument(
        "--min-input-seconds",
        type=float,
        default=RunnerOptions.min_input_seconds,
        help="pad shorter clips with silence to this length (see BENCHMARKS.md)",
    )
    p.add_argument(
        "--length-bucket-seconds",
        type=float,
        default=RunnerOptions.length_bucket_seconds,
        help="round each clip's input length up to a multiple of this; a clip's input depends "
        "on the clip alone, so it decodes the same in any batch (0 = no rounding)",
    )
    p.add_argument(
        "--prompt-style",
        choices=["multilingual", "english"],
        default=None,
        help="decoder prompt (default: english for *.en models, else multilingual)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow pickle weights (.bin/.pt), loaded with weights_only=True",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--ignore-base-mismatch",
        action="store_true",
        help="use --adapter/--experts even when their saved base signature is another model's",
    )
    p.add_argument(
        "--missing-expert",
        default="error",
        metavar="{error,base,LANG}",
        help="an utterance whose language has no expert in --experts: error (default), base "
        "(decode it without language experts; MoLoRA: only the shared experts) or LANG (with "
        "that language's experts); hypotheses and report name the expert of each utterance",
    )


def _load(args: argparse.Namespace):
    import torch

    from babelora.models.whisper import load_whisper

    if args.threads:
        torch.set_num_threads(args.threads)
    handle = load_whisper(
        args.model,
        device=args.device,
        prompt_style=args.prompt_style,
        allow_pickle=args.allow_pickle,
    )
    from babelora.methods.loading import apply_peft_adapter, load_expert_set
    from babelora.models.base_check import check_base

    check = not args.ignore_base_mismatch
    if check and args.adapter and args.experts:  # both against the base, before the merge
        check_base(args.experts, handle.model, handle.name, hint=IGNORE_HINT)
    if args.adapter:
        apply_peft_adapter(handle, args.adapter, check=check, hint=IGNORE_HINT)
    adapter = None
    if args.experts:
        check = check and not args.adapter
        adapter = load_expert_set(handle, args.experts, check=check, hint=IGNORE_HINT)
    return handle, adapter


def _decode(args: argparse.Namespace, handle, adapter, reqs: list[Request], auto: bool = False):
    """Decode requests: predict languages first with --lid (the trained head) or, with `auto`,
    Whisper's own LID (restricted to --langs); route experts with --experts."""
    from babelora.decode.routing import (
        adapter_batch_hook,
        check_expert_languages,
        expert_label,
        predict_languages,
    )

    dopts, ropts = _options(args)
    missing = args.missing_expert
    posterior = args.lid_mode == "posterior"
    detections = None
    if adapter is not None and not (args.lid or auto):
        check_expert_languages(adapter, reqs, missing)
    if args.lid:
        from babelora.models.lid import LidHead

        head = LidHead.load(args.lid)
        reqs = predict_languages(handle, head, reqs, ropts, adapter, posterior)
    elif auto:
        from babelora.decode.language import apply_detections, detect_languages

        detections = detect_languages(handle, reqs, ropts, _lid_langs(args), adapter)
        experts = adapter.context.languages if adapter is not None and posterior else None
        reqs = apply_detections(reqs, detections, experts)
    if adapter is not None and (args.lid or auto):
        check_expert_languages(adapter, [r for r in reqs if r.lang], missing)
    hook = adapter_batch_hook(adapter, missing) if adapter is not None else None
    results = decode_requests(handle, reqs, dopts, ropts, before_batch=hook)
    for i, (req, res) in enumerate(zip(reqs, results)):
        if detections is not None and detections[i] is not None:
            res.extra["lang_prob"] = round(detections[i].prob, 4)
        if adapter is not None and res.error is None:
            res.extra["expert"] = expert_label(adapter, req, missing)
    return results


def _lid_langs(args: argparse.Namespace) -> list[str] | None:
    """The candidate languages of Whisper's LID (--langs), or None for all of Whisper's."""
    text = getattr(args, "langs", None)
    return [check_lang(x) for x in text.split(",") if x.strip()] if text else None


def _language_mode(args: argparse.Namespace, handle, default: str | None) -> str | None:
    """What --language asks for (`default` when not given): AUTO (Whisper's LID), a language
    code, or None (with --lid the trained head predicts). AUTO on an English-only model is an
    error that points to a trained LID head."""
    from babelora.decode.language import AUTO, check_detectable

    if args.lid:
        return None
    lang = args.language or default
    if lang != AUTO:
        return lang
    check_detectable(handle)
    return AUTO


def _options(args: argparse.Namespace) -> tuple[DecodeOptions, RunnerOptions]:
    if args.beam_size < 1:
        raise BabeloraError(f"--beam-size must be >= 1, got {args.beam_size}")
    return (
        DecodeOptions(beam_size=args.beam_size, max_new_tokens=args.max_new_tokens),
        RunnerOptions(
            batch_seconds=args.batch_seconds,
            pad_to_30s=args.pad_to_30s,
            min_input_seconds=args.min_input_seconds,
            length_bucket_seconds=args.length_bucket_seconds,
            show_progress=not args.no_progress,
        ),
    )


def _named(res) -> str:
    """A failed result's error, prefixed with its id unless the message starts with it."""
    return res.error if res.error.startswith(res.id) else f"{res.id}: {res.error}"


def _report(results, out: str | None) -> int:
    """Print hypotheses (or write JSONL) and a failure summary; exit 1 if any item failed."""
    if out:
        write_results(results, out)
        print(f"wrote {len(results)} results to {out}", file=sys.stderr)
    else:
        for res in results:
            if res.error is None:
                print(f"{res.id}\t{res.hypothesis}")
    failed = [r for r in results if r.error]
    for res in failed:
        print(f"error: {_named(res)}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} items failed", file=sys.stderr)
        return 1
    return 0


def _files_cmd(args: argparse.Namespace, task: str) -> int:
    from babelora.decode.language import AUTO, is_multilingual

    lang = args.language if args.language in (None, AUTO) else check_lang(args.language)
    target = check_lang(args.to) if task == "st" else None
    _lid_langs(args)
    handle, adapter = _load(args)
    lang = _language_mode(args, handle, AUTO if is_multilingual(handle) else "en")
    reqs = [
        Request(
            id=Path(f).name if args.short_ids else str(f),
            audio_filepath=str(f),
            lang=lang if lang not in (None, AUTO) else "",
            task=task,
            target_lang=target,
        )
        for f in args.files
    ]
    results = _decode(args, handle, adapter, reqs, auto=lang == AUTO)
    return _report(results, args.out)


def transcribe(args: argparse.Namespace) -> int:
    return _files_cmd(args, "asr")


def translate(args: argparse.Namespace) -> int:
    return _files_cmd(args, "st")


def evaluate(args: argparse.Namespace) -> int:
    errors: list[ManifestError] = []
    utts = read_manifest(args.manifest, data_root=args.data_root, errors=errors)
    for err in errors:
        print(f"skipped: {err}", file=sys.stderr)
    if args.langs:
        keep = {check_lang(x) for x in args.langs.split(",")}
        utts = [u for u in utts if u.lang in keep]
    if args.task:
        utts = [u for u in utts if u.task == args.task]
    if args.limit is not None:
        utts = utts[: args.limit]
    if not utts:
        raise BabeloraError(f"{args.manifest}: no utterances to evaluate")
    from babelora.decode.language import AUTO

    if args.language not in (None, AUTO):
        check_lang(args.language)
    handle, adapter = _load(args)
    mode = _language_mode(args, handle, None)
    agnostic = bool(args.lid) or mode == AUTO
    # language-agnostic: the manifest's language is never read (only scoring uses it)
    reqs = [
        Request(u.id, u.audio_filepath, "" if agnostic else (mode or u.lang), u.task, u.target_lang)
        for u in utts
    ]
    results = _decode(args, handle, adapter, reqs, auto=mode == AUTO)
    out = Path(args.out)
    write_results(results, out / "hypotheses.jsonl")
    from babelora.evaluate.report import score_results, skipped_lines, write_report

    report = score_results(utts, [r.to_json() for r in results])
    report.setdefault("meta", {}).update(
        model=handle.name,
        beam_size=args.beam_size,
        manifest=str(args.manifest),
        lang_source="predicted" if agnostic else "given",
        decoding="language-agnostic" if agnostic else "language-aware",
        experts=args.experts,
        lid=args.lid or ("whisper" if mode == AUTO else None),
    )
    if mode == AUTO and args.langs:
        report["meta"]["lid_langs"] = ",".join(_lid_langs(args) or [])
    if args.experts:
        report["meta"]["missing_expert"] = args.missing_expert
    report["skipped"] = skipped_lines(errors)  # bad manifest lines: in no row's n
    report["counts"]["skipped"] = len(errors)
    write_report(report, out / "report.json", out / "report.md")
    print((out / "report.md").read_text(encoding="utf-8"))
    failed = [r for r in results if r.error]
    for res in failed:
        print(f"error: {_named(res)}", file=sys.stderr)
    if failed or errors:
        print(f"{len(failed)} audio failures, {len(errors)} bad manifest lines", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    for name, func, help_text in (
        ("transcribe", transcribe, "speech to text in the same language"),
        ("translate", translate, "speech to text in another language"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("files", nargs="+", help="audio files (any rate, mono or stereo)")
        p.add_argument(
            "--language",
            "-l",
            default=None,
            help="spoken language (ISO 639-1), or auto: Whisper identifies it (default: auto on "
            "multilingual models, en on English-only ones; --lid: the LID head predicts it)",
        )
        p.add_argument(
            "--langs",
            default=None,
            help="with --language auto: only these languages may be predicted (comma list)",
        )
        if name == "translate":
            p.add_argument("--to", default="en", help="target language (default en)")
        p.add_argument("--out", "-o", default=None, help="write JSONL results here")
        p.add_argument("--short-ids", action="store_true", help="use file names as ids")
        _add_model_args(p)
        p.set_defaults(func=func)
    p = sub.add_parser("evaluate", help="decode a manifest and score it per language")
    p.add_argument("--manifest", "-m", required=True)
    p.add_argument("--out", "-o", default="runs/evaluate", help="folder for hypotheses + report")
    p.add_argument(
        "--langs",
        default=None,
        help="only these languages (comma list); with --language auto also the languages "
        "Whisper may predict",
    )
    p.add_argument(
        "--language",
        "-l",
        default=None,
        help="auto: Whisper identifies each utterance's language from the audio alone "
        "(language-agnostic; the manifest's language is used only for scoring); LANG: decode "
        "everything as LANG; default: each manifest row's language (language-aware)",
    )
    p.add_argument("--task", choices=["asr", "st"], default=None)
    p.add_argument(
        "--limit", type=_positive_int, default=None, help="first N (>= 1) utterances only"
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="refuse (skip, with an error) manifest lines whose audio lies outside this folder",
    )
    _add_model_args(p)
    p.set_defaults(func=evaluate)
