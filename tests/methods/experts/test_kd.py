"""KD losses: zero for identical posteriors, equal to a hand computation, CE when lambda = 0."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from babelora.methods.experts.kd import distill_loss, token_kl


def test_kl_of_a_distribution_with_itself_is_zero():
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    for direction in ("forward", "reverse"):
        for temperature in (0.5, 1.0, 3.0):
            kl = token_kl(logits, logits.clone(), temperature, direction)
            torch.testing.assert_close(kl, torch.zeros(5), atol=1e-6, rtol=0)


def _hand_kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _softmax(z: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def test_loss_equals_hand_computed_reference():
    student = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0], [3.0, 1.0, 0.0]]
    teacher = [[0.0, 1.0, 0.0], [1.0, -1.0, 1.5], [0.0, 0.0, 0.0]]
    labels = [2, 0, -100]  # the third token is padding
    lam, t = 0.7, 2.0
    expected = {"forward": 0.0, "reverse": 0.0}
    ce = 0.0
    for s, te, y in zip(student, teacher, labels):
        if y == -100:
            continue
        ce += -math.log(_softmax(s, 1.0)[y])
        ps, pt = _softmax(s, t), _softmax(te, t)
        expected["forward"] += _hand_kl(pt, ps)
        expected["reverse"] += _hand_kl(ps, pt)
    for direction, kl in expected.items():
        out = distill_loss(
            torch.tensor([student]),
            torch.tensor([teacher]),
            torch.tensor([labels]),
            lam,
            t,
            direction,
        )
        assert out.tokens == 2
        assert float(out.ce) == pytest.approx(ce, rel=1e-6)
        assert float(out.kl) == pytest.approx(kl, rel=1e-5)
        assert float(out.loss) == pytest.approx(ce + lam * t * t * kl, rel=1e-5)


def test_zero_weight_is_plain_cross_entropy():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(2, 4, 11, generator=g, requires_grad=True)
    teacher = torch.randn(2, 4, 11, generator=g)
    labels = torch.randint(0, 11, (2, 4), generator=g)
    labels[0, 0] = -100
    out = distill_loss(student, teacher, labels, kd_weight=0.0, temperature=2.0)
    ce = F.cross_entropy(
        student.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
    )
    assert torch.equal(out.loss, ce)
    (grad,) = torch.autograd.grad(out.loss, student)
    (ref,) = torch.autograd.grad(ce, student)
    assert torch.equal(grad, ref)


def test_no_gradient_flows_into_the_teacher():
    g = torch.Generator().manual_seed(2)
    student = torch.randn(3, 5, generator=g, requires_grad=True)
    teacher = torch.randn(3, 5, generator=g, requires_grad=True)
    distill_loss(student, teacher, torch.tensor([1, 2, 3]), 1.0, 2.0).loss.backward()
    assert teacher.grad is None and student.grad is not None


def test_bad_settings_raise():
    z = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="temperature"):
        token_kl(z, z, 0.0)
    with pytest.raises(ValueError, match="direction"):
        token_kl(z, z, 1.0, "sideways")  # type: ignore[arg-type]
