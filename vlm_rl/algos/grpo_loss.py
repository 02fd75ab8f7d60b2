"""The GRPO policy loss: clipped importance-ratio surrogate + k3 KL to the reference, four aggregations.

Off-policy, the surrogate is decoupled PPO (docs/ARCHITECTURE.md, "Off-policy objective"): per token

    L_t = -w_t * min(r_t * A, clip(r_t, 1 - eps_low, 1 + eps_high) * A) + beta * k3(pi_theta, pi_ref),
    r_t = pi_theta(y_t) / pi_prox(y_t),   w_t = IS weight of pi_prox against the sampler (algos/importance.py)

where ``old_logp`` is log pi_prox (the learner before the batch's first update) and ``is_weights`` is w.

Aggregation decides how much each *token* weighs, which changes what the policy learns about length:

* ``grpo``: mean over a sequence's tokens, then over sequences (the paper; long answers' tokens weigh less).
* ``bnpo``: sum over all tokens / tokens in this batch (a per-micro-batch mean, by definition).
* ``dapo``: sum over all tokens / ``num_items_in_batch`` (the token count of the whole optimizer step,
  over gradient-accumulation micro-batches and ranks), so every token weighs the same; equals ``bnpo``
  when that count is this batch's.
* ``dr_grpo``: sum over all tokens / (sequences * ``max_completion_length``): a constant, no length bias.

Given the step's global normalisers (``num_items_in_batch`` for dapo, ``num_sequences_in_batch`` for grpo
and dr_grpo), the loss of a micro-batch is its *share* of the whole step's loss: the shares of every
micro-batch on every rank add up to the single-batch loss, whatever the micro-batch sizes. An engine that
divides each backward by the accumulation steps and averages gradients over ranks must then be handed
``loss * engine_loss_scale(...)``.
"""

from __future__ import annotations

from typing import Literal

import torch

from vlm_rl.algos.kl import kl_k3

LossType = Literal["grpo", "bnpo", "dapo", "dr_grpo"]
LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    eps_low: float,
    eps_high: float,
    loss_type: LossType = "dapo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | torch.Tensor | None = None,
    num_sequences_in_batch: int | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scalar loss and detached metrics for completion tokens ``[N, T]``.

    ``old_logp`` are the proximal policy's log-probs, the centre of the clip (``None``: ``logp`` detached,
    ratio 1 with gradient); ``ref_logp`` the reference model's (``None`` or ``beta == 0``: no KL term);
    ``is_weights`` (``[N, T]`` or ``[N, 1]``, >= 0, detached) multiply the clipped policy-gradient term of each
    token, not the KL term (``None``: 1).
    ``advantages`` is ``[N]`` (one per sequence) or ``[N, T]``. ``mask`` is 1 for completion tokens.
    Metrics: ``kl`` (masked mean k3, when ``ref_logp`` is given), ``clip_ratio`` (fraction of tokens whose
    gradient the clip removed), ``clip_ratio/low``, ``clip_ratio/high``, ``ratio`` (masked mean).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type: expected one of {LOSS_TYPES}, got {loss_type!r}")
    if logp.ndim != 2 or mask.shape != logp.shape:
        raise ValueError(f"mask: shape {tuple(mask.shape)} must equal logp's [N, T] {tuple(logp.shape)}")
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    if advantages.shape[0] != logp.shape[0]:
        raise ValueError(f"advantages: {advantages.shape[0]} rows for {logp.shape[0]} sequences")
    mask = mask.to(logp.dtype)
    advantages = advantages.to(logp.dtype)
    old = logp.detach() if old_logp is None else old_logp

    ratio = torch.exp(logp - old)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    if is_weights is not None:
        if is_weights.shape[0] != logp.shape[0] or is_weights.shape[1] not in (1, logp.shape[1]):
            raise ValueError(f"is_weights: shape {tuple(is_weights.shape)} does not broadcast to {tuple(logp.shape)}")
        per_token = per_token * is_weights.detach().to(logp.dtype)
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else None
    if kl is not None and beta > 0:
        per_token = per_token + beta * kl

    loss = _aggregate(per_token, mask, loss_type, max_completion_length, num_items_in_batch,
                      num_sequences_in_batch)

    with torch.no_grad():
        r, a = ratio.detach(), advantages.expand_as(ratio)
        low = ((r < 1 - eps_low) & (a < 0)).to(logp.dtype)
        high = ((r > 1 + eps_high) & (a > 0)).to(logp.dtype)
        metrics = {
            "clip_ratio/low": _masked_mean(low, mask),
            "clip_ratio/high": _masked_mean(high, mask),
            "clip_ratio": _masked_mean(low + high, mask),
            "ratio": _masked_mean(r, mask),
        }
        if kl is not None:
            metrics["kl"] = _masked_mean(kl.detach(), mask)
    return loss, metrics


def _aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    max_completion_length: int | None,
    num_items_in_batch: float | torch.Tensor | None,
    num_sequences_in_batch: int | None = None,
) -> torch.Tensor:
    masked = torch.where(mask > 0, per_token * mask, torch.zeros_like(per_token))
    sequences = per_token.shape[0] if num_sequences_in_batch is None else int(num_sequences_in_batch)
    if sequences < 1:
        raise ValueError(f"num_sequences_in_batch: must be >= 1, got {sequences}")
    if loss_type == "grpo":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum() / sequences
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1)
    if loss_type == "dapo":
        if num_items_in_batch is None:
            return masked.sum() / mask.sum().clamp(min=1)
        denom = torch.as_tensor(num_items_in_batch, dtype=masked.dtype, device=masked.device)
        return masked.sum() / denom.clamp(min=1)
    length = max_completion_length if max_completion_length is not None else per_token.shape[1]
    if length < 1:
        raise ValueError(f"max_completion_length: must be >= 1, got {length}")
    return masked.sum() / (sequences * length)


def engine_loss_scale(loss_type: str, world_size: int, accumulation: int) -> float:
    """The factor to multiply a micro-batch's loss by before ``engine.backward``.

    DeepSpeed (and ``LocalEngine``) divide every backward by ``accumulation`` and average gradients over
    the ``world_size`` data-parallel ranks. A loss computed with the step's global normalisers is already
    its share of the whole step's loss, so that division is undone. ``bnpo`` is a per-micro-batch mean:
    the engine's averaging of micro-batch means is its definition, so it is left alone.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type: expected one of {LOSS_TYPES}, got {loss_type!r}")
    return 1.0 if loss_type == "bnpo" else float(world_size * accumulation)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask > 0, values * mask, torch.zeros_like(values)).sum() / mask.sum().clamp(min=1)
