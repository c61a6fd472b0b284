"""Utterances -> training batches for Whisper-style encoder-decoders.

`SpeechDataset` loads audio lazily (`load_audio`) and computes Whisper log-mel features, with an
optional on-disk feature cache (safetensors, written atomically). `WhisperCollator` turns a list
of items into tensors:

    input_features     (B, n_mels, T)  log-mel, padded to the longest item (T even) or to 30 s
    feature_lens       (B,)            real frames per item (100 frames = 1 s)
    decoder_input_ids  (B, L)          prompt + text tokens, padded with <|endoftext|>
    labels             (B, L)          next tokens: text + <|endoftext|>; -100 on prompt and padding
    lang_ids           (B,)            index of each item's `lang` in the configured language list
    langs, tasks, ids                  lists of str

Padding frames take the value Whisper's own front end gives zero-padded audio (the utterance's
clamp floor, max - 2 after scaling), so a padded batch sees what a 30 s window would show.
The decoder sequence is `prompt + text + [eot]` shifted by one: labels[i] = sequence[i + 1].
"""

from __future__ import annotations

import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from babelora.data.audio import HOP_LENGTH, N_FRAMES, SAMPLE_RATE, load_audio, log_mel
from babelora.data.manifest import Utterance
from babelora.data.prompts import EOT, token_id, whisper_prompt_ids
from babelora.errors import AudioError, LanguageError, ManifestError

IGNORE_INDEX = -100
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100


