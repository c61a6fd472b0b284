"""Projector losses: language-specific, intra-group balance, transition; frame labels; masks."""

from __future__ import annotations

import math

import pytest
import torch

from babelora.data.collate import IGNORE_INDEX as IGNORE
from babelora.data.manifest import Segment
from babelora.errors import LanguageError
from babelora.methods.speech_llm.losses import (
    ProjectorLossConfig,
    balance_loss,
    frame_labels,
    language_loss,
    projector_aux_losses,
    transition_loss,
    transition_weight_at,
    weighted_aux_loss,
)
from babelora.methods.speech_llm.moe_projector import (
    MoEProjector,
    MoEProjectorConfig,
    ProjectorRouting,
    route,
)


def routing_from(logits, cfg, mask=None, ref=None) -> ProjectorRouting:
    ids, w, g = route(logits, cfg)
    return ProjectorRouting(logits, ids, w, g, cfg.num_groups, cfg.experts_per_group, mask, ref)


CFG = MoEProjectorConfig(num_groups=2, experts_per_group=2, top_k=1)


# ---- frame labels ---------------------------------------------------------------------------
def test_segments_to_frame_labels():
    segs = [Segment(0.0, 1.0, "es"), Segment(1.2, 2.0, "en")]
    labels = frame_labels(["es"], [segs], [25], 0.1, ("es", "en"))
    # frame i covers [0.1 i, 0.1 (i+1)); its centre decides
    assert labels[0, :10].tolist() == [0] * 10
    assert labels[0, 10:12].tolist() == [IGNORE] * 2  # the pause 1.0-1.2 s has no label
    assert labels[0, 12:20].tolist() == [1] * 8
    assert labels[0, 20:].tolist() == [IGNORE] * 5  # after the last segment


def test_monolingual_labels_padding_and_dicts():
    segs = [
        None,
        [{"start": 0.0, "end": 0.25, "lang": "en"}, {"start": 0.25, "end": 9, "lang": "de"}],
    ]
    labels = frame_labels(["de", "de"], segs, torch.tensor([3, 5]), 0.1, ("de", "en"), num_frames=6)
    assert labels.tolist() == [
        [0, 0, 0, IGNORE, IGNORE, IGNORE],  # utterance language on real frames, padding ignored
        [1, 1, 0, 0, 0, IGNORE],
    ]


def test_first_overlapping_segment_wins():
    segs = [[Segment(0.0, 1.0, "de"), Segment(0.5, 1.0, "en")]]
    labels = frame_labels(["de"], segs, [10], 0.1, ("de", "en"))
    assert labels[0].tolist() == [0] * 10


def test_unknown_language_error_and_ignore():
    with pytest.raises(LanguageError, match="'fr' has no expert group"):
        frame_labels(["fr"], None, [4], 0.1, ("de", "en"))
    labels = frame_labels(["fr"], None, [4], 0.1, ("de", "en"), unknown_lang="ignore")
    assert labels.tolist() == [[IGNORE] * 4]


# ---- language-specific loss -----------------------------------------------------------------
def test_language_loss_lowest_when_routing_matches_labels():
    labels = torch.tensor([[0, 0, 1, 1]])
    matched = torch.tensor([[[4.0, 4, -4, -4], [4, 4, -4, -4], [-4, -4, 4, 4], [-4, -4, 4, 4]]])
    uniform = torch.zeros(1, 4, 4)
    losses = {
        name: float(language_loss(routing_from(lg, CFG), labels))
        for name, lg in [("matched", matched), ("uniform", uniform), ("swapped", -matched)]
    }
    assert losses["matched"] < losses["uniform"] < losses["swapped"]
    assert losses["uniform"] == pytest.approx(math.log(2))
    assert losses["matched"] < 1e-3


def test_language_loss_is_the_group_nll():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6)
    cfg = MoEProjectorConfig(num_groups=3, experts_per_group=2)
    labels = torch.tensor([[0, 1, 2, IGNORE, 1], [2, 2, 0, 1, 0]])
    p = torch.softmax(logits, -1).view(2, 5, 3, 2).sum(-1)
    keep = labels >= 0
    expected = -torch.log(p.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1))[keep].mean()
    torch.testing.assert_close(language_loss(routing_from(logits, cfg), labels), expected)


# ---- balance loss ---------------------------------------------------------------------------
def sharp_routing(loads: list[list[int]]) -> ProjectorRouting:
    """Frames routed one-hot (logit 50): group g sends loads[g][m] frames to its expert m."""
    G, M = len(loads), len(loads[0])
    rows = []
    for g, row in enumerate(loads):
        for m, count in enumerate(row):
            logit = torch.full((G * M,), -25.0)
            logit[g * M + m] = 25.0
            rows += [logit] * count
    logits = torch.stack(rows).unsqueeze(0)
    return routing_from(logits, MoEProjectorConfig(num_groups=G, experts_per_group=M))


def test_balance_loss_is_one_at_uniform_load_and_larger_when_skewed():
    uniform = float(balance_loss(sharp_routing([[3, 3, 3], [2, 2, 2]])))
    assert uniform == pytest.approx(1.0, abs=1e-5)
    for loads in ([[9, 0, 0], [2, 2, 2]], [[4, 3, 2], [2, 2, 2]], [[3, 3, 3], [1, 0, 5]]):
        assert float(balance_loss(sharp_routing(loads))) > uniform + 1e-3


