"""The HTTP app: OpenAI's audio API over a babelora Engine (`create_app(engine, settings)`).

Routes:
- `POST /v1/audio/transcriptions`, `POST /v1/audio/translations` (into English): multipart
  `file`, `model`, `language`, `prompt`, `response_format`, `temperature` (see upload.py);
- `GET /v1/models`: the served model ids;
- `GET /health`: liveness, queue depth and the batch sizes seen (`batch_sizes`: requests per
  decode call; `forward_batch_sizes`: rows per batched forward pass). No API key needed.

Limits (`ServeSettings`): upload size (413), audio duration (400), a bounded queue (503 when
full), a per-request decoding timeout (504, queueing included); an optional API key
(`Authorization: Bearer KEY`, compared in constant time; 401). Every refusal is a JSON body in
OpenAI's error shape naming the field, and one bad request never disturbs the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from babelora.serve.batcher import Batcher, BatchSettings, QueueFull, Stopped
from babelora.serve.engine import Engine, Job
from babelora.serve.errors import ApiError, error_response
from babelora.serve.formats import TIMED_FORMATS, render
from babelora.serve.upload import (
    MAX_FIELD_BYTES,
    BodyTooLarge,
    check_audio,
    check_fields,
    save_upload,
)

log = logging.getLogger("babelora.serve")
DRAIN_LIMIT = 1 << 30  # read (and drop) at most this much of a too-large body before refusing it


@dataclass(frozen=True)
class ServeSettings:
    """What the server accepts and how it batches (see module docstring)."""

    model_names: tuple[str, ...] = ("babelora",)  # ids clients pass as `model`
    api_key: str | None = None
    max_upload_bytes: int = 25 * 2**20  # OpenAI's limit
    timeout: float = 120.0  # seconds from queueing to the result
    batch: BatchSettings = field(default_factory=BatchSettings)

    def __post_init__(self) -> None:
        if not self.model_names or not all(self.model_names):
            raise ValueError("model_names needs at least one non-empty id")
        if self.max_upload_bytes < 1 or self.timeout <= 0:
            raise ValueError("max_upload_bytes and timeout must be positive")

    @property
    def body_limit(self) -> int:
        return self.max_upload_bytes + 16 * MAX_FIELD_BYTES


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` raises BodyTooLarge from `receive`,
    after the rest of it has been read and dropped (so the client gets the 413 instead of a
    connection reset while it is still sending)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] != "http.request":
                return message
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                more = message.get("more_body", False)
                while more and seen < DRAIN_LIMIT:
                    message = await receive()
                    seen += len(message.get("body", b""))
                    more = message["type"] == "http.request" and message.get("more_body", False)
                raise BodyTooLarge(seen)
            return message

        return await self.app(scope, limited, send)


class _Server:
    """Everything the routes share: engine, settings, batcher, the upload folder."""

    def __init__(self, engine: Engine, settings: ServeSettings) -> None:
        self.engine, self.settings = engine, settings
        self.batcher = Batcher(engine.decode, settings.batch)
        self.started = int(time.time())
        self.folder: Path | None = None

    def authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(
                401,
                "missing API key: send it as 'Authorization: Bearer KEY'",
                None,
                "invalid_api_key",
            )
        if not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(401, "incorrect API key provided", None, "invalid_api_key")

    async def audio(self, request: Request, task: str) -> Response:
        try:
            self.authorize(request)
            try:
                form = await request.form(max_files=1, max_fields=16, max_part_size=MAX_FIELD_BYTES)
            except BodyTooLarge:
                limit = self.settings.max_upload_bytes / 2**20
                raise ApiError(
                    413,
                    f"request body over the upload limit of {limit:.1f} MiB",
                    "file",
                    "file_too_large",
                ) from None
            except (MultiPartException, HTTPException) as err:  # Starlette wraps some in 400s
                why = getattr(err, "message", None) or getattr(err, "detail", None) or str(err)
                raise ApiError(400, f"malformed multipart form: {why}") from None
            try:
                return await self._decode(form, task)
            finally:
                await form.close()
        except ApiError as err:
            return error_response(err, {"Retry-After": "1"} if err.status == 503 else None)

    async def _decode(self, form: Any, task: str) -> Response:
        fields = check_fields(form, self.settings.model_names, self.engine)
        assert self.folder is not None
        path, name = await save_upload(form, self.folder, self.settings.max_upload_bytes)
        try:
            duration = await check_audio(path, name, self.engine.max_seconds)
            job = Job(
                uuid.uuid4().hex,
                str(path),
                fields["language"],
                task,
                timestamps=fields["response_format"] in TIMED_FORMATS,
                prompt=fields["prompt"],
            )
            try:
                outcome = await self.batcher.submit(job, self.settings.timeout)
            except QueueFull:
                raise ApiError(
                    503,
                    "the server is busy (request queue full); retry shortly",
                    None,
                    "server_busy",
                ) from None
            except asyncio.TimeoutError:
                raise ApiError(
                    504,
                    f"decoding took longer than {self.settings.timeout:g} s",
                    None,
                    "timeout",
                ) from None
            except Stopped as err:
                raise ApiError(503, str(err), None, "shutting_down") from None
        finally:
            path.unlink(missing_ok=True)
        if outcome.error:
            raise ApiError(outcome.status, outcome.error, outcome.param)
        return render(fields["response_format"], outcome, task, duration, 0.0)

    def health(self) -> dict[str, Any]:
        engine = self.engine
        return {
            "status": "ok",
            "model": self.settings.model_names[0],
            "languages": list(engine.languages),
            "lid": engine.lid is not None,
            "queue_depth": self.batcher.depth,
            "busy": self.batcher.busy,
            "max_batch_size": self.settings.batch.max_batch_size,
            **engine.stats.snapshot(),
        }


def create_app(engine: Engine, settings: ServeSettings = ServeSettings()) -> Starlette:
    """The Starlette app serving `engine` (already loaded) under `settings`."""
    server = _Server(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.folder = Path(tempfile.mkdtemp(prefix="babelora-serve-"))
        await server.batcher.start()
        try:
            yield
        finally:
            await server.batcher.stop()
            shutil.rmtree(server.folder, ignore_errors=True)

    async def transcriptions(request: Request) -> Response:
        return await server.audio(request, "asr")

    async def translations(request: Request) -> Response:
        return await server.audio(request, "st")

    async def models(request: Request) -> Response:
        try:
            server.authorize(request)
        except ApiError as err:
            return error_response(err)
        data = [
            {"id": name, "object": "model", "created": server.started, "owned_by": "babelora"}
            for name in settings.model_names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse(server.health())

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        what = {404: "no such route", 405: "method not allowed"}.get(status)
        detail = (
            f"{what}: {request.method} {request.url.path}"
            if what
            else str(getattr(exc, "detail", exc))
        )
        return error_response(ApiError(status, detail))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return error_response(ApiError(500, "internal server error"))

    app = Starlette(
        routes=[
            Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
            Route("/v1/audio/translations", translations, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        middleware=[Middleware(BodyLimit, max_bytes=settings.body_limit)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.server = server
    return app
