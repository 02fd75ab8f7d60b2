"""The one rollout engine: its sampler log-probs are the learner's log-probs of the same tokens (CPU, float32),
for the static decoder and for HF generate, with and without a LoRA adapter, at a temperature other than 1."""

from __future__ import annotations

import pytest
import torch

from vlm_rl.data.schema import load_jsonl
from vlm_rl.learner.policy import completion_logprobs
from vlm_rl.models.loading import load_model, load_processor
from vlm_rl.models.prompts import build_policy_inputs
from vlm_rl.rollout.engine import RolloutEngine, prepare_prompt
from vlm_rl.rollout.types import PromptItem


def _policy(model_dir, lora: bool):
    model = load_model(model_dir)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger weights than the tiny model's: varied, confident and unconfident tokens
        for name, p in model.named_parameters():
            if "language_model" in name and p.ndim == 2 and "embed" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    if lora:
        from peft import get_peft_model

        from vlm_rl.models.lora import lora_config

        model = get_peft_model(model, lora_config(4, 8))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.mark.parametrize(("engine", "lora", "family_fixture"), [
    ("fast", False, "tiny_model_dir"), ("fast", True, "tiny_model_dir"), ("hf", True, "tiny_model_dir"),
    ("fast", False, "tiny_qwen25_dir"), ("hf", False, "tiny_qwen25_dir"),
])
def test_sampler_logprobs_equal_learner_logprobs(request, engine, lora, family_fixture, synthetic_dataset):
    model_dir = request.getfixturevalue(family_fixture)
    processor, model = load_processor(model_dir), _policy(model_dir, lora)
    family = model.config.model_type
    items = [PromptItem.from_sample(s) for s in load_jsonl(synthetic_dataset[0]).samples[:2]]
    sampler = RolloutEngine(model, processor, family, labels=None, max_image_size=96, max_new_tokens=10,
                            min_new_tokens=10, temperature=0.7, top_p=0.9, seed=3, engine=engine, batch_size=3)
    assert sampler.engine == engine
    out = sampler.generate(items, 3, step=1, indices=[5, 6])
    completions = out["completions"]
    assert [c.prompt_index for c in completions] == [5, 5, 5, 6, 6, 6]  # two sampling batches (3 rows each)
    assert all(len(c.sampling_logprobs) == len(c.completion_ids) == 10 for c in completions)

    images = [prepare_prompt(item, 96, family)[0] for item in items]
    batch = build_policy_inputs(processor, images, sampler.instruction, [c.completion_ids for c in completions],
                                repeats=3)
    with torch.no_grad():
        learner = completion_logprobs(model, batch, temperature=0.7)
    sampled = torch.tensor([c.sampling_logprobs for c in completions])
    assert (sampled < 0).all() and sampled.std() > 0.01  # real, varied log-probs (not zeros, not constant)
    assert torch.allclose(sampled, learner, atol=2e-4, rtol=0), (sampled - learner).abs().max()
