"""Rollouts sampled from the tiny model come out in the trainer's rollouts format, scored like GRPO."""

from __future__ import annotations

from vlm_rl.dpo.pairs import build_pairs, group_rollouts, sample_rollouts, validate_rollout
from vlm_rl.rewards.detection import combined_reward


def test_sample_rollouts_from_tiny_model(tiny_model_dir, synthetic_dataset):
    _, val = synthetic_dataset
    records = sample_rollouts(str(tiny_model_dir), val, num_samples=2, temperature=1.0, max_image_size=64,
                              max_new_tokens=4, batch_size=4, limit=2, progress=False)
    assert len(records) == 4
    for i, r in enumerate(records):
        assert validate_rollout(r, f"record {i}") == r  # already in the documented format
        assert r["reward"] == r["rewards"]["total"] == combined_reward([r["completion"]], [r["solution"]])[0]["total"]
    groups = group_rollouts(records)
    assert len(groups) == 2 and all(len(g) == 2 for g in groups.values())
    assert all(p["chosen_reward"] > p["rejected_reward"] for p in build_pairs(groups, min_margin=0.0))
