"""Read and check one audio request's multipart form, field by field, before it is queued.

Fields (OpenAI's audio API): `file` (required, an uploaded audio file), `model` (required, a
served model id), `language` (ISO 639-1; absent or `auto`: predicted by the LID head when one
is loaded), `prompt` (text that precedes the audio: the request is decoded long-form with the
prompt before its first window, as Whisper's initial prompt), `response_format` (json, text,
verbose_json, srt, vtt), `temperature` (0 to 1; decoding is greedy or beam search, so it does
not change the result). Each problem is an ApiError naming the field; the upload is written to
a private temporary folder and read with babelora's audio loader (not audio, empty, truncated
and too long are refused there).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babelora.errors import AudioError, LanguageError
from babelora.serve.errors import ApiError
from babelora.serve.formats import FORMATS

MAX_FIELD_BYTES = 64 * 1024  # any non-file field
MAX_PROMPT_CHARS = 4000
AUTO = ("", "auto")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}")


class BodyTooLarge(Exception):
    """The request body passed the upload limit (raised from the wrapped ASGI receive)."""


@dataclass
class AudioRequest:
    """A checked request: the saved audio and the decoding settings."""

    path: Path
    filename: str
    model: str
    language: str | None
    response_format: str
    temperature: float
    duration: float
    prompt: str | None = None


def _text(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"'{name}' must be a text field, not a file", name)
    return value.strip()


def _temperature(text: str | None) -> float:
    if text is None or text == "":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise ApiError(
            400, f"'temperature' must be a number, got {text!r}", "temperature"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise ApiError(400, f"'temperature' must be between 0 and 1, got {value}", "temperature")
    return value


def check_fields(form: Any, model_names: tuple[str, ...], engine: Any) -> dict[str, Any]:
    """The text fields checked: model, language, response_format, temperature, prompt."""
    model = _text(form, "model")
    if not model:
        raise ApiError(400, "you must provide a model parameter ('model')", "model")
    if model not in model_names:
        raise ApiError(
            404,
            f"the model '{model}' does not exist; this server serves: {', '.join(model_names)}",
            "model",
            "model_not_found",
        )
    fmt = _text(form, "response_format") or "json"
    if fmt not in FORMATS:
        raise ApiError(
            400,
            f"'response_format' must be one of {', '.join(FORMATS)}, got {fmt!r}",
            "response_format",
        )
    language = _text(form, "language")
    if language is None or language.lower() in AUTO:
        if engine.lid is None:
            raise ApiError(
                400,
                "give the spoken language ('language', e.g. de): this server has no language "
                "identification head loaded (start it with --lid to accept language 'auto')",
                "language",
            )
        language = None
    else:
        try:
            language = engine.check_language(language)
        except LanguageError as err:
            raise ApiError(400, str(err), "language", "unsupported_language") from None
    prompt = _text(form, "prompt")
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise ApiError(400, f"'prompt' is longer than {MAX_PROMPT_CHARS} characters", "prompt")
    return {
        "model": model,
        "language": language,
        "response_format": fmt,
        "temperature": _temperature(_text(form, "temperature")),
        "prompt": prompt,
    }


async def save_upload(form: Any, folder: Path, max_bytes: int) -> tuple[Path, str]:
    """Write the `file` field to `folder`; (path, the client's file name)."""
    upload = form.get("file")
    if upload is None:
        raise ApiError(400, "you must provide an audio file ('file')", "file")
    if isinstance(upload, str) or not hasattr(upload, "read"):
        raise ApiError(400, "'file' must be an uploaded audio file, not a text field", "file")
    name = Path(upload.filename or "audio").name or "audio"
    data = await upload.read()
    if not data:
        raise ApiError(400, f"'{name}' is empty (0 bytes)", "file", "empty_file")
    if len(data) > max_bytes:
        raise ApiError(
            413,
            f"'{name}' is {len(data) / 2**20:.1f} MiB, over the upload limit of "
            f"{max_bytes / 2**20:.1f} MiB",
            "file",
            "file_too_large",
        )
    suffix = Path(name).suffix
    path = folder / (uuid.uuid4().hex + (suffix if _SUFFIX.fullmatch(suffix) else ""))
    await asyncio.to_thread(path.write_bytes, data)
    return path, name


def _read_audio(path: Path) -> float:
    from babelora.data.audio import SAMPLE_RATE, load_audio

    return len(load_audio(path)) / SAMPLE_RATE


async def check_audio(path: Path, name: str, max_seconds: float) -> float:
    """The audio's duration in seconds; ApiError when it is no readable audio or too long."""
    try:
        seconds = await asyncio.to_thread(_read_audio, path)
    except AudioError as err:
        message = str(err).replace(str(path), name)
        raise ApiError(
            400, f"'file' is not usable audio: {message}", "file", "invalid_audio"
        ) from None
    if seconds > max_seconds:
        raise ApiError(
            400,
            f"'{name}' is {seconds:.1f} s long, over the limit of {max_seconds:.0f} s",
            "file",
            "audio_too_long",
        )
    return seconds
