"""The served model and the decoding of one batch of jobs.

The model is loaded once at start-up (`Engine.load`): a base Whisper, optionally with a PEFT
adapter merged in or an expert set (language experts / MoLoRA) whose rows are routed per
utterance, and optionally a LID head that predicts the language of requests that give none.
`Engine.decode(jobs)` runs in the batcher's worker thread: one `decode_requests` call for the
batch's plain jobs (json/text) and one long-form `transcribe_long` call for the jobs that want
timed segments (verbose_json, srt, vtt) or give a text prompt, each row routed to its own
language's experts (`adapter_batch_hook`); a job whose language has no experts fails alone, the
others are decoded.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from babelora.decode.longform import LongformOptions, transcribe_long
from babelora.decode.runner import Request, RunnerOptions, decode_requests
from babelora.decode.search import DecodeOptions
from babelora.errors import LanguageError

log = logging.getLogger("babelora.serve")
RECENT = 256  # batch sizes kept for /health


@dataclass(frozen=True)
class Job:
    """One request to decode: an audio file, its language (None: predict it) and task."""

    id: str
    audio_path: str
    lang: str | None
    task: str = "asr"  # "asr" (transcriptions) or "st" (translations, into English)
    timestamps: bool = False  # long-form decoding with timed segments
    prompt: str | None = None  # text before the audio (long-form decoding)

    @property
    def longform(self) -> bool:
        return self.timestamps or bool(self.prompt and self.prompt.strip())


@dataclass
class Outcome:
    """What decoding a job gave: the text, or an error with the HTTP status and field."""

    text: str = ""
    lang: str = ""
    lang_source: str = "given"
    expert: str | None = None
    segments: list[dict] | None = None  # timed segments (long-form jobs)
    error: str | None = None
    status: int = 200
    param: str | None = None


class Stats:
    """Counters for /health, updated from the worker thread and read from the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.batches: Counter[int] = Counter()  # jobs per decode call -> count
        self.forward: Counter[int] = Counter()  # rows per encoder/decoder forward -> count
        self.recent: deque[int] = deque(maxlen=RECENT)

    def batch(self, size: int) -> None:
        with self._lock:
            self.requests += size
            self.batches[size] += 1
            self.recent.append(size)

    def forward_pass(self, rows: int) -> None:
        with self._lock:
            self.forward[rows] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests_decoded": self.requests,
                "batches": sum(self.batches.values()),
                "batch_sizes": {str(k): v for k, v in sorted(self.batches.items())},
                "forward_batch_sizes": {str(k): v for k, v in sorted(self.forward.items())},
                "recent_batch_sizes": list(self.recent),
            }


