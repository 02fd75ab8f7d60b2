"""Group advantages against a loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_rl.algos.advantages import group_advantages, zero_std_fraction


def reference(rewards, g, scale, eps):
    out = []
    all_mean = sum(rewards) / len(rewards)
    batch_std = math.sqrt(sum((r - all_mean) ** 2 for r in rewards) / (len(rewards) - 1))
    for start in range(0, len(rewards), g):
        group = rewards[start:start + g]
        mean = sum(group) / g
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (g - 1))
        for r in group:
            denom = {"group": std + eps, "batch": batch_std + eps, "none": 1.0}[scale]
            out.append((r - mean) / denom)
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("g", [2, 4, 8])
def test_matches_reference_and_is_zero_mean_per_group(scale, g):
    torch.manual_seed(g)
    rewards = torch.rand(5 * g, dtype=torch.float64) * 2
    adv = group_advantages(rewards, g, scale=scale, eps=1e-4)
    assert adv.tolist() == pytest.approx(reference(rewards.tolist(), g, scale, 1e-4), abs=1e-10)
    assert adv.view(-1, g).sum(dim=1).abs().max() < 1e-10


def test_equal_rewards_give_zero_advantage():
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5]), 3)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert zero_std_fraction(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5]), 3) == 0.5


def test_group_scaling_gives_unit_std():
    adv = group_advantages(torch.tensor([0.0, 1.0, 2.0, 3.0]), 4, eps=0.0)
    assert adv.std().item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("rewards", "g", "scale", "match"),
    [
        (torch.zeros(5), 2, "group", "multiple"),
        (torch.zeros(4), 1, "group", "num_generations"),
        (torch.zeros(2, 2), 2, "group", "1-D"),
        (torch.zeros(4), 2, "median", "scale"),
    ],
)
def test_bad_arguments(rewards, g, scale, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, g, scale=scale)
