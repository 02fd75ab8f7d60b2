"""GRPO loss against a float64 reference written as plain loops over tokens."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_rl.algos.grpo_loss import LOSS_TYPES, grpo_loss


def reference(logp, old, ref, adv, mask, beta, eps_low, eps_high, loss_type, max_len=None, num_items=None):
    """Token-by-token loss and metrics in Python floats."""
    n, t = len(logp), len(logp[0])
    token_losses = [[0.0] * t for _ in range(n)]
    kls, ratios, low, high = [], [], [], []
    for i in range(n):
        for j in range(t):
            if not mask[i][j]:
                continue
            r = math.exp(logp[i][j] - old[i][j])
            a = adv[i]
            clipped = min(max(r, 1 - eps_low), 1 + eps_high)
            loss = -min(r * a, clipped * a)
            d = max(-20.0, min(20.0, ref[i][j] - logp[i][j]))
            kl = math.exp(d) - d - 1
            token_losses[i][j] = loss + beta * kl
            kls.append(kl)
            ratios.append(r)
            low.append(r < 1 - eps_low and a < 0)
            high.append(r > 1 + eps_high and a > 0)
    n_tok = sum(sum(1 for v in row if v) for row in mask)
    total = sum(sum(row) for row in token_losses)
    if loss_type == "grpo":
        per_seq = []
        for i in range(n):
            count = sum(1 for v in mask[i] if v)
            per_seq.append(sum(token_losses[i]) / max(count, 1))
        value = sum(per_seq) / n
    elif loss_type == "bnpo":
        value = total / max(n_tok, 1)
    elif loss_type == "dapo":
        value = total / (num_items if num_items is not None else max(n_tok, 1))
    else:
        value = total / (n * (max_len if max_len is not None else t))
    metrics = {
        "kl": sum(kls) / max(n_tok, 1),
        "ratio": sum(ratios) / max(n_tok, 1),
        "clip_ratio/low": sum(low) / max(n_tok, 1),
        "clip_ratio/high": sum(high) / max(n_tok, 1),
        "clip_ratio": (sum(low) + sum(high)) / max(n_tok, 1),
    }
    return value, metrics


def random_batch(seed, n=6, t=9):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    old = logp + torch.randn(n, t, generator=g, dtype=torch.float64) * 0.3  # ratios well outside the clip
    ref = logp + torch.randn(n, t, generator=g, dtype=torch.float64) * 0.5
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    mask = (torch.rand(n, t, generator=g) > 0.3).long()
    mask[0] = 0  # a sequence with no completion tokens
    mask[1, :] = 1
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize(("beta", "eps_low", "eps_high"), [(0.0, 0.2, 0.2), (0.04, 0.2, 0.28), (0.5, 0.1, 0.3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_loop_reference(loss_type, beta, eps_low, eps_high, seed):
    logp, old, ref, adv, mask = random_batch(seed)
    logp.requires_grad_(True)
    kwargs = {"max_completion_length": 16} if loss_type == "dr_grpo" else {}
    loss, metrics = grpo_loss(logp, old, ref, adv, mask, beta=beta, eps_low=eps_low, eps_high=eps_high,
                              loss_type=loss_type, **kwargs)
    want, want_metrics = reference(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(),
                                   beta, eps_low, eps_high, loss_type, max_len=kwargs.get("max_completion_length"))
    assert loss.item() == pytest.approx(want, abs=1e-12)
    for key, value in want_metrics.items():
        assert metrics[key].item() == pytest.approx(value, abs=1e-12), key
    assert 0 < metrics["clip_ratio"].item() < 1

    # gradient: finite differences of the reference at one unclipped and one masked token
    (grad,) = torch.autograd.grad(loss, logp)
    assert (grad[mask == 0] == 0).all()
    h = 1e-6
    for i, j in [(1, 0), (1, 4), (3, 2)]:
        plus, minus = logp.detach().clone(), logp.detach().clone()
        plus[i, j] += h
        minus[i, j] -= h
        args = (old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), beta, eps_low, eps_high, loss_type)
        fd = (reference(plus.tolist(), *args, max_len=kwargs.get("max_completion_length"))[0]
              - reference(minus.tolist(), *args, max_len=kwargs.get("max_completion_length"))[0]) / (2 * h)
        assert grad[i, j].item() == pytest.approx(fd, abs=1e-6)


def test_dapo_global_normaliser():
    logp, old, ref, adv, mask = random_batch(3)
    loss, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.1, eps_low=0.2, eps_high=0.2, loss_type="dapo",
                        num_items_in_batch=100)
    want, _ = reference(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.1, 0.2, 0.2,
                        "dapo", num_items=100)
    assert loss.item() == pytest.approx(want, abs=1e-12)
    local, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.1, eps_low=0.2, eps_high=0.2, loss_type="dapo")
    bnpo, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.1, eps_low=0.2, eps_high=0.2, loss_type="bnpo")
    assert local.item() == pytest.approx(bnpo.item(), abs=1e-15)


def test_micro_batches_with_global_normaliser_sum_to_full_batch():
    """Gradient accumulation: dapo losses of two halves, each over the global token count, add up."""
    logp, old, ref, adv, mask = random_batch(4, n=8)
    kw = {"beta": 0.04, "eps_low": 0.2, "eps_high": 0.28, "loss_type": "dapo"}
    full, _ = grpo_loss(logp, old, ref, adv, mask, **kw)
    total = mask.sum()
    halves = [grpo_loss(logp[s], old[s], ref[s], adv[s], mask[s], num_items_in_batch=total, **kw)[0]
              for s in (slice(0, 4), slice(4, 8))]
    assert (halves[0] + halves[1]).item() == pytest.approx(full.item(), abs=1e-12)


def test_clip_ratio_on_a_hand_built_case():
    ratio = torch.tensor([[1.5, 0.5], [1.5, 0.5], [1.0, 1.5], [1.5, 0.5]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 1.0, 0.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 1]])
    old = torch.full_like(ratio, -1.0)
    logp = old + ratio.log()
    _, m = grpo_loss(logp, old, None, adv, mask, beta=0.0, eps_low=0.2, eps_high=0.2)
    # clipped: (0,0) r=1.5 > 1.2 with A>0 -> high; (1,1) r=0.5 < 0.8 with A<0 -> low.
    # Not clipped: (0,1) r=0.5 with A>0 and (1,0) r=1.5 with A<0 (the min keeps the unclipped term),
    # (2,1) is masked, and row 3 has A=0 (no gradient to remove).
    assert m["clip_ratio/high"].item() == pytest.approx(1 / 7)
    assert m["clip_ratio/low"].item() == pytest.approx(1 / 7)
    assert m["clip_ratio"].item() == pytest.approx(2 / 7)
    assert m["ratio"].item() == pytest.approx((1.5 + 0.5 + 1.5 + 0.5 + 1.0 + 1.5 + 0.5) / 7)
    assert "kl" not in m


def test_on_policy_without_old_logp():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([2.0], dtype=torch.float64)
    loss, m = grpo_loss(logp, None, logp.detach(), adv, torch.ones(1, 2), beta=0.1, eps_low=0.2, eps_high=0.2,
                        loss_type="bnpo")
    assert loss.item() == pytest.approx(-2.0)
    assert m["kl"].item() == 0.0 and m["ratio"].item() == 1.0
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, torch.tensor([[-1.0, -1.0]], dtype=torch.float64))  # -A / n_tokens


def test_token_level_advantages_and_padding_garbage():
    logp, old, ref, adv, mask = random_batch(5)
    logp = logp.masked_fill(mask == 0, float("-inf"))  # padded positions may hold anything
    loss, m = grpo_loss(logp, old, ref, adv[:, None].expand(-1, logp.shape[1]), mask, beta=0.1,
                        eps_low=0.2, eps_high=0.2, loss_type="grpo")
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in m.values())


def test_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(x, x, x, torch.zeros(2), x, beta=0, eps_low=0.2, eps_high=0.2, loss_type="ppo")
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(x, x, x, torch.zeros(2), torch.zeros(2, 2), beta=0, eps_low=0.2, eps_high=0.2)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(x, x, x, torch.zeros(3), x, beta=0, eps_low=0.2, eps_high=0.2)
