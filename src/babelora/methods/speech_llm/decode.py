"""Decode requests with a trained speech-LLM (`babelora transcribe/translate/evaluate
--speech-llm FOLDER`): the same Request -> Result contract as babelora.decode.runner.

Each utterance's log-mel is computed from its own audio, exactly as the training collator does
(no fixed 30 s window: `SpeechLLM.make_batch` pads a batch with each row's silence floor), and
utterances are batched by similar length. A bad audio file fails its own item only. Each row is
prompted with its task and target language (`SpeechLLM.prompt_ids`) and, with MoLoRA in the LM,
routed by its routing key.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from babelora.data.audio import SAMPLE_RATE, load_audio, log_mel
from babelora.decode.runner import Request, Result
from babelora.errors import BabeloraError
from babelora.methods.speech_llm.model import SpeechLLM

MAX_SECONDS = 30.0  # the Whisper encoder's window


def decode_speech_llm(
    model: SpeechLLM,
    requests: Sequence[Request],
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
) -> list[Result]:
    """One Result per request, in order (errors recorded per item)."""
    n_mels = int(model.encoder.config.num_mel_bins)
    results = [Result(r.id, lang=r.lang, task=r.task, target_lang=r.target_lang) for r in requests]
    feats: dict[int, torch.Tensor] = {}
    for i, req in enumerate(requests):
        try:
            if not req.lang:
                raise BabeloraError("the speech-LLM needs the spoken language (--language)")
            wave = load_audio(req.audio_filepath)
            seconds = len(wave) / SAMPLE_RATE
            if seconds > MAX_SECONDS:
                raise BabeloraError(
                    f"audio is {seconds:.1f} s; the speech-LLM takes at most {MAX_SECONDS:.0f} s"
                )
            results[i].audio_seconds = seconds
            feats[i] = log_mel(wave, n_mels=n_mels)
        except (BabeloraError, OSError) as err:
            results[i].error = str(err).splitlines()[0]
    order = sorted(feats, key=lambda i: feats[i].shape[-1])
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        reqs = [requests[i] for i in rows]
        t0 = time.perf_counter()
        try:
            batch = model.make_batch(
                [feats[i] for i in rows],
                tasks=[r.task for r in reqs],
                langs=[r.lang for r in reqs],
                target_langs=[r.target_lang for r in reqs],
                ids=[r.id for r in reqs],
            )
            texts = model.transcribe(batch, max_new_tokens=max_new_tokens, num_beams=num_beams)
        except BabeloraError as err:
            for i in rows:
                results[i].error = str(err).splitlines()[0]
            continue
        seconds = (time.perf_counter() - t0) / len(rows)
        for i, text in zip(rows, texts):
            results[i].hypothesis = text
            results[i].decode_seconds = seconds
            if batch.route_keys is not None:
                results[i].extra["route_key"] = batch.route_keys[rows.index(i)]
    return results
