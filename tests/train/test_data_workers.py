"""DataLoader workers yield exactly the batches of the in-process path (issue 17 item 2), for
live features (with SpecAugment, seeded per utterance), cached features and cached states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference.corpus import base_config

from babelora.config import build_dataclass
from babelora.methods.registry import build_recipe
from babelora.train.caches import fill_encoder_cache, plan_caches
from babelora.train.config import TrainConfig
from babelora.train.data import build_run_data


class _Acc:
    """The bits of an Accelerator that the cache fill uses (one process, CPU)."""

    device = torch.device("cpu")
    is_main_process = True
    process_index = 0
    num_processes = 1
    autocast = None

    def wait_for_everyone(self) -> None:
        pass


def batches(cfg: TrainConfig, epochs: int = 2) -> list[dict]:
    recipe = build_recipe(cfg)
    caches = plan_caches(cfg, recipe, torch.device("cpu"), "no")
    data = build_run_data(cfg, recipe, 1, 0, caches)
    fill_encoder_cache(caches, data.train_utts, recipe.model, recipe.n_mels, _Acc())
    out = []
    for epoch in range(epochs):
        data.train_sampler.set_epoch(epoch, 0)
        data.train_collator.set_epoch(epoch)
        out.extend(data.train_loader)
    return out


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 2
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if torch.is_tensor(x[k]):
                assert torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


CASES = {
    "live + SpecAugment": {"data.spec_augment": {"enabled": True}},
    "feature cache": {"data.feature_cache": "auto"},
    "encoder states": {"recipe.params": {"rank": 4, "parts": ["decoder"]}},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_workers_yield_the_in_process_batches(corpus_dir, tmp_path, case):
    def cfg(workers: int) -> TrainConfig:
        extra = {**CASES[case], "data.num_workers": workers, "cache_dir": str(tmp_path / "c")}
        return build_dataclass(TrainConfig, base_config(corpus_dir, tmp_path / "run", **extra))

    inline = batches(cfg(0))
    assert ("encoder_states" in inline[0]) == (case == "encoder states")
    assert_same(batches(cfg(2)), inline)
    if case == "feature cache":
        assert any(Path(tmp_path / "c" / "features").rglob("*.safetensors"))
