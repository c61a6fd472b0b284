"""Slow, obviously-correct LoRS reference: the official script's loop, transcribed.

For each task matrix: full SVD (full_matrices=True, as in the official code), L from the top-r
triplets, residual S = delta - L, keep the k = int(numel * density) largest |S| by sorting, and
tau = L + S. Then merged = lambda * sum_t w_t tau_t. Non-targeted tensors stay raw.
"""

from __future__ import annotations

import torch


def lowrank_reference(delta: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(delta, full_matrices=True)
    low = torch.zeros_like(delta)
    for i in range(min(rank, s.numel())):
        low += s[i] * torch.outer(u[:, i], vh[i])
    return low


def keep_top_reference(x: torch.Tensor, density: float) -> torch.Tensor:
    k = int(x.numel() * density)
    order = torch.argsort(x.abs().reshape(-1), descending=True, stable=True)
    out = torch.zeros(x.numel(), dtype=x.dtype)
    out[order[:k]] = x.reshape(-1)[order[:k]]
    return out.reshape(x.shape)


def lors_reference(
    deltas: list[torch.Tensor], weights: list[float], rank: int, density: float, scale: float
) -> torch.Tensor:
    total = torch.zeros_like(deltas[0])
    for delta, weight in zip(deltas, weights):
        low = lowrank_reference(delta, rank)
        total += weight * (low + keep_top_reference(delta - low, density))
    return scale * total
