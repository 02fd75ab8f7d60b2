"""The one LoRA configuration shared by learners and rollout actors, so adapter weights line up."""

from __future__ import annotations

from peft import LoraConfig

#: Language-model projections only: the vision tower stays frozen, as in the usual Qwen-VL LoRA recipes.
LANGUAGE_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def lora_config(rank: int, alpha: int, dropout: float = 0.0) -> LoraConfig:
    """LoRA on the language model's attention and MLP projections."""
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LANGUAGE_TARGETS, bias="none")
