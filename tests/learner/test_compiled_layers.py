"""Regional compile of the decoder layers for the learner: same step as eager, and switched off afterwards."""

from __future__ import annotations

import pytest
import torch

from vlm_rl.config import GRPOConfig
from vlm_rl.data.schema import load_jsonl
from vlm_rl.learner.compiled_layers import text_decoder_layers
from vlm_rl.learner.local_engine import LocalEngine
from vlm_rl.learner.policy import build_policy
from vlm_rl.learner.policy_learner import PolicyLearner
from vlm_rl.rollout.types import Completion, PromptItem


def _step(config: GRPOConfig, items, completions, advantages):
    torch.manual_seed(0)
    model, processor, family = build_policy(config)
    with torch.no_grad():  # a non-zero adapter so the update depends on every layer's LoRA path
        gen = torch.Generator().manual_seed(3)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    engine = LocalEngine(model, config, "cpu")
    learner = PolicyLearner(engine, processor, family, config, None, micro_batch_size=2)
    metrics = learner.grpo_step(items, completions, advantages)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return metrics, weights, learner


@pytest.mark.slow
def test_compiled_layers_step_matches_eager(tiny_model_dir, synthetic_dataset, tmp_path):
    base = dict(model_path=str(tiny_model_dir), train_data=str(synthetic_dataset[0]), num_learners=1, lora_r=8,
                beta=0.1, loss_type="dapo", max_new_tokens=16, max_image_size=96, prompts_per_step=1,
                num_generations=4, rollout_mode="colocated", output_dir=str(tmp_path), learning_rate=1e-3,
                gradient_checkpointing=True)  # (auto would turn it off here: this checks it inside the compiled layer)
    items = [PromptItem.from_sample(load_jsonl(synthetic_dataset[0]).samples[0])]
    completions = [Completion(prompt_index=0, sample_id=items[0].sample_id, text="", completion_ids=ids,
                              rewards={"total": 0.0}) for ids in ([15, 16, 17, 18], [19, 20], [21, 22, 23], [24])]
    advantages = torch.tensor([1.0, -0.5, 0.25, -0.75])
    eager_metrics, eager_weights, _ = _step(GRPOConfig(**base), items, completions, advantages)
    metrics, weights, learner = _step(GRPOConfig(**base, compile_layers=True), items, completions, advantages)

    assert learner.compiled.enabled
    assert metrics["loss"] == pytest.approx(eager_metrics["loss"], rel=1e-4, abs=1e-6)
    assert metrics["grad_norm"] == pytest.approx(eager_metrics["grad_norm"], rel=1e-3)
    assert metrics["kl"] > 1e-6 and metrics["kl"] == pytest.approx(eager_metrics["kl"], rel=1e-3)  # reference pass
    for name, value in eager_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-6)
    # outside the learner's step the layers are plain again, with HF's checkpointing switched back on
    layers = text_decoder_layers(learner.engine.module)
    assert all(layer._compiled_call_impl is None and layer.gradient_checkpointing for layer in layers)
