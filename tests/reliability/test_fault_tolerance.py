"""Real faults in a real run (Ray actors, Ray Train + DeepSpeed, MLflow on SQLite), compared with an
uninterrupted run of the same seed.

One run takes two faults: its rollout actor is killed after step 1 (Ray restarts it; the pool re-sends
the weights and redoes the shard) and its learner process is SIGKILLed after step 2 (Ray Train's
FailureConfig restarts the worker group, which resumes from the newest complete checkpoint). It must
finish every step, keep one history row per step, and end with the very weights of the reference run.
A second pair of runs checks exact resume: N/2 steps, a half-written checkpoint left behind as a crash
mid-save would leave it, then ``resume=auto`` to N.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
import ray
import torch
from ray.util.state import get_actor, list_actors

from tests.reliability.conftest import (
    SETTINGS,
    Background,
    computed,
    final_weights,
    grpo_config,
    logged_steps,
    max_weight_difference,
    record,
)
from vlm_rl.grpo.job import make_rollout_pool, prepare_run, run_grpo
from vlm_rl.learner.checkpoint import (
    REFERENCE_FILE,
    STATE_FILE,
    list_checkpoints,
    load_weights,
    resolve_resume,
)

pytestmark = pytest.mark.slow
N = SETTINGS["num_steps"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    worst = max_weight_difference(a, b)
    assert worst <= 1e-6, f"weights differ by up to {worst}"
    return worst


def learner_pids(dashboard: str) -> list[int]:
    """Live Ray Train worker processes (the state API needs the address: other clusters may run here)."""
    alive = list_actors(address=dashboard, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in alive]


@pytest.fixture(scope="module")
def faulty_run(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("faulty")
    dashboard = ray_cluster["dashboard_url"]
    config = grpo_config(out)
    prepared, labels = prepare_run(config)
    pool = make_rollout_pool(prepared, labels)  # ours, so the test holds the actor handles
    run = Background(run_grpo, config, pool=pool)

    run.wait_for(lambda: 1 in logged_steps(out), 300, "step 1")
    rollout_actor = pool.workers[0]
    ray.kill(rollout_actor, no_restart=False)  # a crash: Ray restarts it with the base weights

    run.wait_for(lambda: 2 in logged_steps(out) and learner_pids(dashboard), 300, "step 2")
    killed = learner_pids(dashboard)
    t0 = time.time()
    steps_before = logged_steps(out)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    summary = run.join(600)
    seconds = time.time() - t0
    actor = get_actor(rollout_actor._actor_id.hex(), address=dashboard)
    yield {"summary": summary, "output_dir": out, "pool": pool, "killed": killed, "steps_before": steps_before,
           "rollout_restarts": actor.num_restarts, "learners_after": learner_pids(dashboard),
           "seconds": seconds}
    pool.shutdown()


def test_every_step_finishes_after_two_faults(faulty_run):
    summary = faulty_run["summary"]
    assert faulty_run["rollout_restarts"] >= 1
    assert faulty_run["killed"] and not set(faulty_run["killed"]) & set(faulty_run["learners_after"])
    assert summary["steps"] == N and summary["samples"] == N * SETTINGS["prompts_per_step"]
    assert [row["step"] for row in summary["history"]] == list(range(1, N + 1))


def test_learner_resumed_from_the_last_checkpoint_not_from_scratch(faulty_run):
    logged = logged_steps(faulty_run["output_dir"])
    before = faulty_run["steps_before"]
    after = logged[len(before):]
    # the restarted learner re-did at most the steps after its last checkpoint (one step: one checkpoint
    # per step here), never the run from step 1
    assert after and after == list(range(after[0], N + 1)) and after[0] >= max(before)
    warmup = (faulty_run["output_dir"] / "metrics.jsonl").read_text().count("\"warmup/sft_loss\"")
    assert warmup == SETTINGS["sft_warmup_steps"]  # the warm-up was not redone either


def test_no_step_lost_weights_equal_the_uninterrupted_run(faulty_run, straight_run):
    weights = final_weights(faulty_run["summary"])
    worst = assert_same_weights(weights, straight_run["weights"])
    assert computed(faulty_run["summary"]["history"]) == computed(straight_run["summary"]["history"])
    record("faults", steps=N, faults_injected=["rollout actor killed after step 1",
                                               "learner process SIGKILLed after step 2"],
           rollout_actor_restarts=faulty_run["rollout_restarts"], learner_pids_killed=faulty_run["killed"],
           steps_logged_in_order=logged_steps(faulty_run["output_dir"]),
           history_steps=[r["step"] for r in faulty_run["summary"]["history"]],
           max_abs_weight_difference_vs_uninterrupted=worst, tensors=len(weights),
           parameters=sum(w.numel() for w in weights.values()),
           straight_run_seconds=straight_run["seconds"], seconds_from_learner_kill_to_end=faulty_run["seconds"])


def test_restarted_rollout_actor_holds_the_final_weights(faulty_run):
    learner = final_weights(faulty_run["summary"])
    actor = faulty_run["pool"].get_weights(0)
    for name, weight in learner.items():
        assert torch.equal(actor[name], weight), name
    assert faulty_run["pool"].versions() == [N + 1]


def test_exact_resume_over_a_half_written_checkpoint(ray_cluster, tmp_path, straight_run):
    out = tmp_path / "resumed"
    first = run_grpo(grpo_config(out, num_steps=N // 2))
    assert first["steps"] == N // 2
    last = list_checkpoints(out)[-1]
    # What a crash between writing files and the rename leaves: a .tmp folder, files cut short, no state file.
    half = out / f"checkpoint-samples-{(N // 2 + 1) * SETTINGS['prompts_per_step']}.tmp"
    shutil.copytree(last, half)
    (half / STATE_FILE).unlink()
    for weights in half.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert resolve_resume("auto", out) == last
    midway = load_weights(last)

    # the KL reference (the policy after the warm-up) travels with the checkpoints, written once
    reference = last / REFERENCE_FILE
    assert reference.is_file() and all((p / REFERENCE_FILE).stat().st_ino == reference.stat().st_ino
                                       for p in list_checkpoints(out))

    t0 = time.time()
    second = run_grpo(grpo_config(out, resume="auto"))
    assert second["steps"] == N
    # KL after the resume is measured to the same reference as in the uninterrupted run (a reference
    # re-frozen from the resumed weights would give KL 0 at the first resumed step)
    kl_resumed = [row["kl"] for row in second["history"]]
    kl_straight = [row["kl"] for row in straight_run["summary"]["history"]]
    assert kl_resumed == kl_straight and kl_resumed[N // 2] > 0
    assert computed(second["history"]) == computed(straight_run["summary"]["history"])
    worst = assert_same_weights(final_weights(second), straight_run["weights"])
    assert not half.exists() or (half.with_suffix("") / STATE_FILE).is_file()
    # the second half really trained (an unchanged model would also "match")
    assert any(not torch.equal(midway[k], v) for k, v in final_weights(second).items())
    record("exact_resume", steps=f"{N // 2} + resume + {N - N // 2} vs {N} straight",
           resumed_from=last.name,
           half_written_checkpoint=half.name, max_abs_weight_difference_vs_uninterrupted=worst,
           history_equal_to_uninterrupted=True, kl_after_resume=kl_resumed[N // 2:],
           second_half_seconds=time.time() - t0)