class Engine:
    """A loaded model that decodes batches of jobs (see module docstring)."""

    def __init__(
        self,
        handle: Any,
        adapter: Any = None,
        lid: Any = None,
        decode_options: DecodeOptions = DecodeOptions(),
        runner_options: RunnerOptions = RunnerOptions(show_progress=False),
        missing: str = "error",
        longform_options: LongformOptions = LongformOptions(),
    ) -> None:
        from babelora.decode.routing import check_missing_policy

        self.handle, self.adapter, self.lid = handle, adapter, lid
        self.decode_options, self.runner_options = decode_options, runner_options
        self.longform_options = longform_options
        self.missing = check_missing_policy(adapter, missing) if adapter is not None else missing
        self.stats = Stats()

    @classmethod
    def load(
        cls,
        model: str | None,
        adapter: str | None = None,
        experts: str | None = None,
        lid: str | None = None,
        *,
        decode_options: DecodeOptions = DecodeOptions(),
        runner_options: RunnerOptions = RunnerOptions(show_progress=False),
        missing: str = "error",
        prompt_style: str | None = None,
        device: str = "cpu",
        allow_pickle: bool = False,
        check_base: bool = True,
    ) -> Engine:
        """Load everything once: base, PEFT adapter (merged) or expert set, LID head."""
        from babelora.methods.loading import apply_peft_adapter, load_expert_set
        from babelora.models.whisper import load_whisper

        handle = load_whisper(
            model, device=device, prompt_style=prompt_style, allow_pickle=allow_pickle
        )
        hint = "serve them with the model they were trained on (--model)"
        if adapter:
            apply_peft_adapter(handle, adapter, check=check_base, hint=hint)
        expert_set = None
        if experts:
            expert_set = load_expert_set(handle, experts, check=check_base, hint=hint)
        head = None
        if lid:
            from babelora.models.lid import LidHead

            head = LidHead.load(lid).to(device).eval()
        return cls(handle, expert_set, head, decode_options, runner_options, missing)

    # -- what the server needs to know -----------------------------------------------------
    @property
    def languages(self) -> tuple[str, ...]:
        """The expert set's languages (empty without one)."""
        return tuple(self.adapter.context.languages) if self.adapter is not None else ()

    @property
    def max_seconds(self) -> float:
        return 30.0 * self.runner_options.max_chunks

    def check_language(self, lang: str) -> str:
        """`lang` normalised, with a prompt token and (with an expert set) experts to route to;
        LanguageError says why not."""
        from babelora.data.prompts import whisper_prompt_ids
        from babelora.decode.routing import route_lang
        from babelora.languages import check_lang

        lang = check_lang(lang)
        try:
            whisper_prompt_ids(self.handle.tokenizer, lang, "asr", None, self.handle.prompt_style)
        except KeyError:
            raise LanguageError(
                f"the model's vocabulary has no token for language {lang!r}"
            ) from None
        if self.adapter is not None:
            route_lang(self.adapter, lang, self.missing)
        return lang

    # -- decoding (worker thread) ----------------------------------------------------------
    def _hook(self):
        from babelora.decode.routing import adapter_batch_hook

        inner = adapter_batch_hook(self.adapter, self.missing) if self.adapter is not None else None

        def before(reqs, feature_lens, frames):
            self.stats.forward_pass(len(reqs))
            return inner(reqs, feature_lens, frames) if inner is not None else ()

        return before

    def _predict(self, reqs: list[Request], jobs: Sequence[Job]) -> list[Request]:
        from babelora.decode.routing import predict_languages

        auto = [i for i, job in enumerate(jobs) if job.lang is None]
        if not auto:
            return reqs
        if self.lid is None:  # the app refuses these before queueing them
            raise LanguageError("no language given and no LID head loaded (--lid)")
        predicted = predict_languages(
            self.handle, self.lid, [reqs[i] for i in auto], self.runner_options, self.adapter
        )
        for i, req in zip(auto, predicted):
            reqs[i] = req
        return reqs

    def decode(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Decode `jobs` as one batch; one Outcome per job, in order."""
        from babelora.decode.routing import expert_label, route_lang

        reqs = [
            Request(
                job.id,
                job.audio_path,
                lang=job.lang or "en",
                task=job.task,
                target_lang="en" if job.task == "st" else None,
            )
            for job in jobs
        ]
        reqs = self._predict(reqs, jobs)
        out = [Outcome(lang=r.lang, lang_source=r.lang_source) for r in reqs]
        ready = []
        for i, req in enumerate(reqs):
            try:
                if self.adapter is not None:
                    route_lang(self.adapter, req.lang, self.missing)
                    out[i].expert = expert_label(self.adapter, req, self.missing)
            except LanguageError as err:
                why = "predicted" if req.lang_source == "predicted" else "given"
                out[i].error = f"{err} (language {why})"
                out[i].status, out[i].param = 400, "language"
                continue
            ready.append(i)
        self.stats.batch(len(jobs))
        plain = [i for i in ready if not jobs[i].longform]
        timed = [i for i in ready if jobs[i].longform]
        if plain:
            results = decode_requests(
                self.handle,
                [reqs[i] for i in plain],
                self.decode_options,
                self.runner_options,
                before_batch=self._hook(),
            )
            self._collect(out, plain, results)
        if timed:
            results = transcribe_long(
                self.handle,
                [reqs[i] for i in timed],
                self.decode_options,
                self.runner_options,
                self.longform_options,
                before_batch=self._hook(),
                prompts=[jobs[i].prompt for i in timed],
            )
            self._collect(out, timed, results)
        return out

    @staticmethod
    def _collect(out: list[Outcome], rows: Sequence[int], results) -> None:
        for i, res in zip(rows, results):
            if res.error is not None:
                out[i].error, out[i].status, out[i].param = res.error, 500, "file"
            else:
                out[i].text = res.hypothesis
                if "segments" in res.extra:
                    out[i].segments = res.extra["segments"]


def runner_options(
    max_batch_size: int, max_audio_seconds: float, batch_seconds: float | None = None
) -> RunnerOptions:
    """Runner settings for serving: a whole server batch in one runner batch where it fits
    (`batch_seconds` caps the padded audio per forward), audio up to `max_audio_seconds`."""
    return RunnerOptions(
        batch_seconds=batch_seconds or 30.0 * max_batch_size,
        max_batch_size=max_batch_size,
        max_chunks=max(1, math.ceil(max_audio_seconds / 30.0)),
        show_progress=False,
    )
