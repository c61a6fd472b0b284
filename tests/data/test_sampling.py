"""DurationBatchSampler: budget, temperature proportions, determinism, resume, DDP shards."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from babelora.data.sampling import DurationBatchSampler, language_probabilities, language_quotas
from babelora.errors import ConfigError


def corpus(n: int = 300, seed: int = 0) -> tuple[list[float], list[str]]:
    rng = np.random.default_rng(seed)
    langs = ["de"] * (n * 2 // 3) + ["fr"] * (n // 4)
    langs += ["es"] * (n - len(langs))
    durations = rng.uniform(0.5, 12.0, size=n).round(3).tolist()
    return durations, langs


def sampler(**kw) -> DurationBatchSampler:
    durations, langs = kw.pop("data", corpus())
    kw.setdefault("batch_seconds", 40.0)
    return DurationBatchSampler(durations, langs, **kw)


def test_budget_respected_padded_and_sum():
    durations, langs = corpus()
    for budget in ("padded", "sum"):
        s = sampler(budget=budget, sort_pool=100)
        for batch in s.plan(0):
            d = [durations[i] for i in batch]
            cost = len(d) * max(d) if budget == "padded" else sum(d)
            assert cost <= 40.0 or len(batch) == 1


def test_item_longer_than_budget_is_alone():
    s = DurationBatchSampler([1.0, 50.0, 1.0, 1.0], ["de"] * 4, batch_seconds=10.0)
    plan = s.plan(0)
    assert [1] in plan
    assert sorted(i for b in plan for i in b) == [0, 1, 2, 3]


def test_max_batch_items():
    s = sampler(max_batch_items=3)
    assert max(len(b) for b in s.plan(0)) <= 3


def test_temperature_one_uses_every_item_once():
    durations, langs = corpus()
    s = sampler(lang_temperature=1.0)
    items = sorted(i for b in s.plan(0) for i in b)
    assert items == list(range(len(durations)))


def test_temperature_proportions():
    counts = {"de": 200, "fr": 75, "es": 25}
    probs = language_probabilities(counts, 2.0)
    ref = {k: v**0.5 for k, v in counts.items()}
    total = sum(ref.values())
    for lang in counts:
        assert probs[lang] == pytest.approx(ref[lang] / total)
    quotas = language_quotas(counts, 2.0, 300)
    assert sum(quotas.values()) == 300
    for lang in counts:
        assert abs(quotas[lang] - 300 * probs[lang]) < 1
    # the sampler draws exactly the quotas in an epoch
    durations, langs = corpus()
    s = sampler(lang_temperature=2.0)
    drawn = Counter(langs[i] for b in s.plan(0) for i in b)
    assert dict(drawn) == quotas
    # T -> large: nearly uniform; upsampled language cycles through all its items
    s = sampler(lang_temperature=100.0)
    drawn = Counter(langs[i] for b in s.plan(3) for i in b)
    assert max(drawn.values()) - min(drawn.values()) <= 5
    es_items = {i for b in s.plan(3) for i in b if langs[i] == "es"}
    assert len(es_items) == 25


def test_bad_temperature_is_config_error():
    with pytest.raises(ConfigError, match="lang_temperature"):
        sampler(lang_temperature=0.0)


def test_deterministic_per_seed_and_epoch():
    a, b = sampler(seed=1), sampler(seed=1)
    assert a.plan(0) == b.plan(0)
    assert a.plan(1) == b.plan(1)
    assert a.plan(0) != a.plan(1)
    assert sampler(seed=2).plan(0) != a.plan(0)


def test_resume_position():
    s = sampler(seed=3)
    full = list(s)
    s.set_epoch(0, position=5)
    assert list(s) == full[5:]
    assert len(s) == len(full) - 5
    s.set_epoch(1)
    assert list(s) != full


def test_ddp_shards_disjoint_and_cover_global_batch():
    data = corpus(n=203)
    world = 3
    single = sampler(data=data, seed=4, min_batch_items=world)
    ranks = [sampler(data=data, seed=4, num_replicas=world, rank=r) for r in range(world)]
    shards = [list(r) for r in ranks]
    plans = [r.plan(0) for r in ranks]
    assert all(p == plans[0] for p in plans)
    assert all(len(s) == len(shards[0]) for s in shards)  # every rank gets every global batch
    for step, global_batch in enumerate(plans[0]):
        parts = [shards[r][step] for r in range(world)]
        assert all(parts), "every rank gets at least one item"
        flat = [i for p in parts for i in p]
        assert len(flat) == len(set(flat))
        assert sorted(flat) == sorted(global_batch)
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    # one process with the same min_batch_items plans the very same global batches
    assert single.plan(0) == plans[0]
    assert [sorted(b) for b in single] == [sorted(b) for b in plans[0]]


def test_pad_to_global_reports_longest_of_global_batch():
    durations, langs = corpus(n=40)
    s = sampler(data=(durations, langs), num_replicas=2, rank=1, pad_to_global=True)
    for share, batch in zip(s, s.plan(0)):
        assert all(pad == max(durations[i] for i in batch) for _, pad in share)


def test_too_few_items_for_ranks():
    with pytest.raises(ConfigError, match="cannot fill"):
        DurationBatchSampler([1.0], ["de"], batch_seconds=10, num_replicas=2, rank=0)
    with pytest.raises(ConfigError, match="min_batch_items"):
        DurationBatchSampler(
            [1.0] * 4, ["de"] * 4, batch_seconds=10, num_replicas=2, min_batch_items=1
        )


def test_eval_order_fixed_and_complete():
    durations, langs = corpus(n=50)
    s = sampler(data=(durations, langs), shuffle=False, lang_temperature=3.0)
    items = [i for b in s.plan(0) for i in b]
    assert sorted(items) == list(range(50))
    assert s.plan(0) == s.plan(7)
