"""Group-relative advantages: how much better a completion did than its siblings from the same prompt."""

from __future__ import annotations

from typing import Literal

import torch

Scale = Literal["group", "batch", "none"]


def group_advantages(
    rewards: torch.Tensor, num_generations: int, scale: Scale = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Advantages of ``rewards[B * G]`` laid out prompt-major (the G completions of a prompt are adjacent).

    Each reward is centred on its group's mean, then divided by the group's (unbiased) std ("group",
    GRPO), the whole batch's std ("batch", less noisy for small groups) or nothing ("none", Dr. GRPO).
    A group whose completions all scored the same gets zero advantage: it carries no learning signal.

    >>> group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), 2, scale="none")
    tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards: expected a 1-D tensor [B*G], got shape {tuple(rewards.shape)}")
    if num_generations < 2:
        raise ValueError(f"num_generations: must be >= 2 for group-relative advantages, got {num_generations}")
    if rewards.numel() % num_generations:
        raise ValueError(f"rewards: {rewards.numel()} values is not a multiple of num_generations={num_generations}")
    grouped = rewards.view(-1, num_generations)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.std() + eps) if rewards.numel() > 1 else centred
    elif scale != "none":
        raise ValueError(f"scale: expected 'group', 'batch' or 'none', got {scale!r}")
    return centred.reshape(-1)


def zero_std_fraction(rewards: torch.Tensor, num_generations: int) -> float:
    """Fraction of groups whose rewards are all equal (no learning signal): a health signal worth logging."""
    grouped = rewards.view(-1, num_generations)
    return float((grouped.max(dim=1).values == grouped.min(dim=1).values).float().mean())
