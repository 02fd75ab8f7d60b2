"""Importance sampling (IS) against the sampler: correct for completions sampled by a policy other than the learner's.

The rollout side samples with weights that may be a few optimizer steps old (asynchronous GRPO,
``max_staleness > 0``) and, even on-policy, with different kernels and precision (static-cache decode, bf16,
the LoRA adapter folded into the base weights). The policy gradient wants tokens drawn from the learner's
policy; each token's policy-gradient term is therefore weighted by a function of the ratio
``pi_learner / pi_sampler``. In the decoupled-PPO objective (docs/ARCHITECTURE.md, "Off-policy objective")
``pi_learner`` is the *proximal* policy: the learner before the batch's first update, so the weight is computed
once per batch and is detached. It multiplies the clipped policy-gradient term only, never the KL term.

Four modes (``tis_mode``; peers: TRL ``vllm_importance_sampling_mode``, verl ``rollout_is`` / ``rollout_rs``,
AReaL ``behav_imp_weight_mode``), with ``c = tis_cap``:

* ``token_truncate``: ``w_t = min(r_t, c)``, ``r_t = pi_learner(y_t) / pi_sampler(y_t)`` (Ionides' truncated
  IS; verl ``rollout_is="token"``, NeMo-RL ``tis``). Tokens the sampler over-weighted keep a weight below one.
* ``sequence_truncate``: one weight per completion, ``w = min(R, c)`` with ``R = prod_t r_t`` (the sequence's
  true likelihood ratio; verl ``rollout_is="sequence"``, TRL ``sequence_truncate``). Unbiased up to the cap but
  of high variance: a small per-token mismatch compounds over long completions.
* ``token_mask``: ``w_t = r_t`` if ``1/c <= r_t <= c`` else 0 (masked IS: the token leaves the policy gradient).
* ``sequence_mask``: ``w = R`` if ``1/c <= R <= c`` else 0 for every token of the completion.

Masking keeps the masked tokens in the loss's normaliser (TRL's choice; verl drops them from it): the weight
zeroes their policy-gradient term, the step's token count stays the one every rank agreed on.

Statistics come back as *sums* so micro-batches and ranks can be added before ``importance_metrics`` turns
them into the logged means (ratio before truncation, fraction cut, mean |delta log-prob|).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

#: |log ratio| bound before ``exp`` (verl's SAFETY_BOUND): keeps a garbage log-prob from making inf/NaN.
LOG_RATIO_BOUND = 20.0

ISMode = Literal["token_truncate", "sequence_truncate", "token_mask", "sequence_mask"]
IS_MODES = ("token_truncate", "sequence_truncate", "token_mask", "sequence_mask")

#: Keys of the sums ``importance_weights`` returns, in a fixed order (one all-reduce of a vector).
SUM_KEYS = ("tokens", "ratio_sum", "clipped", "abs_diff_sum", "sequences", "seq_ratio_sum", "cut_sequences")
#: Extrema: the ``MAX_KEYS`` reduce with max, the ``MIN_KEYS`` with min.
MAX_KEYS = ("ratio_max", "seq_ratio_max")
MIN_KEYS = ("ratio_min", "seq_ratio_min")
EXTREMA_KEYS = MAX_KEYS + MIN_KEYS


def importance_weights(
    learner_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, cap: float,
    mode: ISMode = "token_truncate",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token weights ``[N, T]`` for ``mode`` (0 on padding, detached) and their statistics.

    All tensors are ``[N, T]``; ``mask`` is 1 on completion tokens. ``clipped`` counts the tokens whose
    weight the mode changed (truncated, or masked); ``cut_sequences`` the completions a sequence mode cut.

    >>> lp, sp, m = torch.tensor([[0.0, -1.0]]), torch.tensor([[-1.0, -1.0]]), torch.tensor([[1.0, 1.0]])
    >>> w, s = importance_weights(lp, sp, m, cap=2.0)
    >>> w.tolist(), s["clipped"].item(), round(s["ratio_max"].item(), 3)
    ([[2.0, 1.0]], 1.0, 2.718)
    >>> importance_weights(lp, sp, m, cap=2.0, mode="token_mask")[0].tolist()
    [[0.0, 1.0]]
    >>> importance_weights(lp, sp, m, cap=3.0, mode="sequence_mask")[0].tolist()  # R = e^1 for both tokens
    [[2.7182817459106445, 2.7182817459106445]]
    """
    if cap < 1.0:
        raise ValueError(f"tis_cap: must be >= 1, got {cap}")
    if mode not in IS_MODES:
        raise ValueError(f"tis_mode: expected one of {IS_MODES}, got {mode!r}")
    if learner_logp.shape != sampler_logp.shape or mask.shape != learner_logp.shape:
        raise ValueError(f"importance_weights: shapes differ: learner {tuple(learner_logp.shape)}, "
                         f"sampler {tuple(sampler_logp.shape)}, mask {tuple(mask.shape)}")
    with torch.no_grad():
        live = mask > 0
        m = live.to(learner_logp.dtype)
        diff = torch.where(live, learner_logp.detach() - sampler_logp.to(learner_logp.dtype),
                           torch.zeros_like(learner_logp))
        ratio = torch.exp(diff.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND))
        seq_live = live.any(dim=1)
        seq_ratio = torch.exp(diff.sum(dim=1).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND))  # [N]
        per_sequence = mode.startswith("sequence")
        r = seq_ratio[:, None].expand_as(ratio) if per_sequence else ratio
        if mode.endswith("truncate"):
            cut = r > cap
            weights = r.clamp(max=cap)
        else:
            cut = (r > cap) | (r < 1.0 / cap)
            weights = torch.where(cut, torch.zeros_like(r), r)
        weights = torch.where(live, weights, torch.zeros_like(weights))
        cut = cut & live
        s = seq_live.to(ratio.dtype)
        stats = {
            "tokens": m.sum(),
            "ratio_sum": (ratio * m).sum(),
            "clipped": cut.to(ratio.dtype).sum(),
            "abs_diff_sum": (diff.abs() * m).sum(),
            "sequences": s.sum(),
            "seq_ratio_sum": (seq_ratio * s).sum(),
            "cut_sequences": (cut.any(dim=1) & seq_live).to(ratio.dtype).sum() if per_sequence else s.sum() * 0,
        }
        stats.update(_extremum(ratio, live, "ratio"))
        stats.update(_extremum(seq_ratio, seq_live, "seq_ratio"))
    return weights, stats


