"""`babelora transcribe`, `babelora translate`, `babelora evaluate`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from babelora.data.manifest import read_manifest
from babelora.decode.options import RunnerOptions  # torch-free: the runner loads with a model
from babelora.errors import BabeloraError, LanguageError, ManifestError
from babelora.languages import check_lang

if TYPE_CHECKING:
    from babelora.decode.runner import Request
    from babelora.decode.search import DecodeOptions

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
        "--speech-llm",
        default=None,
        help="a trained speech-LLM export folder (recipe speech_llm, final/): decode with it "
        "instead of Whisper's decoder (needs the spoken language)",
    )
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
    p.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="weights and activations (float16/bfloat16: GPUs; experts are cast too)",
    )
    p.add_argument(
        "--kv-cache",
        choices=["dynamic", "static"],
        default="dynamic",
        help="static: preallocated KV cache, greedy loop on the device, CUDA graphs on a GPU",
    )
    p.add_argument(
        "--graphs",
        choices=["off", "auto", "cuda", "compile"],
        default="auto",
        help="with --kv-cache static: capture each step as a CUDA graph (auto: on a GPU), or "
        "torch.compile it (reduce-overhead)",
    )
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


def _add_longform_args(p: argparse.ArgumentParser) -> None:
    from babelora.decode.subtitles import OUTPUT_FORMATS
    from babelora.decode.vad import VAD_METHODS

    p.add_argument(
        "--output-format",
        "-f",
        choices=OUTPUT_FORMATS,
        default=None,
        help="write transcripts as txt, json (with segments), srt or vtt subtitles (implies "
        "--timestamps); to stdout for one input without --out",
    )
    p.add_argument(
        "--timestamps",
        action="store_true",
        help="long-form decoding with timestamps: seek segment by segment through audio of any "
        "length (as Whisper does); JSONL results get their segments",
    )
    p.add_argument(
        "--no-condition-on-previous-text",
        action="store_true",
        help="with timestamps: do not prompt each 30 s window with the text before it (less "
        "context, but no repetition carried from one window to the next)",
    )
    p.add_argument(
        "--initial-prompt", default=None, help="with timestamps: text that precedes the audio"
    )
    p.add_argument(
        "--no-speech-threshold",
        type=float,
        default=0.6,
        help="with timestamps: skip a window as silence above this no-speech probability "
        "(with a mean log-prob below -1)",
    )
    p.add_argument(
        "--vad",
        choices=VAD_METHODS,
        default=None,
        help="with timestamps: cut long silences first; energy (built in) or silero "
        "(faster-whisper's model, needs onnxruntime); timestamps stay those of the file",
    )
    p.add_argument(
        "--vad-min-silence",
        type=float,
        default=2.0,
        help="with --vad: cut only silences at least this long (seconds)",
    )


def _load(args: argparse.Namespace):
    import torch

    from babelora.decode.memory import check_device
    from babelora.models.whisper import load_whisper

    if args.threads:
        torch.set_num_threads(args.threads)
    check_device(args.device)
    if args.speech_llm:
        from babelora.methods.loading import load_speech_llm

        if args.adapter or args.experts or args.lid:
            raise BabeloraError("--speech-llm cannot be combined with --adapter/--experts/--lid")
        return load_speech_llm(args.speech_llm, device=args.device), None
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
    if args.dtype != "float32":
        handle.model.to(getattr(torch, args.dtype))
    return handle, adapter


def _decode(
    args: argparse.Namespace,
    handle,
    adapter,
    reqs: list[Request],
    auto: bool | Sequence[bool] = False,
    longform=None,
):
    """Decode requests: predict languages first with --lid (the trained head) or, with `auto`
    (all requests, or those flagged True), Whisper's own LID (restricted to --langs); route
    experts with --experts (predicted rows by the predicted language or its posterior). With
    `longform` (LongformOptions) decode long-form with timestamps (babelora.decode.longform)."""
    from babelora.decode.routing import (
        adapter_batch_hook,
        check_expert_languages,
        expert_label,
        predict_languages,
    )
    from babelora.decode.runner import decode_requests

    dopts, ropts = _options(args)
    if args.speech_llm:
        from babelora.methods.loading import decode_speech_llm

        if (auto if isinstance(auto, bool) else any(auto)) or any(not r.lang for r in reqs):
            raise BabeloraError("--speech-llm needs the spoken language: pass --language LANG")
        return decode_speech_llm(handle, reqs, args.beam_size, args.max_new_tokens)
    missing = args.missing_expert
    posterior = args.lid_mode == "posterior"
    flags = [auto] * len(reqs) if isinstance(auto, bool) else list(auto)
    detections: list = [None] * len(reqs)
    if adapter is not None and not args.lid:  # the given languages, before any LID runs
        check_expert_languages(adapter, [r for r, f in zip(reqs, flags) if not f], missing)
    with _lid_memo(args, handle, adapter, flags, longform):
        if args.lid:
            from babelora.models.lid import LidHead

            head = LidHead.load(args.lid)
            reqs = predict_languages(handle, head, reqs, ropts, adapter, posterior)
        elif any(flags):
            from babelora.decode.language import apply_detections, detect_languages

            idx = [i for i, f in enumerate(flags) if f]
            asked = [reqs[i] for i in idx]
            found = detect_languages(handle, asked, ropts, _lid_langs(args), adapter)
            experts = adapter.context.languages if adapter is not None and posterior else None
            reqs = list(reqs)
            for i, det, req in zip(idx, found, apply_detections(asked, found, experts)):
                detections[i], reqs[i] = det, req
        if adapter is not None and (args.lid or any(flags)):
            check_expert_languages(adapter, [r for r in reqs if r.lang], missing)
        hook = adapter_batch_hook(adapter, missing) if adapter is not None else None
        if longform is not None:
            from babelora.decode.longform import transcribe_long

            results = transcribe_long(handle, reqs, dopts, ropts, longform, before_batch=hook)
        else:
            results = decode_requests(handle, reqs, dopts, ropts, before_batch=hook)
    for i, (req, res) in enumerate(zip(reqs, results)):
        if detections[i] is not None:
            res.extra["lang_prob"] = round(detections[i].prob, 4)
        if adapter is not None and res.error is None:
            res.extra["expert"] = expert_label(adapter, req, missing)
    return results


@contextlib.contextmanager
def _lid_memo(args: argparse.Namespace, handle, adapter, flags: Sequence[bool], longform):
    """Whisper's LID and the decoding in the predicted language read the same log-mel rows: with
    the encoder memoised across both passes each clip is encoded once (not for --lid, whose head
    reads its own features, nor long-form windows, nor experts inside the encoder)."""
    from babelora.decode.encoder_memo import memoised_encoder, serves_both_passes

    skip = args.lid or not any(flags) or longform is not None
    if skip or not serves_both_passes(handle.model, adapter):
        yield
    else:
        with memoised_encoder(handle.model):
            yield


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
    if getattr(args, "speech_llm", None) and lang == AUTO:
        raise BabeloraError("--speech-llm needs the spoken language: pass --language LANG")
    if lang != AUTO:
        return lang
    check_detectable(handle)
    return AUTO


def _skip_unlabelled(args: argparse.Namespace, handle, utts: list, errors: list) -> list:
    """Rows without a language are decoded with Whisper's LID; an English-only model has none, so
    those rows are skipped one by one (named by line, like any bad line) and the rest decoded."""
    from babelora.decode.language import is_multilingual

    if is_multilingual(handle):
        return utts
    strict: list[ManifestError] = []  # the same file read as training reads it: lang required
    read_manifest(args.manifest, data_root=args.data_root, errors=strict)
    hint = (
        f"; {handle.name} is English-only and cannot identify it: add 'lang', pass --lid DIR "
        "(a trained LID head) or --language LANG, or use --model base"
    )
    for err in strict:
        if "field 'lang' is missing" in str(err):
            err = ManifestError(f"{err}{hint}")
            print(f"skipped: {err}", file=sys.stderr)
            errors.append(err)
    kept = [u for u in utts if u.lang is not None]
    if not kept:
        raise LanguageError(
            f"{args.manifest}: no row has a 'lang' and {handle.name} is English-only, so it "
            "cannot identify their language; add 'lang', pass --lid DIR (a trained LID head) or "
            "--language LANG, or use --model base"
        )
    return kept


def _options(args: argparse.Namespace) -> tuple[DecodeOptions, RunnerOptions]:
    from babelora.decode.search import DecodeOptions

    if args.beam_size < 1:
        raise BabeloraError(f"--beam-size must be >= 1, got {args.beam_size}")
    return (
        DecodeOptions(
            beam_size=args.beam_size,
            max_new_tokens=args.max_new_tokens,
            kv_cache=args.kv_cache,
            graphs=args.graphs,
        ),
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
    from babelora.decode.runner import write_results

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


def _longform_options(args: argparse.Namespace):
    """LongformOptions from the command line, or None for plain (untimed) decoding."""
    if not (args.timestamps or args.output_format):
        return None
    from babelora.decode.longform import LongformOptions
    from babelora.decode.vad import VadOptions

    if args.no_speech_threshold is not None and not 0.0 <= args.no_speech_threshold <= 1.0:
        raise BabeloraError(
            f"--no-speech-threshold must be between 0 and 1, got {args.no_speech_threshold}"
        )
    if args.vad_min_silence <= 0:
        raise BabeloraError(f"--vad-min-silence must be > 0 seconds, got {args.vad_min_silence}")
    vad = VadOptions(args.vad, min_silence_seconds=args.vad_min_silence) if args.vad else None
    return LongformOptions(
        condition_on_previous_text=not args.no_condition_on_previous_text,
        initial_prompt=args.initial_prompt,
        no_speech_threshold=args.no_speech_threshold,
        vad=vad,
    )


def _output_paths(args: argparse.Namespace) -> list[Path] | None:
    """Where each input's transcript goes with --output-format (None: stdout, one input).

    `--out` is a folder (it exists as one, ends with '/', or there are several inputs; each
    input gives `<stem>.<format>` there) or, for one input, a file."""
    fmt, files = args.output_format, [Path(f) for f in args.files]
    if not args.out:
        if len(files) > 1:
            raise BabeloraError(
                f"--output-format {fmt} with {len(files)} inputs: give --out FOLDER for the "
                "transcripts (one file per input)"
            )
        return None
    out = Path(args.out)
    if len(files) == 1 and not (out.is_dir() or args.out.endswith(("/", "\\"))):
        return [out]
    if out.exists() and not out.is_dir():
        raise BabeloraError(f"--out {out}: not a folder (with several inputs --out is a folder)")
    paths = [out / f"{f.stem}.{fmt}" for f in files]
    seen: dict[Path, Path] = {}
    for f, path in zip(files, paths):
        if path in seen:
            raise BabeloraError(
                f"{seen[path]} and {f} would both be written to {path}; rename one or decode "
                "them separately"
            )
        seen[path] = f
    return paths


def _write_transcripts(results, args: argparse.Namespace, paths: list[Path] | None) -> int:
    """Write each result in --output-format (to its path, or stdout); report failures."""
    from babelora.decode.subtitles import render

    for i, res in enumerate(results):
        if res.error is not None:
            continue
        content = render(
            args.output_format,
            res.hypothesis,
            res.extra.get("segments", []),
            language=res.lang,
            duration=round(res.audio_seconds, 3),
        )
        if paths is None:
            sys.stdout.write(content)
            continue
        paths[i].parent.mkdir(parents=True, exist_ok=True)
        tmp = paths[i].with_name(paths[i].name + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        tmp.replace(paths[i])
        print(f"wrote {paths[i]}", file=sys.stderr)
    failed = [r for r in results if r.error]
    for res in failed:
        print(f"error: {_named(res)}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} items failed", file=sys.stderr)
        return 1
    return 0


def _files_cmd(args: argparse.Namespace, task: str) -> int:
    from babelora.decode.language import AUTO, is_multilingual
    from babelora.decode.runner import Request

    lang = args.language if args.language in (None, AUTO) else check_lang(args.language)
    target = check_lang(args.to) if task == "st" else None
    _lid_langs(args)
    longform = _longform_options(args)
    paths = _output_paths(args) if args.output_format else None
    handle, adapter = _load(args)
    multilingual = bool(args.speech_llm) or is_multilingual(handle)
    lang = _language_mode(args, handle, AUTO if multilingual else "en")
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
    results = _decode(args, handle, adapter, reqs, auto=lang == AUTO, longform=longform)
    if args.output_format:
        return _write_transcripts(results, args, paths)
    return _report(results, args.out)


def transcribe(args: argparse.Namespace) -> int:
    return _files_cmd(args, "asr")


def translate(args: argparse.Namespace) -> int:
    return _files_cmd(args, "st")


def evaluate(args: argparse.Namespace) -> int:
    from babelora.decode.runner import Request, write_results

    errors: list[ManifestError] = []
    utts = read_manifest(args.manifest, data_root=args.data_root, errors=errors, require_lang=False)
    for err in errors:
        print(f"skipped: {err}", file=sys.stderr)
    if args.langs:  # rows without a language stay: Whisper's LID picks among --langs for them
        keep = {check_lang(x) for x in args.langs.split(",")}
        utts = [u for u in utts if u.lang is None or u.lang in keep]
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
    unlabelled = [u for u in utts if u.lang is None]
    if mode is None and not args.lid and unlabelled:
        utts = _skip_unlabelled(args, handle, utts, errors)
        unlabelled = [u for u in utts if u.lang is None]  # kept only where LID can run
    # predicted rows: --lid / --language auto (all), or the rows without a language (default)
    flags = [bool(args.lid) or mode == AUTO or (mode is None and u.lang is None) for u in utts]
    agnostic = all(flags)
    # a predicted row's manifest language is never read (only scoring uses it)
    reqs = [
        Request(u.id, u.audio_filepath, "" if f else (mode or u.lang), u.task, u.target_lang)
        for u, f in zip(utts, flags)
    ]
    results = _decode(args, handle, adapter, reqs, auto=[f and not args.lid for f in flags])
    out = Path(args.out)
    write_results(results, out / "hypotheses.jsonl")
    from babelora.evaluate.report import score_results, skipped_lines, write_report

    report = score_results(utts, [r.to_json() for r in results])
    report.setdefault("meta", {}).update(
        model=f"speech-llm:{args.speech_llm}" if args.speech_llm else handle.name,
        beam_size=args.beam_size,
        manifest=str(args.manifest),
        lang_source="predicted" if agnostic else "mixed" if any(flags) else "given",
        decoding="language-agnostic" if agnostic else "mixed" if any(flags) else "language-aware",
        experts=args.experts,
        lid=args.lid or ("whisper" if any(flags) else None),
    )
    if unlabelled:
        report["meta"]["rows_without_lang"] = len(unlabelled)
    if any(flags) and not args.lid and args.langs:
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
        p.add_argument(
            "--out",
            "-o",
            default=None,
            help="write JSONL results here; with --output-format: the transcript file (one "
            "input) or a folder that gets <name>.<format> per input",
        )
        p.add_argument("--short-ids", action="store_true", help="use file names as ids")
        _add_longform_args(p)
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
