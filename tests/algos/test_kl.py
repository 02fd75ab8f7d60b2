"""KL estimators."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_rl.algos.kl import kl_k1, kl_k2, kl_k3


def test_k3_is_nonnegative_and_zero_when_equal():
    torch.manual_seed(0)
    logp = -torch.rand(1000, dtype=torch.float64) * 10
    ref = -torch.rand(1000, dtype=torch.float64) * 10
    assert (kl_k3(logp, ref) >= 0).all()
    assert kl_k3(logp, logp).abs().max() == 0
    assert kl_k1(logp, logp).abs().max() == 0 and kl_k2(logp, logp).abs().max() == 0


def test_values_against_formula():
    for lp, rp in [(-1.0, -2.0), (-3.0, -0.5), (-0.1, -0.1)]:
        r = rp - lp
        got = kl_k3(torch.tensor([lp], dtype=torch.float64), torch.tensor([rp], dtype=torch.float64)).item()
        assert math.isclose(got, math.exp(r) - r - 1, abs_tol=1e-12)
        assert kl_k1(torch.tensor(lp), torch.tensor(rp)).item() == pytest.approx(lp - rp, abs=1e-6)
        assert kl_k2(torch.tensor(lp), torch.tensor(rp)).item() == pytest.approx(0.5 * (lp - rp) ** 2, abs=1e-6)


def test_extreme_log_ratio_is_clamped_finite():
    out = kl_k3(torch.tensor([-200.0, 0.0]), torch.tensor([0.0, -200.0]))
    assert torch.isfinite(out).all()
    assert out[0].item() == pytest.approx(math.exp(20) - 21, rel=1e-6)


def test_k3_estimates_true_kl():
    """Sampling from p, mean k3 approaches KL(p || q): the estimator GRPO relies on is unbiased."""
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(6, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(6, dtype=torch.float64), 0)
    samples = torch.multinomial(p, 200_000, replacement=True)
    estimate = kl_k3(p.log()[samples], q.log()[samples]).mean().item()
    exact = (p * (p.log() - q.log())).sum().item()
    assert abs(estimate - exact) < 0.02 * max(exact, 0.1)
