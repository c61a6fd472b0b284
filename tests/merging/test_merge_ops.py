"""Merge maths: parity with PEFT's merge_utils, LoRS against a dense reference, conventions."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from lors_reference import keep_top_reference, lors_reference, lowrank_reference
from peft.utils import merge_utils as peft_ops

from babelora.merging import ops
from babelora.merging.ops import MERGE_METHODS, TensorContext


def _tasks(n=3, shape=(6, 10), seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(n)]


WEIGHTS = torch.tensor([1.0, 0.5, 2.0])


@pytest.mark.filterwarnings("ignore:The density")  # PEFT warns that density 1 prunes nothing
@pytest.mark.parametrize("density", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("sign", ["total", "frequency"])
def test_ties_equals_peft(density, sign):
    tasks = _tasks()
    ours = ops.ties(tasks, WEIGHTS, density, sign)
    theirs = peft_ops.ties(tasks, WEIGHTS, density, sign)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)  # same fp32 ops, order


@pytest.mark.parametrize("density", [0.3, 0.9])
def test_dare_equals_peft_with_the_same_rng(density):
    tasks = _tasks()
    torch.manual_seed(7)  # PEFT draws from the global generator, one task after the other
    theirs = peft_ops.dare_linear(tasks, WEIGHTS, density)
    ours = ops.dare(tasks, WEIGHTS, density, torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    torch.manual_seed(7)
    theirs = peft_ops.dare_ties(tasks, WEIGHTS, density, "total")
    ours = ops.dare_ties(tasks, WEIGHTS, density, "total", torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_dare_is_seeded_and_rescales():
    tasks = _tasks(n=2)
    w = torch.ones(2)
    first = ops.dare(tasks, w, 0.5, [torch.Generator().manual_seed(s) for s in (1, 2)])
    again = ops.dare(tasks, w, 0.5, [torch.Generator().manual_seed(s) for s in (1, 2)])
    other = ops.dare(tasks, w, 0.5, [torch.Generator().manual_seed(s) for s in (3, 4)])
    assert torch.equal(first, again) and not torch.equal(first, other)
    one = ops.random_drop(tasks[0], 0.25, torch.Generator().manual_seed(0))
    kept = one != 0
    torch.testing.assert_close(one[kept], tasks[0][kept] / 0.25)  # survivors rescaled by 1/(1-p)


def test_task_arithmetic_and_magnitude_prune_equal_peft():
    tasks = _tasks()
    torch.testing.assert_close(
        ops.task_arithmetic(tasks, WEIGHTS), peft_ops.task_arithmetic(tasks, WEIGHTS)
    )
    params = ops.MagnitudePruneParams(density=0.4, targets=("*",))
    ctx = TensorContext("w", targeted=True)
    ours = MERGE_METHODS["magnitude_prune"].combine(tasks, WEIGHTS, params, ctx)
    torch.testing.assert_close(ours, peft_ops.magnitude_prune(tasks, WEIGHTS, 0.4))


def test_ties_convention_is_the_mean_of_agreeing_entries():
    # density 1 and agreeing signs: the disjoint mean divides by the number of agreeing inputs
    # (PEFT's disjoint_merge); task arithmetic sums. Entry 2: signs disagree (+3*1 vs -1*1,
    # elected + by the unweighted sum 3 - 1 > 0): only the first input counts.
    a = torch.tensor([1.0, 2.0, 3.0])
    b = torch.tensor([3.0, 4.0, -1.0])
    w = torch.tensor([1.0, 1.0])
    assert torch.equal(ops.ties([a, b], w, 1.0), torch.tensor([2.0, 3.0, 3.0]))
    assert torch.equal(ops.task_arithmetic([a, b], w), torch.tensor([4.0, 6.0, 2.0]))
    assert torch.equal(ops.average([a, b], w), torch.tensor([2.0, 3.0, 1.0]))


def test_pruned_entries_do_not_vote_or_count():
    a = torch.tensor([0.0, 5.0])
    b = torch.tensor([-2.0, 1.0])
    out = ops.ties([a, b], torch.ones(2), 1.0)
    assert torch.equal(out, torch.tensor([-2.0, 3.0]))


@pytest.mark.parametrize("shape", [(8, 8), (6, 12), (12, 5)])
@pytest.mark.parametrize("rank,density", [(1, 0.2), (3, 0.5), (2, 0.0)])
def test_lors_equals_dense_reference(shape, rank, density):
    tasks = _tasks(shape=shape, dtype=torch.float64)
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    params = ops.LorsParams(rank=rank, density=density)
    ctx = TensorContext("x.fc1.weight", targeted=True, rank=rank)
    ours = MERGE_METHODS["lors"].combine(tasks, w, params, ctx) * 0.2
    ref = lors_reference(tasks, w.tolist(), rank, density, scale=0.2)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)  # float64; SVD round-off only


def test_ablations_equal_their_reference_parts():
    (delta,) = _tasks(n=1, shape=(9, 7), dtype=torch.float64)
    low = ops.lowrank(delta, 2)
    torch.testing.assert_close(low, lowrank_reference(delta, 2), atol=1e-10, rtol=0)
    assert torch.equal(ops.magnitude_prune(delta, 0.2), keep_top_reference(delta, 0.2))
    # the low-rank part is the best rank-r approximation: its error is the tail singular values
    s = torch.linalg.svdvals(delta)
    err = torch.linalg.matrix_norm(delta - ops.lowrank(delta, 2))
    torch.testing.assert_close(err, s[2:].square().sum().sqrt())


def test_untargeted_tensors_are_merged_raw():
    tasks = _tasks()
    params = ops.LorsParams(rank=1)
    ctx = TensorContext("x.layer_norm.weight", targeted=False, rank=1)
    out = MERGE_METHODS["lors"].combine(tasks, WEIGHTS, params, ctx)
    torch.testing.assert_close(out, ops.task_arithmetic(tasks, WEIGHTS))


def test_identity_settings_return_the_tensor_itself():
    (t,) = _tasks(n=1)
    assert ops.magnitude_prune(t, 1.0) is t
    assert ops.random_drop(t, 1.0) is t
    assert ops.lowrank(t, 6) is t
    assert ops.lors_prune(t, 1, 1.0) is t


def test_rank_resolution_follows_the_official_rule():
    assert ops.LorsParams().resolve_rank(768) == 7  # int(768 * 0.01), Whisper small
    assert ops.LorsParams().resolve_rank(64) == 1  # min 1
    assert ops.LorsParams(rank=5).resolve_rank(None) == 5
    with pytest.raises(ValueError, match="d_model"):
        ops.LorsParams().resolve_rank(None)


def test_default_lambda_per_method():
    assert MERGE_METHODS["lors"].scale(ops.LorsParams(), 5) == pytest.approx(0.2)
    assert MERGE_METHODS["ties"].scale(ops.TiesParams(), 5) == 1.0
    assert MERGE_METHODS["task_arithmetic"].scale(ops.TaskArithmeticParams(scale=0.3), 5) == 0.3


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (ops.TiesParams, {"density": 1.5}),
        (ops.DareParams, {"drop_rate": 1.0}),
        (ops.LorsParams, {"rank": 0}),
        (ops.LorsParams, {"density": -0.1}),
        (ops.SvdLowrankParams, {"rank_ratio": 0.0}),
    ],
)
def test_bad_params_are_rejected(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_merging_imports_without_transformers_or_peft():
    code = (
        "import sys; sys.modules.update(transformers=None, peft=None, accelerate=None);"
        "import babelora.merging, babelora.merging.ops; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
