"""Train and score the spoken-LID head (models/lid.py) that routes experts language-agnostically.

Features are the masked mean of the *base* encoder's states (experts off), computed exactly as
`babelora.decode.routing.predict_languages` computes them at decode time (same front end,
padding, batching and mask), so the head sees at training what it sees when routing. Every
audio file counts once (a corpus reuses one recording for its ASR and ST rows).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from babelora.data.audio import HOP_LENGTH, load_audio
from babelora.data.manifest import Utterance
from babelora.decode.routing import encoder_mask
from babelora.decode.runner import RunnerOptions, _batches, _chunks, _Piece, features_for
from babelora.errors import ConfigError
from babelora.models.lid import LidConfig, LidHead, predict, train_lid_head

log = logging.getLogger("babelora.lid")


def lid_examples(utts: Sequence[Utterance], langs: Sequence[str]) -> list[tuple[str, str]]:
    """(audio path, language) once per audio file, for utterances in `langs` (others skipped)."""
    seen: dict[str, str] = {}
    skipped: Counter[str] = Counter()
    for utt in utts:
        if utt.lang not in langs:
            skipped[utt.lang] += 1
        elif utt.audio_filepath not in seen:
            seen[utt.audio_filepath] = utt.lang
    if skipped:
        log.info("LID: skipped utterances of other languages: %s", dict(skipped))
    return list(seen.items())


@torch.no_grad()
def pooled_features(
    handle, paths: Sequence[str], options: RunnerOptions = RunnerOptions(), adapter=None
) -> torch.Tensor:
    """(N, D) masked-mean base-encoder states of each file (first 30 s window), float32."""
    model = handle.model
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pieces = []
    for i, path in enumerate(paths):
        wave = _chunks(load_audio(path), options.max_chunks, path)[0]
        pieces.append(_Piece(i, 0, wave, ()))
    out = torch.zeros(len(paths), model.config.d_model)
    with adapter.disabled() if adapter is not None else contextlib.nullcontext():
        for batch in _batches(pieces, options):
            feats = features_for([p.wave for p in batch], handle.n_mels, options).to(device)
            lens = torch.tensor([len(p.wave) // HOP_LENGTH for p in batch], device=device)
            states = model.get_encoder()(feats.to(dtype)).last_hidden_state
            mask = encoder_mask(lens, feats.shape[-1])[:, : states.shape[1]]
            pooled = LidHead.pool(states.float(), mask).cpu()
            for piece, row in zip(batch, pooled):
                out[piece.req] = row
    return out


def train_lid(
    handle,
    utts: Sequence[Utterance],
    langs: Sequence[str],
    cfg: LidConfig = LidConfig(),
    options: RunnerOptions = RunnerOptions(show_progress=False),
) -> LidHead:
    """A LID head over `langs` trained on the base encoder's pooled states of `utts`."""
    examples = lid_examples(utts, langs)
    missing = [x for x in langs if x not in {lang for _, lang in examples}]
    if missing:
        raise ConfigError(f"LID training data has no utterance of {missing}")
    feats = pooled_features(handle, [p for p, _ in examples], options)
    labels = torch.tensor([list(langs).index(lang) for _, lang in examples])
    return train_lid_head(feats, labels, list(langs), cfg)


@dataclass
class LidReport:
    """Accuracy of a LID head on a set of files."""

    accuracy: float
    n: int
    per_lang: dict[str, float] = field(default_factory=dict)
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)  # true -> predicted

    def to_json(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "per_lang": self.per_lang,
            "confusion": self.confusion,
        }


def evaluate_lid(
    head: LidHead,
    handle,
    utts: Sequence[Utterance],
    options: RunnerOptions = RunnerOptions(show_progress=False),
) -> LidReport:
    """Accuracy (overall and per language) on the files of `utts` in the head's languages."""
    examples = lid_examples(utts, head.languages)
    if not examples:
        raise ConfigError(f"no utterance in the head's languages {list(head.languages)}")
    feats = pooled_features(handle, [p for p, _ in examples], options)
    predicted, _ = predict(head, feats)
    confusion: dict[str, dict[str, int]] = {}
    for (_, true), guess in zip(examples, predicted):
        row = confusion.setdefault(true, {})
        row[guess] = row.get(guess, 0) + 1
    per_lang = {lang: row.get(lang, 0) / sum(row.values()) for lang, row in confusion.items()}
    correct = sum(row.get(lang, 0) for lang, row in confusion.items())
    return LidReport(correct / len(examples), len(examples), per_lang, confusion)
