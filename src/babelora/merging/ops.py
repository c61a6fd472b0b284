"""Merge maths: pure functions on task tensors, plus the MERGE_METHODS registry.

A task tensor is one tensor of a task vector, tau_t = theta_t - theta_0 (fine-tuned minus base).
Every method here maps N task tensors of one shape and N input weights w_t to one merged task
tensor; the driver (`driver.py`) adds `scale * merged` to the base. No I/O, only torch.

Methods (registry names):
- `average`: sum_t w_t tau_t / sum_t w_t.
- `task_arithmetic`: sum_t w_t tau_t (Ilharco et al. 2023, arXiv:2212.04089).
- `ties`: trim each tau_t to its top-`density` entries by |.|, elect a sign per entry (sum of the
  trimmed, unweighted tensors), then the mean of the weighted entries that agree with it (TIES,
  Yadav et al. 2023, arXiv:2306.01708). Conventions are PEFT's `merge_utils.ties`.
- `dare` / `dare_ties`: drop each entry with probability `drop_rate`, rescale the survivors by
  1 / (1 - drop_rate), then sum (`dare`) or TIES sign election (`dare_ties`) (DARE, Yu et al. 2023,
  arXiv:2311.03099). Conventions are PEFT's `dare_linear` / `dare_ties`; seeded generators make
  runs repeat.
- `lors`: per task tensor, L = best rank-r approximation (truncated SVD) and S = the top-`density`
  entries by |.| of the residual tau - L; then sum_t w_t (L_t + S_t) (LoRS-Merging, Zhao et al.
  2025, arXiv:2502.17380; r = 1 % of d_model and density = 0.2 in the official code).
- `magnitude_prune`, `svd_lowrank`: the two LoRS ablations (S alone on tau, L alone).

`lors`, `magnitude_prune` and `svd_lowrank` transform only the *targeted* matrices (attention and
MLP weights by default, `targets`); every other tensor is merged as its raw task vector, as in
the official LoRS code.

Shapes: every task tensor of one call has the same shape (..); N inputs; weights (N,).
Every method maps all-zero task tensors to zero: the driver relies on it to skip tensors that
no input changed (a new method must keep this property).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

# HF Whisper names of the matrices the official LoRS code prunes (openai-whisper `attn.`/`mlp.`):
# self- and cross-attention q/k/v/out projections and both MLP weights, encoder and decoder.
# Patterns are fnmatch globs on tensor names ('re:' prefix for a regex), see recipe.match_any.
WHISPER_LORS_TARGETS = (
    "*.self_attn.q_proj.weight",
    "*.self_attn.k_proj.weight",
    "*.self_attn.v_proj.weight",
    "*.self_attn.out_proj.weight",
    "*.encoder_attn.q_proj.weight",
    "*.encoder_attn.k_proj.weight",
    "*.encoder_attn.v_proj.weight",
    "*.encoder_attn.out_proj.weight",
    "*.fc1.weight",
    "*.fc2.weight",
)


# ----------------------------------------------------------------------------- per-task transforms
def magnitude_prune(tensor: Tensor, density: float) -> Tensor:
    """Keep the k = int(density * numel) entries largest in |.|, zero the rest.

    density >= 1 returns the tensor itself (nothing pruned), as PEFT's `prune` does. The kept
    entries are copied into a zero tensor (no float mask): about 1.4 extra copies of the tensor.
    """
    if density >= 1:
        return tensor
    k = int(density * tensor.numel())
    flat = tensor.reshape(-1)
    out = torch.zeros_like(flat)
    if k > 0:
        index = torch.topk(flat.abs(), k=k, largest=True).indices
        out[index] = flat[index]
    return out.reshape(tensor.shape)


def random_drop(
    tensor: Tensor, density: float, generator: torch.Generator | None = None, rescale: bool = True
) -> Tensor:
    """DARE: keep each entry with probability `density`; rescale survivors by 1 / density.

    The mask is drawn as float32 Bernoulli(density) so that, for a given generator state, it is
    the same whatever the compute dtype (and the same draw as PEFT's `random_pruning`).
    """
    if density >= 1:
        return tensor
    probs = torch.full(tensor.shape, density, dtype=torch.float32, device=tensor.device)
    pruned = torch.bernoulli(probs, generator=generator).to(tensor.dtype)
    del probs
    pruned.mul_(tensor)  # the mask times tau, in place: one live copy besides the input
    return pruned.div_(density) if rescale else pruned


def lowrank(tensor: Tensor, rank: int) -> Tensor:
    """Best rank-`rank` approximation U_r diag(S_r) V_r^T (Eckart-Young), via a thin SVD.

    Tensors with more than 2 dims are flattened to (shape[0], -1) and back. If rank >= the
    matrix rank bound min(shape), the tensor itself is returned (nothing is truncated).
    """
    matrix = tensor.reshape(tensor.shape[0], -1)
    if rank >= min(matrix.shape):
        return tensor
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    approx = (u[:, :rank] * s[:rank]) @ vh[:rank]  # (out, r) * (r,) @ (r, in)
    return approx.reshape(tensor.shape)


def lors_prune(tensor: Tensor, rank: int, density: float) -> Tensor:
    """LoRS task tensor: L + S with L = lowrank(tau, rank), S = magnitude_prune(tau - L, density).

    With density >= 1 nothing is pruned and tau itself is returned (L + (tau - L) = tau).
    """
    if density >= 1:
        return tensor
    low = lowrank(tensor, rank)
    if low is tensor:  # full rank kept: the residual is zero
        return tensor
    return low + magnitude_prune(tensor - low, density)


# ----------------------------------------------------------------------------- combiners
def task_arithmetic(task_tensors: Sequence[Tensor], weights: Tensor) -> Tensor:
    """sum_t w_t tau_t, accumulated in place (no (N, ..) stack: one extra tensor of memory)."""
    total = torch.zeros_like(task_tensors[0])
    for tensor, weight in zip(task_tensors, weights.tolist()):
        total.add_(tensor, alpha=weight)
    return total


def average(task_tensors: Sequence[Tensor], weights: Tensor) -> Tensor:
    """Weighted mean sum_t w_t tau_t / sum_t w_t."""
    total = float(weights.sum())
    if total == 0:
        raise ValueError("average: the input weights sum to 0")
    return task_arithmetic(task_tensors, weights).div_(total)  # a fresh tensor: in place


def majority_sign_mask(stacked: Tensor, method: Literal["total", "frequency"] = "total") -> Tensor:
    """(N, ..) bool mask of entries whose sign equals the elected sign (ties elect +).

    'total' elects the sign of sum_t tau_t, 'frequency' the sign held by most tensors. Zeros
    never agree, so pruned entries do not count in the disjoint mean. (Reference form on a
    stacked tensor; `ties` computes the same without stacking.)
    """
    sign = stacked.sign()
    votes = stacked.sum(dim=0) if method == "total" else sign.sum(dim=0)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(sign.dtype)
    return sign == elected


def disjoint_mean(weighted: Tensor, mask: Tensor) -> Tensor:
    """Mean over the agreeing entries: sum_t m_t x_t / max(1, sum_t m_t)."""
    kept = (weighted * mask).sum(dim=0)
    count = mask.sum(dim=0).to(weighted.dtype)
    return kept / torch.clamp(count, min=1.0)


def elect_and_mean(
    pruned: Sequence[Tensor],
    weights: Tensor,
    majority_sign: Literal["total", "frequency"] = "total",
) -> Tensor:
    """disjoint_mean(stack(pruned) * w, majority_sign_mask(stack(pruned))) without the (N, ..)
    stacks: one pass accumulates the votes, a second the agreeing weighted entries and their
    count, so memory is 3 tensors plus one temporary instead of about 5 N."""
    votes = torch.zeros_like(pruned[0])
    for tensor in pruned:
        votes.add_(tensor if majority_sign == "total" else tensor.sign())
    positive = votes >= 0  # elected sign +1 (ties elect +), else -1
    del votes
    kept = torch.zeros_like(pruned[0])
    count = torch.zeros_like(pruned[0])
    w = weights.to(pruned[0].dtype).to(pruned[0].device)
    for i, tensor in enumerate(pruned):
        agree = torch.where(positive, tensor > 0, tensor < 0)  # zeros never agree
        kept.add_((tensor * w[i]).mul_(agree))
        count.add_(agree)
        del agree
    return kept.div_(count.clamp_(min=1.0))


def ties(
    task_tensors: Sequence[Tensor],
    weights: Tensor,
    density: float,
    majority_sign: Literal["total", "frequency"] = "total",
) -> Tensor:
    """TIES: trim to top-`density`, elect signs on the trimmed (unweighted) tensors, disjoint mean
    of the weighted tensors. Note the mean: with agreeing signs and density 1 this is the
    weighted *mean*, sum_t w_t tau_t / N, not the sum."""
    trimmed = [magnitude_prune(t, density) for t in task_tensors]
    return elect_and_mean(trimmed, weights, majority_sign)


def _generators(
    generators: torch.Generator | Sequence[torch.Generator] | None, n: int
) -> list[torch.Generator | None]:
    if generators is None or isinstance(generators, torch.Generator):
        return [generators] * n  # one generator consumed in order, as PEFT's global RNG
    if len(generators) != n:
        raise ValueError(f"expected {n} generators, got {len(generators)}")
    return list(generators)


def dare(
    task_tensors: Sequence[Tensor],
    weights: Tensor,
    density: float,
    generators: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Tensor:
    """DARE (linear): random drop with rescale on each tau_t, then sum_t w_t tau_t."""
    gens = _generators(generators, len(task_tensors))
    total = torch.zeros_like(task_tensors[0])
    for tensor, weight, gen in zip(task_tensors, weights.tolist(), gens):
        total.add_(random_drop(tensor, density, gen), alpha=weight)  # one dropped copy at a time
    return total


def dare_ties(
    task_tensors: Sequence[Tensor],
    weights: Tensor,
    density: float,
    majority_sign: Literal["total", "frequency"] = "total",
    generators: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Tensor:
    """DARE drop-and-rescale followed by TIES sign election and disjoint mean."""
    gens = _generators(generators, len(task_tensors))
    dropped = [random_drop(t, density, g) for t, g in zip(task_tensors, gens)]
    return elect_and_mean(dropped, weights, majority_sign)


# ----------------------------------------------------------------------------- method params
def _check_fraction(name: str, value: float, low_open: bool = False) -> None:
    if not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value}")


@dataclass(frozen=True)
class AverageParams:
    scale: float | None = None  # multiplies the weighted mean; null = 1.0


@dataclass(frozen=True)
class TaskArithmeticParams:
    scale: float | None = None  # lambda; null = 1/N (LoRS paper: 0.2 for N = 5)


@dataclass(frozen=True)
class TiesParams:
    density: float = 0.2  # kept fraction per task tensor (TIES paper: top-20 %)
    majority_sign: Literal["total", "frequency"] = "total"  # sign election rule (PEFT's default)
    scale: float | None = (
        None  # lambda on the disjoint mean; null = 1.0 (the mean already averages)
    )

    def __post_init__(self) -> None:
        _check_fraction("density", self.density)


@dataclass(frozen=True)
class DareParams:
    # dropped fraction p; survivors rescaled by 1/(1-p). DARE reports p up to 0.9 on LLM deltas;
    # mergekit users report 0.34-0.5 works better on small models, hence 0.5.
    drop_rate: float = 0.5
    scale: float | None = None  # lambda; null = 1/N

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")


@dataclass(frozen=True)
class DareTiesParams:
    drop_rate: float = 0.5  # see DareParams
    majority_sign: Literal["total", "frequency"] = "total"
    scale: float | None = None  # lambda on the disjoint mean; null = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")


@dataclass(frozen=True)
class RankParams:
    """How the SVD rank r is chosen: `rank` if set, else max(1, int(rank_ratio * d_model))."""

    rank: int | None = None  # explicit r for every targeted matrix
    rank_ratio: float = 0.01  # official LoRS: int(0.01 * 768) = 7 for Whisper small
    d_model: int | None = None  # null = the base config's d_model (or hidden_size)

    def resolve_rank(self, d_model: int | None) -> int:
        if self.rank is not None:
            return self.rank
        d = self.d_model or d_model
        if d is None:
            raise ValueError("the base has no config with d_model: set params.rank or d_model")
        return max(1, int(self.rank_ratio * d))

    def _check_rank(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.rank_ratio <= 0:
            raise ValueError(f"rank_ratio must be > 0, got {self.rank_ratio}")


@dataclass(frozen=True)
class MagnitudePruneParams:
    density: float = 0.2  # kept fraction of each targeted tau (LoRS ablation: 20 %)
    targets: tuple[str, ...] = WHISPER_LORS_TARGETS  # pruned matrices; others merged raw
    scale: float | None = None  # lambda; null = 1/N

    def __post_init__(self) -> None:
        _check_fraction("density", self.density)


@dataclass(frozen=True)
class SvdLowrankParams(RankParams):
    targets: tuple[str, ...] = WHISPER_LORS_TARGETS  # truncated matrices; others merged raw
    scale: float | None = None  # lambda; null = 1/N

    def __post_init__(self) -> None:
        self._check_rank()


@dataclass(frozen=True)
class LorsParams(RankParams):
    density: float = 0.2  # kept fraction of the residual tau - L (official: 0.2)
    targets: tuple[str, ...] = WHISPER_LORS_TARGETS  # low-rank + sparse matrices; others raw
    scale: float | None = None  # lambda; null = 1/N (official: 0.2 for N = 5)

    def __post_init__(self) -> None:
        self._check_rank()
        _check_fraction("density", self.density)


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class TensorContext:
    """What the driver knows about the tensor being merged (no I/O handles)."""

    name: str
    targeted: bool = True  # matches the method's `targets` (per-task transform methods only)
    rank: int | None = None  # resolved SVD rank (rank methods only)
    generators: Sequence[torch.Generator] | None = None  # one per input (random methods only)


Combine = Callable[[Sequence[Tensor], Tensor, Any, TensorContext], Tensor]


@dataclass(frozen=True)
class MergeMethod:
    """A registry entry: params dataclass, combine function, default lambda, properties."""

    name: str
    params: type
    combine: Combine  # (task_tensors, weights, params, ctx) -> merged task tensor
    default_scale: Literal["one", "one_over_n"]
    separable: bool  # merged = sum_t w_t f(tau_t): language expansion is exact
    random: bool = False  # needs ctx.generators

    def scale(self, params: Any, num_inputs: int) -> float:
        if params.scale is not None:
            return float(params.scale)
        return 1.0 if self.default_scale == "one" else 1.0 / num_inputs


def _per_task(transform: Callable[[Tensor, Any, TensorContext], Tensor]) -> Combine:
    def combine(tasks: Sequence[Tensor], weights: Tensor, p: Any, ctx: TensorContext) -> Tensor:
        if ctx.targeted:
            tasks = [transform(t, p, ctx) for t in tasks]
        return task_arithmetic(tasks, weights)

    return combine


def _rank(ctx: TensorContext) -> int:
    if ctx.rank is None:
        raise ValueError(f"{ctx.name}: no SVD rank resolved")
    return ctx.rank


MERGE_METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        MergeMethod("average", AverageParams, lambda t, w, p, c: average(t, w), "one", False),
        MergeMethod(
            "task_arithmetic",
            TaskArithmeticParams,
            lambda t, w, p, c: task_arithmetic(t, w),
            "one_over_n",
            True,
        ),
        MergeMethod(
            "ties",
            TiesParams,
            lambda t, w, p, c: ties(t, w, p.density, p.majority_sign),
            "one",
            False,
        ),
        MergeMethod(
            "dare",
            DareParams,
            lambda t, w, p, c: dare(t, w, 1.0 - p.drop_rate, c.generators),
            "one_over_n",
            True,
            random=True,
        ),
        MergeMethod(
            "dare_ties",
            DareTiesParams,
            lambda t, w, p, c: dare_ties(t, w, 1.0 - p.drop_rate, p.majority_sign, c.generators),
            "one",
            False,
            random=True,
        ),
        MergeMethod(
            "magnitude_prune",
            MagnitudePruneParams,
            _per_task(lambda t, p, c: magnitude_prune(t, p.density)),
            "one_over_n",
            True,
        ),
        MergeMethod(
            "svd_lowrank",
            SvdLowrankParams,
            _per_task(lambda t, p, c: lowrank(t, _rank(c))),
            "one_over_n",
            True,
        ),
        MergeMethod(
            "lors",
            LorsParams,
            _per_task(lambda t, p, c: lors_prune(t, _rank(c), p.density)),
            "one_over_n",
            True,
        ),
    )
}