def truncated_is_weights(
    learner_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, cap: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``importance_weights`` in ``token_truncate`` mode: per-token ``min(exp(learner - sampler), cap)``."""
    return importance_weights(learner_logp, sampler_logp, mask, cap, "token_truncate")


def _extremum(values: torch.Tensor, live: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    inf = torch.tensor(float("inf"), dtype=values.dtype, device=values.device)
    if not values.numel():
        return {f"{name}_max": -inf, f"{name}_min": inf}
    return {f"{name}_max": torch.where(live, values, -inf).max(), f"{name}_min": torch.where(live, values, inf).min()}


def add_stats(total: dict[str, torch.Tensor] | None, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Combine the statistics of two micro-batches (sums add, extrema take max/min)."""
    if total is None:
        return dict(part)
    out = {k: total[k] + part[k] for k in SUM_KEYS}
    out.update({k: torch.maximum(total[k], part[k]) for k in MAX_KEYS})
    out.update({k: torch.minimum(total[k], part[k]) for k in MIN_KEYS})
    return out


def importance_metrics(stats: dict[str, float | torch.Tensor], mode: ISMode = "token_truncate") -> dict[str, float]:
    """Logged metrics from (step-wide) statistics.

    Every mode: ``tis/ratio_mean|max|min`` (per-token ratio before truncation or masking) and
    ``tis/logp_diff_abs`` (mean |learner - sampler| log-prob per token); ``tis/clipped_fraction`` (truncate
    modes) or ``tis/masked_fraction`` (mask modes): the fraction of tokens whose weight the mode cut.
    Sequence modes add ``tis/seq_ratio_mean|max|min`` and ``tis/seq_clipped_fraction`` or
    ``tis/seq_masked_fraction`` (the fraction of completions cut).
    """
    tokens = max(float(stats["tokens"]), 1.0)
    empty = float(stats["tokens"]) == 0
    cut = "clipped" if mode.endswith("truncate") else "masked"
    out = {
        "tis/ratio_mean": float(stats["ratio_sum"]) / tokens,
        "tis/ratio_max": 1.0 if empty else float(stats["ratio_max"]),
        "tis/ratio_min": 1.0 if empty else float(stats["ratio_min"]),
        f"tis/{cut}_fraction": float(stats["clipped"]) / tokens,
        "tis/logp_diff_abs": float(stats["abs_diff_sum"]) / tokens,
    }
    if mode.startswith("sequence"):
        sequences = max(float(stats["sequences"]), 1.0)
        out.update({
            "tis/seq_ratio_mean": float(stats["seq_ratio_sum"]) / sequences,
            "tis/seq_ratio_max": 1.0 if empty else float(stats["seq_ratio_max"]),
            "tis/seq_ratio_min": 1.0 if empty else float(stats["seq_ratio_min"]),
            f"tis/seq_{cut}_fraction": float(stats["cut_sequences"]) / sequences,
        })
    return out


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
