"""Which caches a run uses (encoder states, log-mel features, or none) and why, decided once.

`plan_caches` reads `encoder_cache` (auto | on | off), `encoder_cache_dtype`, `cache_dir` and
`data.feature_cache` against what the recipe trains (train/encoder_cache.py lists what rules the
encoder-state cache out); `fill_encoder_cache` encodes this rank's share of the utterances that
have no valid entry yet. The decision and the trained parts go into the run's `run_info.json`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from babelora.config import cache_dir
from babelora.data.collate import FRAMES_PER_SECOND
from babelora.data.manifest import Utterance
from babelora.errors import ConfigError
from babelora.train.cache_store import clean_temporaries
from babelora.train.config import TrainConfig
from babelora.train.encoder_cache import (
    EncoderStateStore,
    InputPolicy,
    audio_digests,
    cache_blockers,
    encoder_key,
    fill,
    whisper_encoder,
)
from babelora.train.feature_cache import FeatureStore

log = logging.getLogger("babelora.train")


@dataclass
class Caches:
    """Where a run's items come from: cached encoder states, cached features, or neither."""

    encoder: EncoderStateStore | None = None
    features: FeatureStore | None = None
    info: dict[str, Any] = field(default_factory=dict)  # the decision, for run_info.json
    digests: dict[str, str] = field(default_factory=dict)  # audio path -> content hash

    def digests_of(self, utts: list[Utterance]) -> list[str]:
        todo = list(
            {u.audio_filepath: u for u in utts if u.audio_filepath not in self.digests}.values()
        )
        self.digests.update(zip((u.audio_filepath for u in todo), audio_digests(todo)))
        return [self.digests[u.audio_filepath] for u in utts]


def cache_root(cfg: TrainConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else cache_dir() / "train"


def plan_caches(cfg: TrainConfig, recipe: Any, device: torch.device, precision: str) -> Caches:
    """Decide the run's caches (ConfigError when `encoder_cache: on` cannot be honoured)."""
    root = cache_root(cfg)
    blockers = cache_blockers(
        recipe.model, recipe.accepts_encoder_states, cfg.data.spec_augment.enabled
    )
    if cfg.encoder_cache == "on" and blockers:
        raise ConfigError(
            f"encoder_cache: on, but the encoder states cannot be cached: {blockers[0]}"
        )
    caches = Caches()
    if cfg.encoder_cache != "off" and not blockers:
        encoder = whisper_encoder(recipe.model)
        policy = InputPolicy(
            cfg.data.pad_to_30s, int(cfg.data.min_input_seconds * FRAMES_PER_SECOND)
        )
        dtype = getattr(torch, cfg.encoder_cache_dtype)
        key = encoder_key(encoder, f"{device.type}-{precision}")
        caches.encoder = EncoderStateStore(root, key, policy, dtype)
        caches.info["encoder_cache"] = {
            "used": True,
            "folder": str(caches.encoder.folder),
            "dtype": cfg.encoder_cache_dtype,
            "policy": policy.tag,
        }
    else:
        why = "encoder_cache: off" if cfg.encoder_cache == "off" else blockers[0]
        caches.info["encoder_cache"] = {"used": False, "reason": why}
        if cfg.data.feature_cache:
            folder = root if cfg.data.feature_cache == "auto" else Path(cfg.data.feature_cache)
            caches.features = FeatureStore(folder, recipe.n_mels)
    caches.info["feature_cache"] = None if caches.features is None else str(caches.features.folder)
    return caches


def fill_encoder_cache(
    caches: Caches, utts: list[Utterance], model: torch.nn.Module, n_mels: int, acc: Any
) -> None:
    """Encode this rank's share of the utterances without a valid entry (collective)."""
    store = caches.encoder
    if store is None:
        return
    if acc.is_main_process:
        clean_temporaries(store.folder)
    acc.wait_for_everyone()
    digests = caches.digests_of(utts)
    mine = set(sorted(set(digests))[acc.process_index :: acc.num_processes])
    pairs = [(u, d) for u, d in zip(utts, digests) if d in mine]
    stats = fill(
        store,
        [u for u, _ in pairs],
        [d for _, d in pairs],
        whisper_encoder(model),
        n_mels,
        acc.device,
        acc.autocast,
    )
    acc.wait_for_everyone()
    caches.info["encoder_cache"].update(
        hits=stats.hits, encoded=stats.encoded, fill_seconds=round(stats.seconds, 2)
    )
    log.info(
        "encoder cache %s: %d entries reused, %d encoded in %.1f s",
        store.folder,
        stats.hits,
        stats.encoded,
        stats.seconds,
    )
