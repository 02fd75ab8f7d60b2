"""Several updates per generation batch on the tiny Qwen3-VL (LocalEngine, CPU), issue 25: the clip acts where the
learner has moved away from the proximal policy (the second pass, the second mini-batch) and nowhere else; the
proximal log-probs are taken once, before the first update; the sampler's IS weights use them."""

from __future__ import annotations

import pytest
import torch

import vlm_rl.learner.policy_learner as policy_learner
from vlm_rl.config import GRPOConfig
from vlm_rl.data.schema import load_jsonl
from vlm_rl.learner.local_engine import LocalEngine
from vlm_rl.learner.policy import build_policy
from vlm_rl.learner.policy_learner import PolicyLearner
from vlm_rl.rollout.types import Completion, PromptItem


@pytest.fixture(scope="module")
def setup(tiny_model_dir, synthetic_dataset, tmp_path_factory):
    config = GRPOConfig(model_path=str(tiny_model_dir), train_data=str(synthetic_dataset[0]), num_learners=1,
                        lora_r=8, beta=0.0, max_new_tokens=8, max_image_size=64, prompts_per_step=2,
                        num_generations=3, output_dir=str(tmp_path_factory.mktemp("ppo")), learning_rate=3e-2,
                        disable_gradient_checkpointing=True)
    items = [PromptItem.from_sample(s) for s in load_jsonl(synthetic_dataset[0]).samples[:2]]
    completions = [Completion(prompt_index=i // 3, sample_id=items[i // 3].sample_id, text="",
                              completion_ids=[15 + i] * (2 + i % 3), rewards={"total": 0.0}) for i in range(6)]
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.25, -0.25])
    return config, items, completions, advantages


def _run(setup, accumulation: int = 1, completions=None, **changes):
    """One grpo_step of a fresh learner (same seed, same weights); its metrics and trained parameters."""
    config, items, default, advantages = setup
    config = config.model_copy(update=changes)
    torch.manual_seed(0)
    model, processor, family = build_policy(config)
    learner = PolicyLearner(LocalEngine(model, config, "cpu", accumulation=accumulation), processor, family, config,
                            None)
    metrics = learner.grpo_step(items, completions or default, advantages)
    trained = [p.detach().clone() for p in learner.engine.params]
    return metrics, trained, learner.engine.global_steps


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_one_update_per_batch_the_clip_never_acts(setup):
    """On-policy, one pass: epsilon 0.01 and 0.2 train bit-identical weights; clip_ratio 0."""
    tight, tight_w, steps = _run(setup, epsilon=0.01)
    loose, loose_w, _ = _run(setup, epsilon=0.2)
    assert steps == 1 and tight["clip_ratio"] == loose["clip_ratio"] == 0.0
    assert tight["grad_norm"] == loose["grad_norm"] > 0 and _same(tight_w, loose_w)


def test_second_pass_is_off_policy_and_the_clip_fires(setup):
    """num_iterations=2: pass 1 has ratio 1 (nothing clipped); pass 2 runs after an update, its ratio is not 1,
    epsilon 0.01 clips tokens and trains other weights than epsilon 0.2."""
    tight, tight_w, steps = _run(setup, num_iterations=2, epsilon=0.01)
    loose, loose_w, _ = _run(setup, num_iterations=2, epsilon=0.2)
    assert steps == 2
    assert tight["clip_ratio/pass_1"] == loose["clip_ratio/pass_1"] == 0.0
    assert tight["clip_ratio/pass_2"] > 0.1, tight
    assert tight["clip_ratio"] == pytest.approx(tight["clip_ratio/pass_2"] / 2)
    assert loose["clip_ratio/pass_2"] < tight["clip_ratio/pass_2"]
    assert not _same(tight_w, loose_w) and tight["grad_norm"] != loose["grad_norm"]


def test_mini_batches_take_proximal_log_probs_once_before_the_first_update(setup, monkeypatch):
    """steps_per_generation=2 x num_iterations=2 (2 micro-batches per update): 4 optimizer steps; forwards =
    one no-grad pass over the second mini-batch (its pi_prox, before the first update) + one per micro-batch per
    update: the proximal log-probs are not recomputed on later passes. The second mini-batch trains after an
    update, so the clip fires already in pass 1."""
    calls = []
    forward = policy_learner.completion_logprobs

    def counted(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return forward(*args, **kwargs)

    monkeypatch.setattr(policy_learner, "completion_logprobs", counted)
    metrics, _, steps = _run(setup, accumulation=2, num_iterations=2, steps_per_generation=2, epsilon=0.01)
    assert steps == 4
    assert calls.count(False) == 2 and calls.count(True) == 2 * 2 * 2, calls
    assert metrics["clip_ratio/pass_1"] > 0 and metrics["clip_ratio/pass_2"] > 0


def test_sampler_correction_uses_the_proximal_policy_in_every_mode(setup):
    """Sampler log-probs one nat below the learner's (a stale or lower-precision sampler): ratio e on every token.
    Truncation at 2 scales the policy gradient by 2; masking outside [1/2, 2] removes it (grad_norm 0 with beta 0)."""
    config, items, completions, advantages = setup
    torch.manual_seed(0)
    model, processor, family = build_policy(config)
    learner = PolicyLearner(LocalEngine(model, config, "cpu"), processor, family, config, None)
    batch = learner._inputs([items[c.prompt_index] for c in completions], [c.completion_ids for c in completions])
    with torch.no_grad():
        logp = policy_learner.completion_logprobs(learner.engine, batch, config.temperature)
    shifted = [Completion(**{**c.__dict__, "sampling_logprobs": [v - 1.0 for v in logp[r, : len(c.completion_ids)]]})
               for r, c in enumerate(completions)]
    plain, _, _ = _run(setup)
    truncated, _, _ = _run(setup, completions=shifted)
    assert truncated["tis/clipped_fraction"] == 1.0 and truncated["tis/ratio_mean"] == pytest.approx(2.718, rel=1e-3)
    assert truncated["grad_norm"] == pytest.approx(2 * plain["grad_norm"], rel=1e-4)
    masked, _, _ = _run(setup, completions=shifted, tis_mode="sequence_mask")
    assert masked["tis/masked_fraction"] == masked["tis/seq_masked_fraction"] == 1.0 and masked["grad_norm"] == 0.0
