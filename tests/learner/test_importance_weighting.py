"""The learner's truncated importance-sampling correction on a real tiny model (LocalEngine, CPU).

With the sampler's log-probs shifted by a constant c below the learner's, every token's weight is
min(e^c, cap): the step's gradient is the uncorrected one times that weight, exactly, and the logged
statistics say so.
"""

from __future__ import annotations

import math

import pytest
import torch

from vlm_rl.config import GRPOConfig
from vlm_rl.data.schema import load_jsonl
from vlm_rl.learner.local_engine import LocalEngine
from vlm_rl.learner.policy import build_policy, completion_logprobs
from vlm_rl.learner.policy_learner import PolicyLearner
from vlm_rl.rollout.types import Completion, PromptItem


@pytest.fixture(scope="module")
def setup(tiny_model_dir, synthetic_dataset, tmp_path_factory):
    config = GRPOConfig(model_path=str(tiny_model_dir), train_data=str(synthetic_dataset[0]), num_learners=1,
                        lora_r=8, beta=0.0, max_new_tokens=8, max_image_size=64, prompts_per_step=2,
                        num_generations=3, output_dir=str(tmp_path_factory.mktemp("tis")), learning_rate=1e-3,
                        tis_cap=2.0)
    items = [PromptItem.from_sample(s) for s in load_jsonl(synthetic_dataset[0]).samples[:2]]
    completions = [Completion(prompt_index=i // 3, sample_id=items[i // 3].sample_id, text="",
                              completion_ids=[15 + i] * (1 + i % 3), rewards={"total": 0.0}) for i in range(6)]
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.25, -0.25])
    learner = _learner(config)
    batch = learner._inputs([items[c.prompt_index] for c in completions], [c.completion_ids for c in completions])
    with torch.no_grad():
        logp = completion_logprobs(learner.engine, batch, config.temperature)
    own = [logp[r, : len(c.completion_ids)].tolist() for r, c in enumerate(completions)]
    plain = learner.grpo_step(items, completions, advantages)  # no sampler log-probs: no correction
    return config, items, completions, advantages, own, plain


def _learner(config: GRPOConfig) -> PolicyLearner:
    torch.manual_seed(0)
    model, processor, family = build_policy(config)
    return PolicyLearner(LocalEngine(model, config, "cpu", accumulation=2), processor, family, config, None,
                         micro_batch_size=3)


def _step(config, items, completions, advantages, sampler_logps):
    with_logps = [Completion(**{**c.__dict__, "sampling_logprobs": lp}) for c, lp in zip(completions, sampler_logps)]
    return _learner(config).grpo_step(items, with_logps, advantages)


def test_no_sampler_logprobs_no_correction(setup):
    plain = setup[-1]
    assert plain["grad_norm"] > 0 and not any(k.startswith("tis/") for k in plain)


@pytest.mark.parametrize("shift,weight,clipped", [(0.0, 1.0, 0.0), (math.log(1.5), 1.5, 0.0),
                                                  (math.log(3.0), 2.0, 1.0)])
def test_gradient_is_scaled_by_the_truncated_weight(setup, shift, weight, clipped):
    config, items, completions, advantages, own, plain = setup
    metrics = _step(config, items, completions, advantages, [[v - shift for v in row] for row in own])
    assert metrics["grad_norm"] == pytest.approx(weight * plain["grad_norm"], rel=1e-4)
    assert metrics["tis/ratio_mean"] == pytest.approx(math.exp(shift), rel=1e-4)
    assert metrics["tis/ratio_min"] <= metrics["tis/ratio_mean"] * (1 + 1e-6)
    assert metrics["tis/ratio_mean"] <= metrics["tis/ratio_max"] * (1 + 1e-6)
    assert metrics["tis/clipped_fraction"] == clipped
    assert metrics["tis/logp_diff_abs"] == pytest.approx(shift, abs=1e-4)


def test_mismatched_logprob_count_is_named(setup):
    config, items, completions, advantages, own, _ = setup
    bad = [row + [-1.0] if r == 2 else row for r, row in enumerate(own)]
    with pytest.raises(ValueError, match=r"sampling_logprobs: a completion of sample .* has 4 log-probs for 3 tokens"):
        _step(config, items, completions, advantages, bad)