def test_balance_loss_minimal_at_uniform_over_random_loads():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        loads = torch.randint(0, 6, (2, 3), generator=g)
        loads[:, 0] += 1
        value = float(balance_loss(sharp_routing(loads.tolist())))
        assert value >= 1.0 - 1e-5  # = M * sum f^2 per group >= 1 (Cauchy-Schwarz)


def test_balance_gradient_moves_mass_off_the_overloaded_expert():
    cfg = MoEProjectorConfig(num_groups=1, experts_per_group=3)
    logits = torch.tensor([[[2.0, 0.0, 0.0]] * 4 + [[0.0, 1.0, 0.0]]]).requires_grad_()
    balance_loss(routing_from(logits, cfg)).backward()
    assert bool((logits.grad[0, :, 0] > 0).all())  # descent lowers expert 0's logit


def test_balance_loss_ignores_empty_groups():
    # hierarchical top-1: only group 0 receives frames; the loss is group 0's alone
    one = float(balance_loss(sharp_routing([[2, 2], [0, 0]])))
    assert one == pytest.approx(1.0, abs=1e-5)


# ---- transition loss ------------------------------------------------------------------------
def test_transition_loss_zero_for_same_router_and_equals_kl():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 4)
    assert float(transition_loss(routing_from(logits, CFG, ref=logits.clone()))) == pytest.approx(
        0, abs=1e-6
    )
    ref = torch.randn(2, 4, 4)
    p_ref, lp_new = torch.softmax(ref, -1), torch.log_softmax(logits, -1)
    expected = (p_ref * (p_ref.log() - lp_new)).sum(-1).mean()
    torch.testing.assert_close(transition_loss(routing_from(logits, CFG, ref=ref)), expected)
    groups = transition_loss(routing_from(logits, CFG, ref=ref), kind="group_kl")
    pg_ref = p_ref.view(2, 4, 2, 2).sum(-1)
    pg_new = torch.softmax(logits, -1).view(2, 4, 2, 2).sum(-1)
    torch.testing.assert_close(groups, (pg_ref * (pg_ref / pg_new).log()).sum(-1).mean())


def test_transition_loss_only_on_replayed_utterances():
    torch.manual_seed(0)
    logits, ref = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    replay = torch.tensor([True, False])
    both = routing_from(logits, CFG, ref=ref)
    first = routing_from(logits[:1], CFG, ref=ref[:1])
    torch.testing.assert_close(transition_loss(both, replay), transition_loss(first))
    none = transition_loss(both, torch.tensor([False, False]))
    assert float(none) == 0.0
    assert float(transition_loss(routing_from(logits, CFG))) == 0.0  # no reference router
    with pytest.raises(ValueError, match="unknown transition loss"):
        transition_loss(both, kind="mse")


def test_transition_weight_annealing():
    lin = ProjectorLossConfig(transition_weight=1.0, transition_anneal_steps=100)
    assert [transition_weight_at(s, lin) for s in (0, 50, 100, 500)] == [1.0, 0.5, 0.0, 0.0]
    cos = ProjectorLossConfig(
        transition_weight=1.0,
        transition_final_weight=0.2,
        transition_anneal="cosine",
        transition_anneal_steps=10,
    )
    assert transition_weight_at(0, cos) == pytest.approx(1.0)
    assert transition_weight_at(5, cos) == pytest.approx(0.6)
    assert transition_weight_at(10, cos) == pytest.approx(0.2)
    const = ProjectorLossConfig(transition_weight=0.3, transition_anneal="constant")
    assert transition_weight_at(10**6, const) == 0.3


def test_weighted_aux_loss():
    cfg = ProjectorLossConfig(
        lang_weight=0.5, balance_weight=0.1, transition_weight=2.0, transition_anneal_steps=10
    )
    aux = {"lang": torch.tensor(2.0), "balance": torch.tensor(1.0), "transition": torch.tensor(1.0)}
    total, weights = weighted_aux_loss(aux, cfg, step=5)
    assert float(total) == pytest.approx(0.5 * 2 + 0.1 + 1.0)
    assert weights == {"lang": 0.5, "balance": 0.1, "transition": 1.0}


# ---- masks ----------------------------------------------------------------------------------
def test_padding_frames_never_count_in_any_loss():
    torch.manual_seed(0)
    proj = MoEProjector(MoEProjectorConfig(num_groups=2, experts_per_group=3, top_k=2), 8, 6)
    proj.enable_reference_router()
    with torch.no_grad():
        proj.reference_router.weight.add_(torch.randn_like(proj.reference_router.weight))
    x = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    labels = torch.tensor([[0, 0, 1, 1, 0, 1], [1, 0, 1, 0, 0, 0]])

    def losses(x, labels):
        _, routing = proj(x, mask)
        aux = projector_aux_losses(routing, labels, torch.tensor([True, True]))
        return {k: float(v.detach()) for k, v in aux.items()}

    base = losses(x, labels)
    assert set(base) == {"lang", "balance", "transition"}
    x2, labels2 = x.clone(), labels.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), 8) * 50
    labels2[~mask] = 1 - labels2[~mask]
    changed = losses(x2, labels2)
    for name in base:
        assert changed[name] == pytest.approx(base[name], abs=1e-6), name


def test_config_validation():
    with pytest.raises(ValueError, match="lang_weight"):
        ProjectorLossConfig(lang_weight=-1)
    with pytest.raises(ValueError, match="anneal_steps"):
        ProjectorLossConfig(transition_anneal_steps=0)
