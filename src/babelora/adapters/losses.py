"""Router auxiliary losses: pure functions on router outputs.

Shapes: N routed items (tokens or utterances), E experts, k experts kept per item.
`mask` (N,) bool marks the items that count (padding excluded); None = all count.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _valid(mask: Tensor | None, n: int, device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return mask.reshape(-1).to(device=device, dtype=torch.bool)


def load_balance_loss(probs: Tensor, expert_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Switch Transformer load balancing (arXiv:2101.03961, eq. 4), generalised to top-k.

    loss = E * sum_e f_e * P_e, where f_e is the fraction of the N*k assignments that go to
    expert e and P_e the mean router probability of e. Equals 1.0 when routing is uniform;
    gradient flows through P only (f is a count).

    Args:
        probs: (N, E) softmax router probabilities.
        expert_ids: (N, k) chosen experts.
        mask: (N,) valid items.
    """
    n, num_experts = probs.shape
    valid = _valid(mask, n, probs.device)
    count = valid.sum().clamp(min=1)
    chosen = torch.zeros_like(probs).scatter_(1, expert_ids, 1.0)  # (N, E) one-hot of top-k
    k = expert_ids.shape[1]
    frac = (chosen * valid[:, None]).sum(0) / (count * k)  # f_e, sums to 1
    mean_prob = (probs * valid[:, None]).sum(0) / count  # P_e
    return num_experts * (frac.detach() * mean_prob).sum()


def z_loss(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Router z-loss (ST-MoE, arXiv:2202.08906, eq. 5): mean of logsumexp(logits)^2.

    Keeps router logits small, which stabilises training in low precision.

    Args:
        logits: (N, E) router logits.
        mask: (N,) valid items.
    """
    valid = _valid(mask, logits.shape[0], logits.device)
    z = torch.logsumexp(logits.float(), dim=-1) ** 2
    return (z * valid).sum() / valid.sum().clamp(min=1)
