"""Direct Preference Optimisation (sigmoid loss) on per-sequence log-probabilities."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of completion-token log-probs per sequence: ``[N, T], [N, T] -> [N]``."""
    return (token_logps * mask.to(token_logps.dtype)).sum(dim=-1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean DPO loss over pairs and its metrics (implicit rewards ``beta * (policy - ref)``).

    ``label_smoothing`` > 0 is conservative DPO: it assumes that fraction of preference labels is flipped.

    >>> loss, m = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta=1.0)
    >>> round(loss.item(), 4), m["rewards/margin"].item()
    (0.3133, 1.0)
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing: must be in [0, 0.5), got {label_smoothing}")
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen - rejected)
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    chosen_rewards = (beta * chosen).detach()
    rejected_rewards = (beta * rejected).detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
    }
    return losses.mean(), metrics
