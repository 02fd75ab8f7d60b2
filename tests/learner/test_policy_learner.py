"""PolicyLearner: prefetched encoding, one optimizer step per GRPO/SFT step, micro-batches that weigh like one
batch, and the frozen KL reference under full fine-tuning (issue 15)."""

from __future__ import annotations

import pytest
import torch

from vlm_rl.config import GRPOConfig
from vlm_rl.data.schema import load_jsonl
from vlm_rl.learner.local_engine import LocalEngine
from vlm_rl.learner.policy import build_policy
from vlm_rl.learner.policy_learner import PolicyLearner
from vlm_rl.rollout.types import Completion, PromptItem


def _learner(config: GRPOConfig, accumulation: int = 2) -> PolicyLearner:
    torch.manual_seed(0)
    model, processor, family = build_policy(config)
    return PolicyLearner(LocalEngine(model, config, "cpu", accumulation=accumulation), processor, family, config,
                         None, micro_batch_size=3)


def _step_inputs(dataset, n: int = 7):
    """Two prompts, ``n`` completions of unequal lengths (the last micro-batch is a short one)."""
    items = [PromptItem.from_sample(s) for s in load_jsonl(dataset).samples[:2]]
    completions = [Completion(prompt_index=i * 2 // n, sample_id=items[i * 2 // n].sample_id, text="",
                              completion_ids=[15 + i] * (1 + (3 * i) % 5), rewards={"total": 0.0}) for i in range(n)]
    advantages = torch.linspace(-1.0, 1.0, n)
    return items, completions, advantages


def test_prefetched_encoding_gives_the_same_step(tiny_model_dir, synthetic_dataset, tmp_path):
    config = GRPOConfig(model_path=str(tiny_model_dir), train_data=str(synthetic_dataset[0]), num_learners=1,
                        lora_r=8, beta=0.0, max_new_tokens=8, max_image_size=96, prompts_per_step=2,
                        num_generations=3, rollout_mode="colocated", output_dir=str(tmp_path), learning_rate=1e-3)
    items = [PromptItem.from_sample(s) for s in load_jsonl(synthetic_dataset[0]).samples[:2]]
    completions = [Completion(prompt_index=i // 3, sample_id=items[i // 3].sample_id, text="",
                              completion_ids=[15 + i] * (1 + i % 3), rewards={"total": 0.0}) for i in range(6)]
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.25, -0.25])

    plain = _learner(config).grpo_step(items, completions, advantages)
    learner = _learner(config)
    learner.prefetch(items)
    future = learner._prefetch.pending[1]
    ahead = learner.grpo_step(items, completions, advantages)
    assert future.done() and learner._prefetch.pending is None  # the prefetched encoding was the one used
    assert ahead["loss"] == pytest.approx(plain["loss"], rel=1e-6, abs=1e-9)
    assert ahead["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-6)
    learner.prefetch(items[:1])  # a prefetch for other prompts is not used for these
    assert learner.grpo_step(items, completions, advantages)["grad_norm"] > 0


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_weigh_like_one_batch_and_take_one_optimizer_step(tiny_model_dir, synthetic_dataset, tmp_path,
                                                                         loss_type):
    """7 completions in 3 micro-batches (3, 2, 2 sequences of unequal lengths) give one batch's loss and
    gradient norm, in one optimizer step; so does an SFT step with fewer prompts than micro-batches."""
    config = GRPOConfig(model_path=str(tiny_model_dir), train_data=str(synthetic_dataset[0]), num_learners=1,
                        lora_r=8, beta=0.0, max_new_tokens=8, max_image_size=64, prompts_per_step=2,
                        num_generations=3, rollout_mode="colocated", output_dir=str(tmp_path), learning_rate=1e-3,
                        loss_type=loss_type, disable_gradient_checkpointing=True)
    items, completions, advantages = _step_inputs(synthetic_dataset[0])
    one, three = _learner(config, accumulation=1), _learner(config, accumulation=3)
    want = one.grpo_step(items, completions, advantages)
    got = three.grpo_step(items, completions, advantages)
    assert one.engine.global_steps == three.engine.global_steps == 1
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-7)
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    targets = [[15, 16, 17], [18]]
    assert three.sft_step(items, targets)["sft_loss"] == pytest.approx(one.sft_step(items, targets)["sft_loss"],
                                                                       rel=1e-5)
    assert one.engine.global_steps == three.engine.global_steps == 2  # 2 prompts, 3 micro-batches: still one


def test_full_fine_tuning_measures_kl_to_a_frozen_reference(tiny_model_dir, synthetic_dataset, tmp_path):
    """lora_r=0, beta>0: KL is exactly 0 before any update and > 0 after one (it was 0 forever: the
    'reference' forward used to be the current policy again)."""
    config = GRPOConfig(model_path=str(tiny_model_dir), train_data=str(synthetic_dataset[0]), num_learners=1,
                        lora_r=0, beta=0.04, max_new_tokens=8, max_image_size=64, prompts_per_step=2,
                        num_generations=3, rollout_mode="colocated", output_dir=str(tmp_path), learning_rate=1e-3,
                        disable_gradient_checkpointing=True)
    items, completions, advantages = _step_inputs(synthetic_dataset[0], n=6)
    learner = _learner(config)
    first = learner.grpo_step(items, completions, advantages)
    reference = learner.reference
    assert reference is not None and reference.kind == "frozen-copy"
    assert first["kl"] == 0.0
    assert first["grad_norm"] > 0
    second = learner.grpo_step(items, completions, advantages)
    assert learner.reference is reference  # taken once, at GRPO start
    assert second["kl"] > 1e-6, second
    policy_bytes = sum(p.numel() * p.element_size() for p in learner.engine.module.parameters())
    assert reference.reference_bytes() == policy_bytes  # a whole copy in the training dtype (fp32 here)
    assert not any(p.requires_grad for p in reference.module.parameters())

    lora = _learner(config.model_copy(update={"lora_r": 8}))
    lora.grpo_step(items, completions, advantages)
    assert lora.reference is None  # LoRA: the adapter-off network is the reference, no copy


def test_shared_prompt_forward_gives_the_same_step(tiny_model_dir, synthetic_dataset, tmp_path):
    """The learner's step with each group's prompt run once (share_prompt_forward, the default) equals the
    row-per-completion step: loss, KL to the adapter-off reference (beta > 0) and gradient norm."""
    base = dict(model_path=str(tiny_model_dir), train_data=str(synthetic_dataset[0]), num_learners=1, lora_r=8,
                beta=0.04, max_new_tokens=8, max_image_size=64, prompts_per_step=2, num_generations=3,
                rollout_mode="colocated", output_dir=str(tmp_path), learning_rate=1e-3,
                disable_gradient_checkpointing=True)
    items, completions, advantages = _step_inputs(synthetic_dataset[0])
    steps = []
    for share in (False, True):
        learner = _learner(GRPOConfig(**base, share_prompt_forward=share))
        steps.append([learner.grpo_step(items, completions, advantages) for _ in range(2)])
    (plain_1, plain_2), (shared_1, shared_2) = steps
    assert shared_1["kl"] == plain_1["kl"] == 0.0  # the step-1 policy is the reference
    assert shared_2["kl"] == pytest.approx(plain_2["kl"], rel=1e-3) and plain_2["kl"] > 0
    for want, got in ((plain_1, shared_1), (plain_2, shared_2)):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-7)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-3)
