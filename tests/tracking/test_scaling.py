"""The scaling model reproduces the one-GPU measurement it is built from and orders the options sensibly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_rl.tracking.scaling import PhaseModel, best_split, markdown, scaling_table

MEASURED = Path(__file__).resolve().parents[2] / "bench" / "results" / "h200_8b_merged_compiled.json"


def test_colocated_estimate_matches_the_measured_step():
    measured = json.loads(MEASURED.read_text())["results"]["8b"]["vlm-rl"]["phase_seconds"]
    estimate = PhaseModel().colocated(8)
    assert estimate.generation == pytest.approx(measured["generation"], rel=0.05)
    assert estimate.training == pytest.approx(measured["training"], rel=0.01)
    assert estimate.total == pytest.approx(measured["step"], rel=0.05)


def test_async_hides_the_shorter_phase():
    m = PhaseModel()
    sync = m.step(rollout_gpus=1, learner_gpus=1, prompts=16, staleness=0)
    overlapped = m.step(rollout_gpus=1, learner_gpus=1, prompts=16, staleness=1)
    assert sync.total == pytest.approx(sync.generation + sync.training + sync.sync)
    assert overlapped.total == pytest.approx(max(sync.generation, sync.training) + sync.sync)
    assert overlapped.prompts_per_hour > sync.prompts_per_hour


def test_decode_is_weight_bound_so_a_fixed_batch_gains_little_from_more_rollout_gpus():
    m = PhaseModel()
    one, four = m.generation_s(8, 1), m.generation_s(8, 4)
    assert four < one and one / four < 1.2


def test_zero3_gathers_and_full_weight_sync_cost_time():
    lora, full = PhaseModel(), PhaseModel(sync_bytes=16.4e9, train_multiplier=1.5)
    assert full.sync_s(same_gpu=False) > 40 * lora.sync_s(same_gpu=False)
    assert lora.sync_s(same_gpu=False, transport="nccl", cross_node=True) > lora.sync_s(same_gpu=False,
                                                                                         transport="nccl")
    assert lora.sync_s(same_gpu=False, transport="nccl") < lora.sync_s(same_gpu=False)
    assert lora.sync_s(same_gpu=True) == pytest.approx(0.21)
    with pytest.raises(ValueError, match="transport"):
        lora.sync_s(same_gpu=False, transport="carrier-pigeon")
    compute_only = 32 * lora.train_s_per_seq / 2
    assert lora.training_s(8, 2) > compute_only


def test_best_split_and_table():
    m = PhaseModel()
    with pytest.raises(ValueError, match="at least 2 GPUs"):
        best_split(m, 1, 8, 1)
    split = best_split(m, 8, 64, 1)
    assert split.rollout_gpus + split.learner_gpus == 8
    rows = scaling_table(m, gpu_counts=(2, 8))
    assert [r["gpus"] for r in rows] == [1, 2, 2, 8, 8]
    by = {(r["gpus"], r["mode"]): r for r in rows}
    assert by[(2, "async (staleness 1)")]["prompts_per_hour"] > by[(2, "sync")]["prompts_per_hour"]
    assert "| 8 | async (staleness 1) |" in markdown(rows)
