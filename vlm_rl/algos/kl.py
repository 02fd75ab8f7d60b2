"""Per-token estimators of KL(policy || reference) from sampled tokens (Schulman's k1, k2, k3).

k3 is the one GRPO uses: unbiased, always >= 0, and low-variance when the two policies are close.
"""

from __future__ import annotations

import torch

#: Bound on log(ref/policy) before exponentiating: one extreme token must not turn the loss into inf.
LOG_RATIO_CLAMP = 20.0


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``logp - ref_logp``: unbiased, but negative for some samples and high-variance."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``0.5 * (logp - ref_logp)**2``: >= 0, biased, low variance."""
    return 0.5 * (logp - ref_logp).square()


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``exp(r) - r - 1`` with ``r = ref_logp - logp`` clamped to +-20: >= 0, unbiased, zero when equal.

    >>> kl_k3(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.0]))
    tensor([0.0000, 0.7183])
    """
    log_ratio = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    # expm1: exp(r) - 1 without cancellation, so a small KL (r ~ 1e-4) stays positive in fp32 / bf16
    return torch.expm1(log_ratio) - log_ratio
