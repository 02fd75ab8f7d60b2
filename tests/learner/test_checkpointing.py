"""``gradient_checkpointing: auto`` (learner/checkpointing.py) and the seed script's DISABLE_GRADIENT_CHECKPOINTING."""

from __future__ import annotations

import pytest
import torch

from vlm_rl.config import ConfigError, GRPOConfig, SFTConfig, load_config
from vlm_rl.learner.checkpointing import activation_bytes, decide, micro_batch_shape
from vlm_rl.learner.policy import build_policy
from vlm_rl.models.loading import load_model


def test_auto_is_the_default_and_the_seed_knob_maps_onto_it(tmp_path):
    assert GRPOConfig().gradient_checkpointing == "auto"
    assert GRPOConfig(disable_gradient_checkpointing=True).gradient_checkpointing is False
    assert GRPOConfig(disable_gradient_checkpointing=False).gradient_checkpointing is True
    env = load_config(GRPOConfig, None, [], env={"DISABLE_GRADIENT_CHECKPOINTING": "true"})
    assert env.gradient_checkpointing is False
    dumped = GRPOConfig(disable_gradient_checkpointing=True)
    assert GRPOConfig.model_validate(dumped.model_dump()).gradient_checkpointing is False  # round-trips
    with pytest.raises((ValueError, ConfigError), match="gradient_checkpointing: True contradicts"):
        GRPOConfig(gradient_checkpointing=True, disable_gradient_checkpointing=True)


def test_the_activation_model_counts_the_shared_prompt_once_and_float32_twice():
    text = load_model("tiny-qwen3-vl").config.text_config
    unshared = activation_bytes(text, 8, 300, 100, torch.bfloat16)
    shared = activation_bytes(text, 8, 300, 100, torch.bfloat16, shared_prompt=True, group=4)
    fp32 = activation_bytes(text, 8, 300, 100, torch.float32)
    logits = 8 * 100 * text.vocab_size * 6
    assert shared < unshared
    assert unshared - logits == pytest.approx(8 * 400 * text.hidden_size * 34 * text.num_hidden_layers)
    assert fp32 - logits == pytest.approx(2 * (unshared - logits))


def test_micro_batch_is_a_ranks_share_per_optimizer_step():
    config = GRPOConfig(num_learners=2, prompts_per_step=8, num_generations=4, steps_per_generation=2,
                        max_image_size=512, max_new_tokens=256)
    assert micro_batch_shape(config) == (8, 16 * 16 + 80, 256)  # 8 prompts / 2 ranks x 4 / 2 mini-batches
    assert micro_batch_shape(config.model_copy(update={"micro_batch_size": 2}))[0] == 2
    assert micro_batch_shape(SFTConfig(num_learners=2, batch_size=8))[0] == 4


def test_auto_turns_it_on_only_when_the_micro_batch_would_not_fit():
    model = load_model("tiny-qwen3-vl")
    config = GRPOConfig(num_learners=1, prompts_per_step=4, num_generations=4, max_image_size=96)
    roomy = decide(config, model, "cpu", available=8e9)
    tight = decide(config, model, "cpu", available=roomy.need_gb * 1e9)  # needs more than 80 % of that
    assert not roomy.enabled and tight.enabled
    assert "auto:" in tight.reason and "→ on" in tight.reason and "→ off" in roomy.reason
    assert decide(config.model_copy(update={"gradient_checkpointing": True}), model, "cpu", available=8e9).enabled
    on_this_machine = decide(config, model, "cpu")  # a 10 M-parameter model: this host has room
    assert not on_this_machine.enabled and on_this_machine.available_gb > 0


def test_build_policy_applies_the_decision():
    off, _, _ = build_policy(GRPOConfig(num_learners=1, lora_r=8))  # auto on a tiny model: off
    on, _, _ = build_policy(GRPOConfig(num_learners=1, lora_r=8, gradient_checkpointing=True))
    assert not off.base_model.model.is_gradient_checkpointing
    assert on.base_model.model.is_gradient_checkpointing
