"""Periodic evaluation during training: dev loss, plus pluggable metrics (WER/BLEU) through hooks.

Dev loss is always computed (token-averaged cross-entropy over the dev set, sharded over ranks).
Further metrics come from an `EvaluateFn` named by `eval.hook` in the config (EVAL_HOOKS); it runs
on the main process with the unwrapped model in eval mode and returns flat metrics such as
`{"error_rate": 21.0, "wer/de": 18.2, "bleu/fr-en": 23.4}`. Built in: `decode` (greedy/beam
decoding of the dev set, per-language WER/CER and BLEU; when the recipe carries expert layers,
`recipe.adapter`, each row is routed to its language as `--experts` decoding does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import nn

from babelora.data.collate import IGNORE_INDEX
from babelora.data.manifest import Utterance
from babelora.errors import ConfigError


class EvaluateFn(Protocol):
    """Metrics of `model` on dev utterances `utts` at training step `step`."""

    def __call__(
        self, model: nn.Module, recipe: Any, utts: list[Utterance], *, step: int
    ) -> dict[str, float]: ...


EvalHookBuilder = Callable[[Any], EvaluateFn]  # TrainConfig -> EvaluateFn


def build_eval_hook(cfg: Any) -> EvaluateFn | None:
    """The hook named by `cfg.eval.hook` (None when unset)."""
    if cfg.eval.hook is None:
        return None
    builder = EVAL_HOOKS.get(cfg.eval.hook)
    if builder is None:
        known = ", ".join(sorted(EVAL_HOOKS)) or "none registered"
        raise ConfigError(f"eval.hook: unknown hook {cfg.eval.hook!r}; known: {known}")
    return builder(cfg)


@torch.no_grad()
def dev_loss_sums(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, dict[str, Any]], Any],
    batches: Iterable[dict[str, Any]],
    to_device: Callable[[dict[str, Any]], dict[str, Any]],
) -> torch.Tensor:
    """(summed token loss, target tokens) over this rank's dev batches, as a 2-vector tensor."""
    total = torch.zeros(2, dtype=torch.float64)
    for batch in batches:
        out = loss_fn(model, to_device(batch))
        total[0] += float(out.loss)
        total[1] += int((batch["labels"] != IGNORE_INDEX).sum())
    return total


def build_decode_hook(cfg: Any) -> EvaluateFn:
    """Decode the dev set and score it: `wer/<lang>` (or `cer/<lang>`) for ASR, `bleu/<src>-<tgt>`
    for ST, and their macro averages `error_rate` and `bleu` (WER/CER after Whisper's
    normalizers, BLEU with sacrebleu; babelora.evaluate.metrics). Inputs are padded as in training
    (`data.pad_to_30s`, `data.min_input_seconds`), so the scores see what training saw."""
    from babelora.decode.routing import adapter_batch_hook
    from babelora.decode.runner import Request, RunnerOptions, decode_requests
    from babelora.decode.search import DecodeOptions
    from babelora.evaluate.metrics import asr_metric, bleu, error_rate
    from babelora.models.whisper import WhisperHandle

    search = DecodeOptions(beam_size=cfg.eval.beam_size, max_new_tokens=cfg.eval.max_new_tokens)
    runner = RunnerOptions(
        batch_seconds=cfg.eval.batch_seconds or cfg.data.batch_seconds,
        pad_to_30s=cfg.data.pad_to_30s,
        min_input_seconds=cfg.data.min_input_seconds,
        tail_seconds=0.0,
        show_progress=False,
    )

    def evaluate(model: nn.Module, recipe: Any, utts: list[Utterance], *, step: int) -> dict:
        handle = WhisperHandle(model, recipe.tokenizer, f"step {step}", recipe.prompt_style)
        requests = [Request(u.id, u.audio_filepath, u.lang, u.task, u.target_lang) for u in utts]
        adapter = getattr(recipe, "adapter", None)
        if adapter is None:
            results = decode_requests(handle, requests, search, runner)
        else:
            try:
                hook = adapter_batch_hook(adapter)
                results = decode_requests(handle, requests, search, runner, before_batch=hook)
            finally:
                adapter.context.clear()
        groups: dict[tuple[str, str, str], tuple[list[str], list[str]]] = {}
        for utt, res in zip(utts, results):
            if res.error is None:
                hyps, refs = groups.setdefault((utt.task, utt.lang, utt.output_lang), ([], []))
                hyps.append(res.hypothesis)
                refs.append(utt.reference)
        metrics: dict[str, float] = {
            "decode_errors": float(sum(r.error is not None for r in results))
        }
        asr, st = [], []
        for (task, lang, out_lang), (hyps, refs) in sorted(groups.items()):
            if task == "asr":
                value = error_rate(hyps, refs, lang).score
                metrics[f"{asr_metric(lang)}/{lang}"] = value
                asr.append(value)
            else:
                value = bleu(hyps, refs, out_lang).score
                metrics[f"bleu/{lang}-{out_lang}"] = value
                st.append(value)
        if asr:
            metrics["error_rate"] = sum(asr) / len(asr)
        if st:
            metrics["bleu"] = sum(st) / len(st)
        return metrics

    return evaluate


EVAL_HOOKS: dict[str, EvalHookBuilder] = {"decode": build_decode_hook}
