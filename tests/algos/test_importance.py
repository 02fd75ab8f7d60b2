"""Truncated importance sampling against a float64 reference written token by token."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import vlm_rl.algos.importance as importance
from vlm_rl.algos.grpo_loss import grpo_loss
from vlm_rl.algos.importance import (
    add_stats,
    importance_metrics,
    sampler_logprob_matrix,
    truncated_is_weights,
)


def _reference(learner, sampler, mask, cap):
    """Plain Python over float64 lists: the definition, with no tensor tricks."""
    weights, ratios, diffs = [], [], []
    for lrow, srow, mrow in zip(learner.tolist(), sampler.tolist(), mask.tolist()):
        wrow = []
        for lp, sp, m in zip(lrow, srow, mrow):
            if m:
                d = lp - sp
                r = math.exp(max(-20.0, min(20.0, d)))
                ratios.append(r)
                diffs.append(abs(d))
                wrow.append(min(r, cap))
            else:
                wrow.append(0.0)
        weights.append(wrow)
    n = len(ratios)
    metrics = {
        "tis/ratio_mean": sum(ratios) / n, "tis/ratio_max": max(ratios), "tis/ratio_min": min(ratios),
        "tis/clipped_fraction": sum(r > cap for r in ratios) / n, "tis/logp_diff_abs": sum(diffs) / n,
    }
    return weights, metrics


def _batch(seed: int, n: int = 5, t: int = 7):
    gen = torch.Generator().manual_seed(seed)
    sampler = -torch.rand(n, t, generator=gen, dtype=torch.float64) * 4
    learner = sampler + torch.randn(n, t, generator=gen, dtype=torch.float64) * 0.8  # some ratios above 2
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.float64)
    return learner, sampler, mask


@pytest.mark.parametrize("cap", [1.0, 2.0, 5.0])
def test_weights_and_metrics_match_the_float64_reference(cap):
    learner, sampler, mask = _batch(0)
    weights, stats = truncated_is_weights(learner.float(), sampler.float(), mask.float(), cap)
    ref_w, ref_m = _reference(learner, sampler, mask, cap)
    assert torch.allclose(weights.double(), torch.tensor(ref_w, dtype=torch.float64), atol=1e-5)
    metrics = importance_metrics(stats)
    assert metrics.keys() == ref_m.keys()
    for key, value in ref_m.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert 0 < metrics["tis/clipped_fraction"] < 1  # the data exercises both sides of the cap
    assert not weights.requires_grad


def test_micro_batch_statistics_add_up_to_the_whole_batch():
    learner, sampler, mask = _batch(1, n=6)
    _, whole = truncated_is_weights(learner, sampler, mask, 2.0)
    total = None
    for sl in (slice(0, 2), slice(2, 3), slice(3, 6)):
        total = add_stats(total, truncated_is_weights(learner[sl], sampler[sl], mask[sl], 2.0)[1])
    for key, value in importance_metrics(whole).items():
        assert importance_metrics(total)[key] == pytest.approx(value), key


def test_weights_are_detached_and_padding_is_ignored():
    learner = torch.tensor([[-1.0, -2.0, 50.0]], requires_grad=True)  # a garbage log-prob on padding
    sampler = torch.tensor([[-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    weights, stats = truncated_is_weights(learner, sampler, mask, 2.0)
    assert weights[0].tolist() == pytest.approx([1.0, math.exp(-1.0), 0.0])
    assert not weights.requires_grad and stats["tokens"].item() == 2
    assert importance_metrics(stats)["tis/ratio_max"] == pytest.approx(1.0)


def test_weighted_loss_gradient_is_the_weight_times_each_tokens_policy_gradient():
    """Per-token advantages ``A * w`` scale exactly the policy-gradient term (KL untouched), as TIS is defined."""
    learner, sampler, mask = _batch(2, n=3, t=4)
    logp = learner.clone().requires_grad_(True)
    ref = learner - 0.3
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    weights, _ = truncated_is_weights(logp, sampler, mask, 2.0)
    kwargs = dict(beta=0.1, eps_low=0.2, eps_high=0.2, loss_type="dapo")
    loss, _ = grpo_loss(logp, None, ref, adv[:, None] * weights, mask, **kwargs)
    (grad,) = torch.autograd.grad(loss, logp)
    # reference: d/dlogp of sum_t mask * (-w A ratio + beta k3) / tokens, ratio = exp(logp - logp.detach()) = 1
    k3_grad = 1 - torch.exp(ref - learner)  # d/dx (exp(r-x) - (r-x) - 1)
    expected = mask * (-weights * adv[:, None] + 0.1 * k3_grad) / mask.sum()
    assert torch.allclose(grad, expected, atol=1e-12)


def test_sampler_logprob_matrix_pads_rows_and_rejects_long_ones():
    out = sampler_logprob_matrix([[-0.5, -1.0], [], [-2.0]], width=3)
    assert out.tolist() == [[-0.5, -1.0, 0.0], [0.0, 0.0, 0.0], [-2.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="row 0 has 2 log-probs for 1 token columns"):
        sampler_logprob_matrix([[-0.5, -1.0]], width=1)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="tis_cap"):
        truncated_is_weights(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), cap=0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        truncated_is_weights(torch.zeros(1, 2), torch.zeros(1, 1), torch.ones(1, 2), cap=2.0)


def test_docstring_example():
    result = doctest.testmod(importance)
    assert result.attempted > 0 and result.failed == 0