@dataclass(frozen=True)
class SpecAugment:
    """SpecAugment masks (Park et al. 2019, arXiv:1904.08779), applied per item when enabled.

    Masked values become the item's mean log-mel. Defaults follow the paper's LibriSpeech "LD"
    policy (2 frequency masks of up to 27 bins, 2 time masks of up to 5% of the frames).
    """

    enabled: bool = False
    freq_masks: int = 2  # number of frequency masks
    freq_width: int = 27  # widest frequency mask, in mel bins
    time_masks: int = 2  # number of time masks
    time_width: float = 0.05  # widest time mask, as a fraction of the item's frames

    def __call__(self, feats: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Masked copy of one item's features (n_mels, frames)."""
        feats = feats.clone()
        n_mels, frames = feats.shape
        fill = feats.mean()
        for _ in range(self.freq_masks):
            width = int(torch.randint(0, self.freq_width + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(1, n_mels - width + 1), (1,), generator=generator))
            feats[start : start + width, :] = fill
        max_t = int(self.time_width * frames)
        for _ in range(self.time_masks):
            width = int(torch.randint(0, max_t + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(1, frames - width + 1), (1,), generator=generator))
            feats[:, start : start + width] = fill
        return feats


class SpeechDataset(torch.utils.data.Dataset):
    """Utterances with lazily computed log-mel features.

    Index with an int, or with `(index, pad_seconds)` as `DurationBatchSampler(pad_to_global=True)`
    yields, to ask the collator to pad to at least `pad_seconds`.
    """

    def __init__(
        self,
        utts: list[Utterance],
        n_mels: int = 80,
        feature_cache: str | Path | None = None,
    ) -> None:
        self.utts = utts
        self.n_mels = n_mels
        self.feature_cache = Path(feature_cache) if feature_cache else None

    def __len__(self) -> int:
        return len(self.utts)

    def _cache_path(self, utt: Utterance) -> Path | None:
        if self.feature_cache is None:
            return None
        try:
            st = os.stat(utt.audio_filepath)
        except OSError:
            return None
        key = f"{utt.audio_filepath}|{st.st_mtime_ns}|{st.st_size}|{self.n_mels}"
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()
        return self.feature_cache / digest[:2] / f"{digest}.safetensors"

    def features(self, utt: Utterance) -> torch.Tensor:
        """Log-mel (n_mels, frames) of one utterance, from the cache when present."""
        from safetensors.torch import load_file, save_file

        path = self._cache_path(utt)
        if path is not None and path.is_file():
            return load_file(str(path))["features"]
        feats = log_mel(load_audio(utt.audio_filepath), n_mels=self.n_mels)
        if feats.shape[-1] > N_FRAMES:
            raise AudioError(
                f"{utt.audio_filepath}: audio is {feats.shape[-1] / FRAMES_PER_SECOND:.1f} s, "
                f"longer than Whisper's 30 s window (utterance {utt.id!r})"
            )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            save_file({"features": feats.contiguous()}, str(tmp))
            os.replace(tmp, path)
        return feats

    def __getitem__(self, key: int | tuple[int, float]) -> dict[str, Any]:
        index, pad_seconds = key if isinstance(key, tuple) else (key, 0.0)
        utt = self.utts[index]
        return {"features": self.features(utt), "utt": utt, "pad_seconds": pad_seconds}


class WhisperCollator:
    """Items from `SpeechDataset` -> a batch dict (see module docstring).

    Args:
        tokenizer: a Whisper tokenizer (transformers).
        languages: the configured language list; `lang_ids` index into it.
        prompt_style: `multilingual` or `english` (see `babelora.data.prompts`).
        pad_to_30s: pad every batch to 3000 frames (the released Whisper encoder needs it).
        min_input_seconds: pad every batch to at least this long (match the decoder's setting,
            so training and inference show the encoder the same amount of padding).
        max_target_tokens: decoder length limit (Whisper: 448); longer items raise ManifestError.
        spec_augment: masks applied to training features (off by default).
        seed: with the epoch and utterance id, seeds SpecAugment (reproducible across workers).
        text_leading_space: prefix the text with a space, as Whisper's own outputs begin.
    """

    def __init__(
        self,
        tokenizer: Any,
        languages: list[str] | tuple[str, ...],
        prompt_style: str = "multilingual",
        pad_to_30s: bool = False,
        min_input_seconds: float = 0.0,
        max_target_tokens: int = 448,
        spec_augment: SpecAugment | None = None,
        seed: int = 0,
        text_leading_space: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.languages = list(languages)
        self.lang_index = {lang: i for i, lang in enumerate(self.languages)}
        self.prompt_style = prompt_style
        self.pad_to_30s = pad_to_30s
        self.min_frames = int(min_input_seconds * FRAMES_PER_SECOND)
        self.max_target_tokens = max_target_tokens
        self.spec_augment = spec_augment if spec_augment and spec_augment.enabled else None
        self.seed = seed
        self.text_leading_space = text_leading_space
        self.eot_id = token_id(tokenizer, EOT)
        self.epoch = 0
        self._prompt_cache: dict[tuple, list[int]] = {}

    def set_epoch(self, epoch: int) -> None:
        """Changes SpecAugment's masks per epoch (DataLoader workers copy this at each epoch)."""
        self.epoch = epoch

    def prompt_ids(self, utt: Utterance) -> list[int]:
        key = (utt.lang, utt.task, utt.target_lang)
        if key not in self._prompt_cache:
            self._prompt_cache[key] = whisper_prompt_ids(
                self.tokenizer, utt.lang, utt.task, utt.target_lang, self.prompt_style
            )
        return self._prompt_cache[key]

    def text_ids(self, utt: Utterance) -> list[int]:
        text = utt.reference.strip()
        if self.text_leading_space and text:
            text = " " + text
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def token_sequence(self, utt: Utterance) -> tuple[list[int], int]:
        """(prompt + text + [eot], prompt length), checked against `max_target_tokens`."""
        prompt = self.prompt_ids(utt)
        seq = prompt + self.text_ids(utt) + [self.eot_id]
        if len(seq) - 1 > self.max_target_tokens:
            raise ManifestError(
                f"utterance {utt.id!r}: {len(seq) - 1} decoder tokens exceed the limit of "
                f"{self.max_target_tokens}"
            )
        return seq, len(prompt)

    def _augment(self, feats: torch.Tensor, utt: Utterance) -> torch.Tensor:
        assert self.spec_augment is not None
        gen = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch * 7919 + zlib.crc32(utt.id.encode())) % 2**63
        )
        return self.spec_augment(feats, gen)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        utts: list[Utterance] = [it["utt"] for it in items]
        feats = [it["features"] for it in items]
        if self.spec_augment is not None:
            feats = [self._augment(f, u) for f, u in zip(feats, utts)]
        lens = [int(f.shape[-1]) for f in feats]
        if self.pad_to_30s:
            frames = N_FRAMES
        else:
            want = max(math.floor(it.get("pad_seconds", 0.0) * FRAMES_PER_SECOND) for it in items)
            frames = min(N_FRAMES, max(max(lens), want, self.min_frames))
            frames += frames % 2  # the encoder's second conv has stride 2
        if max(lens) > frames:
            raise AudioError(
                f"utterance {utts[lens.index(max(lens))].id!r} exceeds {frames} frames"
            )
        n_mels = feats[0].shape[0]
        input_features = torch.empty(len(items), n_mels, frames, dtype=torch.float32)
        for b, f in enumerate(feats):
            input_features[b, :, : f.shape[-1]] = f
            input_features[b, :, f.shape[-1] :] = f.max() - 2.0  # Whisper's value for silence

        return {
            "input_features": input_features,
            "feature_lens": torch.tensor(lens, dtype=torch.long),
            **self.targets(utts),
        }

    def targets(self, utts: list[Utterance]) -> dict[str, Any]:
        """The decoder side of a batch: decoder_input_ids, labels, lang_ids, langs, tasks, ids
        (shared with collators of other encoder inputs, e.g. cached encoder states)."""
        seqs = [self.token_sequence(u) for u in utts]
        length = max(len(s) for s, _ in seqs) - 1
        decoder_input_ids = torch.full((len(utts), length), self.eot_id, dtype=torch.long)
        labels = torch.full((len(utts), length), IGNORE_INDEX, dtype=torch.long)
        for b, (seq, n_prompt) in enumerate(seqs):
            seq_t = torch.tensor(seq, dtype=torch.long)
            decoder_input_ids[b, : len(seq) - 1] = seq_t[:-1]
            labels[b, n_prompt - 1 : len(seq) - 1] = seq_t[n_prompt:]

        lang_ids = []
        for u in utts:
            if u.lang not in self.lang_index:
                raise LanguageError(
                    f"utterance {u.id!r} has language {u.lang!r}, not in the configured "
                    f"languages {self.languages}"
                )
            lang_ids.append(self.lang_index[u.lang])
        return {
            "decoder_input_ids": decoder_input_ids,
            "labels": labels,
            "lang_ids": torch.tensor(lang_ids, dtype=torch.long),
            "langs": [u.lang for u in utts],
            "tasks": [u.task for u in utts],
            "ids": [u.id for u in utts],
        }


def audio_seconds(batch: dict[str, Any]) -> float:
    """Seconds of real audio in a batch (from `feature_lens`)."""
    return float(batch["feature_lens"].sum()) / FRAMES_PER_SECOND
