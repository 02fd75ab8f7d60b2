"""DPO loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_rl.algos.dpo_loss import dpo_loss, sequence_logps


def test_hand_computed_pair():
    # chosen gains 0.5 nats over the reference, rejected loses 0.5: margin 1 nat, beta 0.1 -> logit 0.1
    loss, m = dpo_loss(
        torch.tensor([-10.0]), torch.tensor([-20.5]), torch.tensor([-10.5]), torch.tensor([-20.0]), beta=0.1
    )
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.1)), rel=1e-6)
    assert m["rewards/chosen"].item() == pytest.approx(0.05)
    assert m["rewards/rejected"].item() == pytest.approx(-0.05)
    assert m["rewards/margin"].item() == pytest.approx(0.1)
    assert m["rewards/accuracy"].item() == 1.0


def test_batch_mean_and_label_smoothing():
    pc = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    pr = torch.tensor([-2.0, -1.0], dtype=torch.float64)
    zeros = torch.zeros(2, dtype=torch.float64)
    loss, m = dpo_loss(pc, pr, zeros, zeros, beta=1.0, label_smoothing=0.2)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [-(0.8 * math.log(sig(z)) + 0.2 * math.log(sig(-z))) for z in (1.0, -1.0)]
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-12)
    assert m["rewards/accuracy"].item() == 0.5


def test_equal_policy_and_reference_gives_log2_and_gradient_direction():
    pc = torch.tensor([-3.0], requires_grad=True)
    pr = torch.tensor([-3.0], requires_grad=True)
    loss, _ = dpo_loss(pc, pr, pc.detach(), pr.detach(), beta=0.5)
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descent raises chosen, lowers rejected


def test_sequence_logps_masks_padding():
    tok = torch.tensor([[-1.0, -2.0, -100.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert sequence_logps(tok, mask).tolist() == [-3.0, -1.5]
