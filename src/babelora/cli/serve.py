"""`babelora serve`: an HTTP server with OpenAI's audio API (transcriptions, translations).

The model is loaded once at start-up; requests that arrive together are decoded as one batch,
each routed to its own language's experts. Clients use any OpenAI SDK with `base_url` pointed
here, e.g. `OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY)`.
"""

from __future__ import annotations

import argparse
import logging
import os

from babelora.errors import ConfigError

log = logging.getLogger("babelora.serve")
API_KEY_ENV = "BABELORA_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP server with OpenAI's audio API, batching languages' experts together",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--model", default=None, help="base model (offline name, folder, hub id)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--adapter", default=None, help="a PEFT LoRA adapter folder (merged in)")
    what.add_argument("--experts", default=None, help="an expert set, routed per request")
    p.add_argument("--lid", default=None, help="a LID head folder: accept language 'auto'")
    p.add_argument(
        "--missing-expert",
        default="error",
        metavar="{error,base,LANG}",
        help="a language without experts: refuse it (400, default), decode it without "
        "language experts (base), or with LANG's experts",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--name",
        action="append",
        default=None,
        help="model id clients pass as `model` (repeat for aliases, e.g. --name whisper-1; "
        "default: babelora)",
    )
    p.add_argument(
        "--api-key", default=None, help=f"require this key (default: ${API_KEY_ENV} if set)"
    )
    p.add_argument("--max-batch-size", type=_positive(int), default=16)
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        help="after a batch's first request, wait this long for more (default 10)",
    )
    p.add_argument("--max-queue", type=_positive(int), default=64, help="then 503")
    p.add_argument("--timeout", type=_positive(float), default=120.0, help="seconds, then 504")
    p.add_argument("--max-upload-mb", type=_positive(float), default=25.0, help="then 413")
    p.add_argument("--max-audio-seconds", type=_positive(float), default=600.0, help="then 400")
    p.add_argument(
        "--batch-seconds",
        type=_positive(float),
        default=None,
        help="padded audio seconds per forward pass (default: 30 x --max-batch-size)",
    )
    p.add_argument("--beam-size", type=_positive(int), default=1, help="1 = greedy")
    p.add_argument("--max-new-tokens", type=_positive(int), default=128)
    p.add_argument("--prompt-style", choices=["multilingual", "english"], default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=_positive(int), default=None, help="torch CPU threads")
    p.add_argument("--allow-pickle", action="store_true")
    p.add_argument("--ignore-base-mismatch", action="store_true")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    """ServeSettings from the command line (and $BABELORA_API_KEY)."""
    from babelora.serve.app import ServeSettings
    from babelora.serve.batcher import BatchSettings

    if args.batch_wait_ms < 0:
        raise ConfigError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}")
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    return ServeSettings(
        model_names=tuple(dict.fromkeys(args.name or ["babelora"])),
        api_key=key or None,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        timeout=args.timeout,
        batch=BatchSettings(args.max_batch_size, args.batch_wait_ms, args.max_queue),
    )


def engine_from_args(args: argparse.Namespace):
    """Load the model once (base, adapter or expert set, LID head)."""
    import torch

    from babelora.decode.memory import check_device
    from babelora.decode.search import DecodeOptions
    from babelora.serve.engine import Engine, runner_options

    if args.threads:
        torch.set_num_threads(args.threads)
    check_device(args.device)  # a one-line error before any weight is read
    return Engine.load(
        args.model,
        args.adapter,
        args.experts,
        args.lid,
        decode_options=DecodeOptions(beam_size=args.beam_size, max_new_tokens=args.max_new_tokens),
        runner_options=runner_options(
            args.max_batch_size, args.max_audio_seconds, args.batch_seconds
        ),
        missing=args.missing_expert,
        prompt_style=args.prompt_style,
        device=args.device,
        allow_pickle=args.allow_pickle,
        check_base=not args.ignore_base_mismatch,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from babelora.serve.app import create_app

    settings = settings_from_args(args)
    if args.host not in LOOPBACK and not settings.api_key:
        log.warning(
            "serving on %s without an API key: anyone who reaches this address can use the "
            "model (set --api-key or $%s)",
            args.host,
            API_KEY_ENV,
        )
    engine = engine_from_args(args)
    app = create_app(engine, settings)
    langs = ", ".join(engine.languages) or "any (no expert set)"
    print(
        f"babelora serve: {settings.model_names[0]} on http://{args.host}:{args.port}/v1 "
        f"(languages: {langs}; LID: {'yes' if engine.lid is not None else 'no'})",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
