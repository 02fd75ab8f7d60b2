"""PolicyLearner's step from prompts encoded ahead of time equals the step that encodes them itself."""

from __future__ import annotations

import pytest
import torch

from vlm_rl.config import GRPOConfig
from vlm_rl.data.schema import load_jsonl
from vlm_rl.learner.local_engine import LocalEngine
from vlm_rl.learner.policy import build_policy
from vlm_rl.learner.policy_learner import PolicyLearner
from vlm_rl.rollout.types import Completion, PromptItem


def _learner(config: GRPOConfig) -> PolicyLearner:
    torch.manual_seed(0)
    model, processor, family = build_policy(config)
    return PolicyLearner(LocalEngine(model, config, "cpu"), processor, family, config, None, micro_batch_size=3)


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
