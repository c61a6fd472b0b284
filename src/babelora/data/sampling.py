"""Batches of utterances: language-balanced with a temperature, bucketed by duration, sharded.

One epoch is planned from (seed, epoch) alone, so every rank builds the same plan and a run can
resume at any batch:

1. **Language quotas.** Each language gets `round(N * p_lang)` of the epoch's N draws, with
   p_lang ∝ n_lang^(1/T) (temperature sampling as in multilingual MT/ASR: T = 1 keeps the natural
   proportions and uses every utterance exactly once; T → ∞ is uniform over languages). A
   language drawn more often than it has utterances cycles through fresh permutations of them; one
   drawn less often gets a new random subset each epoch.
2. **Duration buckets.** The shuffled draws are cut into pools of `sort_pool` items; each pool is
   sorted by duration and packed greedily into *global* batches whose cost stays within
   `batch_seconds` (cost `padded` = items x longest duration, what the padded batch computes;
   `sum` = total audio). An item longer than the budget forms a batch of its own. Batch order is
   then shuffled.
3. **Sharding.** Each global batch holds at least `min_batch_items` items (default: the number
   of ranks R; the budget may be exceeded to guarantee it) and rank r takes items r, r + R, ...
   of the batch sorted by duration. The plan depends on `min_batch_items`, not on R, so with the
   same `min_batch_items` one process and R processes compute exactly the same global batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from babelora.errors import ConfigError

BudgetMode = Literal["padded", "sum"]


def language_probabilities(counts: dict[str, int], temperature: float) -> dict[str, float]:
    """p_lang ∝ n_lang^(1/T) over the languages with at least one utterance."""
    if temperature <= 0:
        raise ConfigError(f"lang_temperature must be > 0, got {temperature}")
    weights = {lang: n ** (1.0 / temperature) for lang, n in counts.items() if n > 0}
    total = sum(weights.values())
    return {lang: w / total for lang, w in weights.items()}


def language_quotas(counts: dict[str, int], temperature: float, total: int) -> dict[str, int]:
    """Integer draws per language summing to `total` (largest-remainder rounding of total * p)."""
    probs = language_probabilities(counts, temperature)
    exact = {lang: total * p for lang, p in probs.items()}
    quotas = {lang: math.floor(x) for lang, x in exact.items()}
    order = sorted(exact, key=lambda lang: (-(exact[lang] - quotas[lang]), lang))
    for lang in order[: total - sum(quotas.values())]:
        quotas[lang] += 1
    return quotas


@dataclass
class SamplerState:
    """Where the sampler stands: the epoch and the number of global batches already consumed."""

    epoch: int = 0
    position: int = 0


class DurationBatchSampler:
    """Yields this rank's share of each global batch (a list of dataset indices).

    Args:
        durations: seconds per item (from the manifest).
        langs: language per item (for temperature sampling).
        batch_seconds: budget per *global* batch, summed over ranks and counted as `budget`.
        lang_temperature: T in p_lang ∝ n_lang^(1/T); 1 = natural proportions.
        seed: with the epoch number, fixes the whole plan.
        shuffle: False gives a fixed order (items sorted by duration, every item once): for eval.
        budget: `padded` (items x longest) or `sum` (total seconds).
        max_batch_items: optional cap on items per global batch.
        min_batch_items: smallest global batch (default and minimum: `num_replicas`); set it to
            the largest world size you use to get identical batches on any number of processes.
        sort_pool: items sorted together before packing (larger: less padding, less randomness).
        num_replicas, rank: data-parallel world size and this process's rank.
        pad_to_global: yield `(index, longest seconds in the global batch)` pairs instead of bare
            indices, so the collator can pad every rank to the same length as a single process.
    """

    def __init__(
        self,
        durations: Sequence[float],
        langs: Sequence[str],
        batch_seconds: float,
        lang_temperature: float = 1.0,
        seed: int = 0,
        shuffle: bool = True,
        budget: BudgetMode = "padded",
        max_batch_items: int | None = None,
        min_batch_items: int | None = None,
        sort_pool: int = 2000,
        num_replicas: int = 1,
        rank: int = 0,
        pad_to_global: bool = False,
    ) -> None:
        if len(durations) != len(langs):
            raise ValueError("durations and langs must have the same length")
        if batch_seconds <= 0:
            raise ConfigError(f"batch_seconds must be > 0, got {batch_seconds}")
        if budget not in ("padded", "sum"):
            raise ConfigError(f"budget must be 'padded' or 'sum', got {budget!r}")
        min_items = num_replicas if min_batch_items is None else min_batch_items
        if min_items < num_replicas:
            raise ConfigError(
                f"min_batch_items ({min_items}) must be >= the number of processes ({num_replicas})"
            )
        if max_batch_items is not None and max_batch_items < min_items:
            raise ConfigError(
                f"max_batch_items ({max_batch_items}) must be >= min_batch_items / the number of "
                f"processes ({min_items})"
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        if len(durations) < min_items:
            raise ConfigError(
                f"{len(durations)} utterances cannot fill a batch of {min_items} "
                f"(min_batch_items / number of processes)"
            )
        if sort_pool < 1:
            raise ConfigError(f"sort_pool must be >= 1, got {sort_pool}")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.langs = list(langs)
        self.batch_seconds = float(batch_seconds)
        self.lang_temperature = float(lang_temperature)
        language_probabilities({"x": 1}, self.lang_temperature)  # validates T
        self.seed = int(seed)
        self.shuffle = shuffle
        self.budget = budget
        self.max_batch_items = max_batch_items
        self.min_batch_items = min_items
        self.sort_pool = sort_pool
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad_to_global = pad_to_global
        self.state = SamplerState()
        self._plan_cache: tuple[int, list[list[int]]] | None = None

    # -- planning -----------------------------------------------------------------------------
    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))

    def epoch_items(self, epoch: int) -> list[int]:
        """The epoch's draws (item indices, with repeats when a language is upsampled)."""
        rng = self._rng(epoch)
        by_lang: dict[str, list[int]] = {}
        for i, lang in enumerate(self.langs):
            by_lang.setdefault(lang, []).append(i)
        if not self.shuffle:
            return list(range(len(self.langs)))
        counts = {lang: len(idx) for lang, idx in sorted(by_lang.items())}
        quotas = language_quotas(counts, self.lang_temperature, len(self.langs))
        draws: list[int] = []
        for lang in sorted(by_lang):
            pool = np.asarray(by_lang[lang])
            need = quotas.get(lang, 0)
            cycles = [pool[rng.permutation(len(pool))] for _ in range(-(-need // len(pool)))]
            draws.extend(np.concatenate(cycles)[:need].tolist() if cycles else [])
        return [draws[i] for i in rng.permutation(len(draws))]

    def _cost(self, n: int, longest: float, total: float) -> float:
        return n * longest if self.budget == "padded" else total

    def _pack(self, items: list[int]) -> list[list[int]]:
        """Greedy packing of duration-sorted items into global batches within the budget."""
        batches: list[list[int]] = []
        cur: list[int] = []
        longest = total = 0.0
        for i in items:
            d = float(self.durations[i])
            n_longest, n_total = max(longest, d), total + d
            over = self._cost(len(cur) + 1, n_longest, n_total) > self.batch_seconds
            full = self.max_batch_items is not None and len(cur) >= self.max_batch_items
            if cur and (over or full) and len(cur) >= self.min_batch_items:
                batches.append(cur)
                cur, n_longest, n_total = [], d, d
            cur.append(i)
            longest, total = n_longest, n_total
        if cur:
            if len(cur) < self.min_batch_items and batches:
                batches[-1].extend(cur)  # too few left for every rank: join the previous batch
            else:
                batches.append(cur)
        return batches

    def _merge_small(self, batches: list[list[int]]) -> list[list[int]]:
        """Join batches smaller than `min_batch_items` (a pool's tail) into their neighbour."""
        merged: list[list[int]] = []
        small = self.min_batch_items
        for batch in batches:
            if merged and (len(batch) < small or len(merged[-1]) < small):
                merged[-1] = merged[-1] + batch
            else:
                merged.append(batch)
        return merged

    def plan(self, epoch: int) -> list[list[int]]:
        """All global batches of `epoch`, in order (identical on every rank)."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        items = self.epoch_items(epoch)
        rng = self._rng(epoch + 1_000_003)  # an independent stream for the batch order
        batches: list[list[int]] = []
        if not self.shuffle:
            items = sorted(items, key=lambda i: (self.durations[i], i))
            batches = self._pack(items)
        else:
            for start in range(0, len(items), self.sort_pool):
                pool = items[start : start + self.sort_pool]
                pool = sorted(pool, key=lambda i: (self.durations[i], i))
                batches.extend(self._pack(pool))
            batches = self._merge_small(batches)
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._plan_cache = (epoch, batches)
        return batches

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's share of a global batch: every R-th item of the batch sorted by duration."""
        ordered = sorted(batch, key=lambda i: (self.durations[i], i))
        return ordered[self.rank :: self.num_replicas]

    # -- iteration and resume -----------------------------------------------------------------
    def set_epoch(self, epoch: int, position: int = 0) -> None:
        """Start the next iteration at global batch `position` of `epoch` (the training loop
        counts the batches it consumed and saves them with each checkpoint)."""
        self.state = SamplerState(epoch, position)

    def __len__(self) -> int:
        """Global batches left in the current epoch from the current position."""
        return max(0, len(self.plan(self.state.epoch)) - self.state.position)

    def __iter__(self) -> Iterator[list]:
        batches = self.plan(self.state.epoch)
        for batch in batches[self.state.position :]:
            share = self.shard(batch)
            if self.pad_to_global:
                longest = float(max(self.durations[i] for i in batch))
                yield [(i, longest) for i in share]
            else:
                yield share
