"""`advise`: each suggestion is a re-run estimate with one knob changed, ranked by speedup."""

from __future__ import annotations

from vlm_rl.config import GRPOConfig
from vlm_rl.tracking.estimator import advise, estimate


def test_advice_is_ranked_and_matches_reestimates():
    config = GRPOConfig(model_path="Qwen/Qwen3-VL-8B-Instruct", max_image_size=768, num_generations=16,
                        prompts_per_step=8, max_new_tokens=256, lora_r=64, num_learners=1, eval_steps=2,
                        rollout_batch_size=32)
    advice = advise(config, "h100")
    speedups = [a.estimated_speedup for a in advice]
    assert speedups == sorted(speedups, reverse=True) and all(s > 1.0 for s in speedups)
    titles = " | ".join(a.title for a in advice)
    for expected in ("MAX_IMAGE_SIZE 768", "smaller model", "NUM_GENERATIONS 16 → 8", "EVAL_STEPS 0"):
        assert expected in titles
    base = estimate(config, 1000, "h100").seconds_per_step
    for item in advice:
        changed = GRPOConfig.model_validate({**config.model_dump(), **item.change})
        new = estimate(changed, 1000, "h100").seconds_per_step
        per_prompt = (base / config.prompts_per_step) / (new / changed.prompts_per_step)
        assert abs(per_prompt - item.estimated_speedup) < 1e-9


def test_gradient_checkpointing_off_only_when_it_fits():
    small = GRPOConfig(model_path="Qwen/Qwen3-VL-2B-Instruct", num_learners=1, max_new_tokens=512)
    assert any("checkpointing off" in a.title for a in advise(small, "h100"))
    huge = GRPOConfig(model_path="Qwen/Qwen3-VL-8B-Instruct", num_learners=1, lora_r=0, max_new_tokens=512)
    assert not any("checkpointing off" in a.title for a in advise(huge, "l4"))
