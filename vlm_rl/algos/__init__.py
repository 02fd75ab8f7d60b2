"""Pure tensor algorithms (no Ray, no transformers): advantages, log-probs, KL, GRPO and DPO losses."""

from vlm_rl.algos.advantages import group_advantages, zero_std_fraction
from vlm_rl.algos.dpo_loss import dpo_loss, sequence_logps
from vlm_rl.algos.grpo_loss import LOSS_TYPES, grpo_loss
from vlm_rl.algos.kl import kl_k1, kl_k2, kl_k3
from vlm_rl.algos.logprobs import chunked_token_logprobs, selective_log_softmax

__all__ = [
    "LOSS_TYPES",
    "chunked_token_logprobs",
    "dpo_loss",
    "group_advantages",
    "grpo_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "selective_log_softmax",
    "sequence_logps",
    "zero_std_fraction",
]
