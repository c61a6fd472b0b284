"""Training and dev data for a run: read and filter manifests, build datasets, samplers, loaders."""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import torch

from babelora.data.collate import SpeechDataset, WhisperCollator
from babelora.data.manifest import Utterance, read_manifest
from babelora.data.sampling import DurationBatchSampler
from babelora.errors import BabeloraError, ConfigError
from babelora.languages import check_lang
from babelora.train.caches import Caches
from babelora.train.config import TrainConfig
from babelora.train.encoder_cache import EncoderStateCollator, EncoderStateDataset
from babelora.train.feature_cache import CachedSpeechDataset

log = logging.getLogger("babelora.train")


@dataclass
class RunData:
    """Everything the loop needs about its data."""

    languages: list[str]
    train_utts: list[Utterance]
    dev_utts: list[Utterance]
    train_loader: torch.utils.data.DataLoader
    train_sampler: DurationBatchSampler
    train_collator: WhisperCollator | EncoderStateCollator
    dev_loader: torch.utils.data.DataLoader | None


def read_manifests(paths: list[str], data_root: str | None) -> list[Utterance]:
    utts: list[Utterance] = []
    for path in paths:
        utts.extend(read_manifest(path, data_root=data_root))
    return utts


def _fits(collator: WhisperCollator, utt: Utterance) -> bool:
    try:
        collator.token_sequence(utt)
    except BabeloraError:
        return False
    return True


def filter_utterances(
    utts: list[Utterance],
    cfg: TrainConfig,
    languages: list[str] | None,
    collator: WhisperCollator | None,
    split: str,
) -> list[Utterance]:
    """Keep utterances the run can use; log how many were dropped and why."""
    dropped: Counter[str] = Counter()
    kept = []
    for utt in utts:
        if utt.task not in cfg.data.tasks:
            dropped[f"task {utt.task}"] += 1
        elif languages and utt.lang not in languages:
            dropped[f"language {utt.lang}"] += 1
        elif utt.duration > cfg.data.max_duration:
            dropped[f"longer than {cfg.data.max_duration} s"] += 1
        elif not os.path.isfile(utt.audio_filepath):
            dropped["audio file missing"] += 1
        elif collator is not None and not _fits(collator, utt):
            dropped["text too long for the decoder"] += 1
        else:
            kept.append(utt)
    if dropped:
        reasons = ", ".join(f"{n} {why}" for why, n in dropped.most_common())
        log.warning(
            "%s: dropped %d of %d utterances (%s)", split, sum(dropped.values()), len(utts), reasons
        )
    return kept


def balanced_subset(utts: list[Utterance], n: int) -> list[Utterance]:
    """The first `n` utterances taken round-robin over (task, lang, output lang) groups, so a
    small dev subset still covers every language and direction."""
    groups: dict[tuple[str, str, str], list[Utterance]] = {}
    for utt in utts:
        groups.setdefault((utt.task, utt.lang, utt.output_lang), []).append(utt)
    rounds = zip_longest(*groups.values())
    return [u for row in rounds for u in row if u is not None][:n]


def make_collator(
    cfg: TrainConfig, recipe: Any, languages: list[str], train: bool
) -> WhisperCollator:
    return WhisperCollator(
        recipe.tokenizer,
        languages,
        prompt_style=recipe.prompt_style,
        pad_to_30s=cfg.data.pad_to_30s,
        min_input_seconds=cfg.data.min_input_seconds,
        max_target_tokens=recipe.max_target_tokens,
        spec_augment=cfg.data.spec_augment if train else None,
        seed=cfg.seed,
        text_leading_space=cfg.data.text_leading_space,
    )


def _loader(dataset, sampler, collator, num_workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),  # pinned host memory: non_blocking copies overlap
        prefetch_factor=2 if num_workers else None,
        # a private generator: creating an iterator must not consume the global RNG, or a
        # resumed run (new iterator mid-epoch) would draw different dropout masks
        generator=torch.Generator().manual_seed(0),
    )


def _dataset(utts: list[Utterance], recipe: Any, caches: Caches, collator: WhisperCollator):
    """(dataset, collator) of the run's input kind."""
    if caches.encoder is not None:
        data = EncoderStateDataset(utts, caches.digests_of(utts), caches.encoder)
        return data, EncoderStateCollator(collator)
    if caches.features is not None:
        return CachedSpeechDataset(utts, caches.digests_of(utts), caches.features), collator
    return SpeechDataset(utts, recipe.n_mels), collator


def build_run_data(
    cfg: TrainConfig,
    recipe: Any,
    num_replicas: int,
    rank: int,
    caches: Caches | None = None,
) -> RunData:
    """Read, filter and batch the train and dev manifests for this rank (items from `caches`:
    the encoder-state entries must be filled before the loaders are iterated)."""
    caches = caches or Caches()
    raw = read_manifests(cfg.data.train, cfg.data.data_root)
    languages = [check_lang(x) for x in cfg.data.languages]
    languages = languages or sorted({u.lang for u in raw if u.task in cfg.data.tasks})
    collator = make_collator(cfg, recipe, languages, train=True)
    train_utts = filter_utterances(raw, cfg, languages, collator, "train")
    if not train_utts:
        raise ConfigError(f"data.train: no usable utterances in {cfg.data.train}")
    sampler = DurationBatchSampler(
        [u.duration for u in train_utts],
        [u.lang for u in train_utts],
        batch_seconds=cfg.data.batch_seconds,
        lang_temperature=cfg.data.lang_temperature,
        seed=cfg.seed,
        budget=cfg.data.budget,
        max_batch_items=cfg.data.max_batch_items,
        min_batch_items=cfg.data.min_batch_items,
        sort_pool=cfg.data.sort_pool,
        num_replicas=num_replicas,
        rank=rank,
        pad_to_global=True,
    )
    dataset, batcher = _dataset(train_utts, recipe, caches, collator)
    train_loader = _loader(dataset, sampler, batcher, cfg.data.num_workers)

    dev_utts: list[Utterance] = []
    dev_loader = None
    if cfg.data.dev:
        dev_collator = make_collator(cfg, recipe, languages, train=False)
        dev_raw = read_manifests(cfg.data.dev, cfg.data.data_root)
        dev_utts = filter_utterances(dev_raw, cfg, languages, dev_collator, "dev")
        if cfg.data.dev_max_items is not None:
            dev_utts = balanced_subset(dev_utts, cfg.data.dev_max_items)
        if len(dev_utts) >= num_replicas:
            dev_sampler = DurationBatchSampler(
                [u.duration for u in dev_utts],
                [u.lang for u in dev_utts],
                batch_seconds=cfg.eval.batch_seconds or cfg.data.batch_seconds,
                shuffle=False,
                budget=cfg.data.budget,
                max_batch_items=cfg.data.max_batch_items,
                num_replicas=num_replicas,
                rank=rank,
                pad_to_global=True,
            )
            dev_set, dev_batcher = _dataset(dev_utts, recipe, caches, dev_collator)
            dev_loader = _loader(dev_set, dev_sampler, dev_batcher, cfg.data.num_workers)
        else:
            log.warning(
                "dev: %d usable utterances, fewer than processes; no dev loss", len(dev_utts)
            )
    return RunData(languages, train_utts, dev_utts, train_loader, sampler, batcher, dev_loader)
