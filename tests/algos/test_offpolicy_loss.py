"""The off-policy objective (decoupled PPO, docs/ARCHITECTURE.md) against a float64 reference written token by
token: the clip is centred on the proximal policy, each token's policy-gradient term is weighted by the IS weight
of the proximal policy against the sampler (four modes), the KL term is not."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_rl.algos.grpo_loss import grpo_loss
from vlm_rl.algos.importance import IS_MODES, importance_metrics, importance_weights


def _is_weight(prox_row, sampler_row, mask_row, j, cap, mode):
    """The definition, per token: the ratio of the token or of the whole completion, truncated or masked."""
    if mode.startswith("token"):
        d = prox_row[j] - sampler_row[j]
    else:
        d = sum(p - s for p, s, m in zip(prox_row, sampler_row, mask_row) if m)
    r = math.exp(max(-20.0, min(20.0, d)))
    if mode.endswith("truncate"):
        return min(r, cap)
    return r if 1 / cap <= r <= cap else 0.0


def reference(logp, prox, sampler, ref, adv, mask, *, beta, eps_low, eps_high, cap, mode, loss_type):
    """Loss, d loss / d logp and clip fraction, in Python floats (dapo: / tokens; grpo: per-sequence means)."""
    n, t = len(logp), len(logp[0])
    tokens = sum(sum(1 for m in row if m) for row in mask)
    loss, grad, clipped = 0.0, [[0.0] * t for _ in range(n)], 0
    for i in range(n):
        count = sum(1 for m in mask[i] if m)
        norm = tokens if loss_type == "dapo" else count * n
        for j in range(t):
            if not mask[i][j]:
                continue
            w = _is_weight(prox[i], sampler[i], mask[i], j, cap, mode)
            r = math.exp(logp[i][j] - prox[i][j])
            a = adv[i]
            c = min(max(r, 1 - eps_low), 1 + eps_high)
            unclipped = r * a <= c * a  # the min picks the unclipped term: its gradient flows
            pg = -w * min(r * a, c * a)
            pg_grad = -w * a * r if unclipped else 0.0
            clipped += (r < 1 - eps_low and a < 0) or (r > 1 + eps_high and a > 0)
            d = ref[i][j] - logp[i][j]
            loss += (pg + beta * (math.exp(d) - d - 1)) / norm
            grad[i][j] = (pg_grad + beta * (1 - math.exp(d))) / norm
    return loss, grad, clipped / tokens


def _batch(seed: int, n: int = 6, t: int = 8):
    g = torch.Generator().manual_seed(seed)
    sampler = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    prox = sampler + torch.randn(n, t, generator=g, dtype=torch.float64) * 0.15  # a stale sampler
    logp = prox + torch.randn(n, t, generator=g, dtype=torch.float64) * 0.1  # the policy after some updates
    ref = prox - 0.2
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.float64)
    return logp, prox, sampler, ref, adv, mask


def _loss(logp, prox, sampler, ref, adv, mask, *, eps, cap=1.5, mode="token_truncate", loss_type="dapo", beta=0.04):
    weights, stats = importance_weights(prox, sampler, mask, cap, mode)
    loss, metrics = grpo_loss(logp, prox, ref, adv, mask, beta=beta, eps_low=eps, eps_high=eps, loss_type=loss_type,
                              is_weights=weights)
    return loss, metrics, stats


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
@pytest.mark.parametrize("mode", IS_MODES)
def test_decoupled_loss_and_gradient_match_the_float64_reference(mode, loss_type):
    logp, prox, sampler, ref, adv, mask = _batch(0)
    cap = 1.3 if mode.startswith("token") else 1.5  # both sides of the cap / band occur in the data
    x = logp.clone().requires_grad_(True)
    loss, metrics, stats = _loss(x, prox, sampler, ref, adv, mask, eps=0.05, cap=cap, mode=mode, loss_type=loss_type)
    (grad,) = torch.autograd.grad(loss, x)
    want, want_grad, want_clip = reference(logp.tolist(), prox.tolist(), sampler.tolist(), ref.tolist(), adv.tolist(),
                                           mask.tolist(), beta=0.04, eps_low=0.05, eps_high=0.05, cap=cap, mode=mode,
                                           loss_type=loss_type)
    assert loss.item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    assert torch.allclose(grad, torch.tensor(want_grad, dtype=torch.float64), atol=1e-12)
    assert metrics["clip_ratio"].item() == pytest.approx(want_clip) and 0 < want_clip < 1
    cut = importance_metrics(stats, mode)
    name = "clipped" if mode.endswith("truncate") else "masked"
    assert 0 < cut[f"tis/{name}_fraction"] < 1, cut  # the mode acted on some tokens, not on all
    if mode.startswith("sequence"):
        assert 0 < cut[f"tis/seq_{name}_fraction"] < 1 and cut["tis/seq_ratio_min"] <= cut["tis/seq_ratio_max"]


def test_the_clip_acts_off_policy_and_not_on_policy():
    """Against a proximal policy the learner has moved from, epsilon 0.01 and 0.2 give different gradients;
    on-policy with one update (pi_prox = pi_theta) they are bit-identical and nothing is clipped."""
    logp, prox, sampler, ref, adv, mask = _batch(1)
    grads, clips = {}, {}
    for on_policy in (False, True):
        for eps in (0.01, 0.2):
            x = logp.clone().requires_grad_(True)
            old = x.detach() if on_policy else prox
            loss, metrics, _ = _loss(x, old, sampler, ref, adv, mask, eps=eps)
            grads[on_policy, eps] = torch.autograd.grad(loss, x)[0]
            clips[on_policy, eps] = metrics["clip_ratio"].item()
    assert not torch.equal(grads[False, 0.01], grads[False, 0.2])
    assert clips[False, 0.01] > clips[False, 0.2] >= 0 and clips[False, 0.01] > 0
    assert torch.equal(grads[True, 0.01], grads[True, 0.2])
    assert clips[True, 0.01] == clips[True, 0.2] == 0.0


def test_is_weights_leave_the_kl_term_alone_and_reject_bad_shapes():
    logp, prox, sampler, ref, adv, mask = _batch(2, n=3, t=4)
    zero = torch.zeros_like(logp)
    loss, _ = grpo_loss(logp, logp, ref, adv, mask, beta=0.1, eps_low=0.2, eps_high=0.2, is_weights=zero)
    kl_only, _ = grpo_loss(logp, logp, ref, adv * 0, mask, beta=0.1, eps_low=0.2, eps_high=0.2)
    assert loss.item() == pytest.approx(kl_only.item(), rel=1e-12)  # every PG term masked: the KL term remains
    with pytest.raises(ValueError, match="is_weights"):
        grpo_loss(logp, logp, ref, adv, mask, beta=0.1, eps_low=0.2, eps_high=0.2, is_weights=zero[:, :2])
    with pytest.raises(ValueError, match="tis_mode"):
        importance_weights(prox, sampler, mask, 2.0, "sequence")  # type: ignore[arg-type]
