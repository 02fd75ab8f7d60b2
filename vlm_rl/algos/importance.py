"""Truncated importance sampling (TIS): correct for completions sampled by a policy other than the learner's.

The rollout side samples with weights that may be a few optimizer steps old (asynchronous GRPO,
``max_staleness > 0``) and, even on-policy, with different kernels and precision (static-cache decode, bf16,
the LoRA adapter folded into the base weights). The policy gradient wants tokens drawn from the learner's
policy; each token's term is therefore weighted by ``min(pi_learner / pi_sampler, cap)`` (Ionides' truncated
IS, as verl's ``rollout_is="token"`` with ``rollout_is_threshold`` and NeMo-RL's ``tis``). The weight is
detached (the learner's log-prob is taken before the update) and multiplies the clipped policy-gradient
term only, never the KL term. The cap bounds the variance a rare token with a tiny sampler probability would
add; tokens the sampler over-weighted get a weight below one, uncapped (verl: upper cap only).

Statistics come back as *sums* so micro-batches and ranks can be added before ``importance_metrics`` turns
them into the logged means (ratio before truncation, fraction clipped, mean |delta log-prob|).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: |log ratio| bound before ``exp`` (verl's SAFETY_BOUND): keeps a garbage log-prob from making inf/NaN.
LOG_RATIO_BOUND = 20.0

#: Keys of the sums ``truncated_is_weights`` returns, in a fixed order (one all-reduce of a vector).
SUM_KEYS = ("tokens", "ratio_sum", "clipped", "abs_diff_sum")
EXTREMA_KEYS = ("ratio_max", "ratio_min")


def truncated_is_weights(
    learner_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, cap: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token weights ``min(exp(learner - sampler), cap)`` (0 on padding) and their statistics.

    All tensors are ``[N, T]``; ``mask`` is 1 on completion tokens. The weights are detached.

    >>> w, s = truncated_is_weights(torch.tensor([[0.0, -1.0]]), torch.tensor([[-1.0, -1.0]]),
    ...                             torch.tensor([[1.0, 1.0]]), cap=2.0)
    >>> w.tolist(), s["clipped"].item(), round(s["ratio_max"].item(), 3)
    ([[2.0, 1.0]], 1.0, 2.718)
    """
    if cap < 1.0:
        raise ValueError(f"tis_cap: must be >= 1, got {cap}")
    if learner_logp.shape != sampler_logp.shape or mask.shape != learner_logp.shape:
        raise ValueError(f"truncated_is_weights: shapes differ: learner {tuple(learner_logp.shape)}, "
                         f"sampler {tuple(sampler_logp.shape)}, mask {tuple(mask.shape)}")
    with torch.no_grad():
        live = mask > 0
        diff = learner_logp.detach() - sampler_logp.to(learner_logp.dtype)
        ratio = torch.exp(diff.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND))
        weights = torch.where(live, ratio.clamp(max=cap), torch.zeros_like(ratio))
        m = live.to(ratio.dtype)
        inf = torch.tensor(float("inf"), dtype=ratio.dtype, device=ratio.device)
        stats = {
            "tokens": m.sum(),
            "ratio_sum": (ratio * m).sum(),
            "clipped": ((ratio > cap) & live).to(ratio.dtype).sum(),
            "abs_diff_sum": (diff.abs() * m).sum(),
            "ratio_max": torch.where(live, ratio, -inf).max() if ratio.numel() else -inf,
            "ratio_min": torch.where(live, ratio, inf).min() if ratio.numel() else inf,
        }
    return weights, stats


def add_stats(total: dict[str, torch.Tensor] | None, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Combine the statistics of two micro-batches (sums add, extrema take max/min)."""
    if total is None:
        return dict(part)
    out = {k: total[k] + part[k] for k in SUM_KEYS}
    out["ratio_max"] = torch.maximum(total["ratio_max"], part["ratio_max"])
    out["ratio_min"] = torch.minimum(total["ratio_min"], part["ratio_min"])
    return out


def importance_metrics(stats: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Logged metrics from (step-wide) statistics: ``tis/ratio_mean|max|min`` (before truncation),
    ``tis/clipped_fraction`` (tokens whose weight the cap cut) and ``tis/logp_diff_abs`` (mean |learner -
    sampler| log-prob per token)."""
    tokens = max(float(stats["tokens"]), 1.0)
    empty = float(stats["tokens"]) == 0
    return {
        "tis/ratio_mean": float(stats["ratio_sum"]) / tokens,
        "tis/ratio_max": 1.0 if empty else float(stats["ratio_max"]),
        "tis/ratio_min": 1.0 if empty else float(stats["ratio_min"]),
        "tis/clipped_fraction": float(stats["clipped"]) / tokens,
        "tis/logp_diff_abs": float(stats["abs_diff_sum"]) / tokens,
    }


def sampler_logprob_matrix(rows: Sequence[Sequence[float]], width: int,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Right-padded ``[len(rows), width]`` tensor of per-token sampler log-probs (padding 0)."""
    out = torch.zeros((len(rows), width), dtype=dtype)
    for r, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"sampling_logprobs: row {r} has {len(row)} log-probs for {width} token columns")
        if row:
            out[r, : len(row)] = torch.tensor(row, dtype=dtype)
    return out
