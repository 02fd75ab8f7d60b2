"""CPU smoke run of the throughput bench: both frameworks, each in its own process, same work per step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "grpo_throughput.py"


@pytest.mark.slow
def test_bench_runs_trl_and_vlmrl_isolated_with_equal_work(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(BENCH), "--arch", "tiny", "--device", "cpu", "--frameworks", "vlm-rl", "trl",
         "--isolate", "--steps", "1", "--warmup", "1", "--new-tokens", "8", "--image-size", "64", "--prompts", "2",
         "--generations", "2", "--lora-r", "8", "--engine", "local", "--model-root", str(tmp_path / "models"),
         "--out", str(out)],
        check=True, timeout=600,
    )
    res = json.loads(out.read_text())["results"]["tiny"]
    for fw in ("vlm-rl", "trl"):
        assert len(res[fw]["per_step"]) == 2, fw  # warm-up + timed
        # EOS is suppressed until max tokens on both sides: exactly prompts x generations x new tokens
        assert res[fw]["completion_tokens_per_step"] == 2 * 2 * 8, fw
        assert res[fw]["prompts_per_hour"] > 0
        assert res[fw]["first_step_seconds"] == res[fw]["per_step"][0]["step"] > 0
    assert res["ratio_prompts_per_hour"] == pytest.approx(
        res["vlm-rl"]["prompts_per_hour"] / res["trl"]["prompts_per_hour"])


@pytest.mark.slow
def test_bench_pool_mode_syncs_its_rollout_actor_every_step(tmp_path):
    """``--rollout-mode pool``: the in-process learner plus a Ray rollout actor (own copy, the fast engine)
    synced after every step; ``--max-staleness`` reaches GRPOConfig."""
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(BENCH), "--arch", "tiny", "--device", "cpu", "--frameworks", "vlm-rl",
         "--rollout-mode", "pool", "--max-staleness", "1", "--steps", "1", "--warmup", "1", "--new-tokens", "8",
         "--image-size", "64", "--prompts", "2", "--generations", "2", "--lora-r", "8", "--engine", "local",
         "--model-root", str(tmp_path / "models"), "--out", str(out)],
        check=True, timeout=600,
    )
    res = json.loads(out.read_text())["results"]["tiny"]["vlm-rl-pool"]
    assert res["rollout_mode"] == "pool" and res["max_staleness"] == 1
    assert res["decode_mode"] == "eager"  # the static decoder (no CUDA graphs on CPU), not HF generate
    assert len(res["per_step"]) == 2 and res["completion_tokens_per_step"] == 2 * 2 * 8
    for row in res["per_step"]:  # the LoRA adapter alone went through the object store, every step
        assert row["weight_sync/bytes"] > 0 and row["weight_sync/actors_object_store"] == 1
        assert row["rollout_decode"] > 0
