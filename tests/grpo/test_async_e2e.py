"""Asynchronous GRPO with the real parts on CPU: a RolloutPool Ray actor samples while an in-process learner
(PolicyLearner on LocalEngine, the tiny Qwen3-VL) trains, on the demo's easy task.

A short supervised warm-up is shared; then the same seed and steps run on-policy (``max_staleness=0``) and
one step off-policy (``max_staleness=1``, with two passes over each batch and a tight clip: ``num_iterations=2``,
``epsilon=0.01``, issue 25). The issue's questions:

* overlap: with ``max_staleness=1`` the wall time of the steps is below the sum of the rollout side's own
  sampling seconds and the learner's training seconds (each measured in its own process);
* the bounds hold: every step trains on rollouts at most one update old, the IS statistics are logged, and
  sampler and learner log-probs agree on-policy (a prompt or weight mismatch would show here).

Not here: a reward comparison. In this in-process one-learner setup neither run improved the reward over 20
steps after 150 warm-up steps (measured: gain -0.14 on-policy, -0.19 async), so it cannot show that async
learns as well; the DeepSpeed e2e run (tests/grpo/test_e2e.py) is where the demo's reward rises.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from vlm_rl.commands.demo import DEMO_SETTINGS, make_demo_dataset
from vlm_rl.config import GRPOConfig
from vlm_rl.data.schema import load_jsonl
from vlm_rl.grpo.job import rollout_worker_kwargs
from vlm_rl.grpo.loop import LoopSinks, grpo_train
from vlm_rl.learner.local_engine import LocalEngine
from vlm_rl.learner.policy import build_policy
from vlm_rl.learner.policy_learner import PolicyLearner
from vlm_rl.learner.sampler import PromptSampler
from vlm_rl.rollout.pool import RolloutPool
from vlm_rl.rollout.types import PromptItem
from vlm_rl.sft.targets import SFTTargets

pytestmark = pytest.mark.slow

STEPS = 6
WARMUP = 20


LABELS = ["stop_sign"]  # the demo task's; learner and actors must build the same prompt


def _learner(config: GRPOConfig, state: dict | None = None) -> PolicyLearner:
    torch.manual_seed(config.seed)
    model, processor, family = build_policy(config)
    if state is not None:
        model.load_state_dict(state)
    return PolicyLearner(LocalEngine(model, config, "cpu"), processor, family, config, LABELS)


@pytest.fixture(scope="module")
def runs(ray_cluster, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("async-e2e")
    settings = {**DEMO_SETTINGS, "num_learners": 1, "num_rollout_workers": 1, "model_path": str(tiny_model_dir),
                "num_steps": STEPS, "sft_warmup_steps": 0, "eval_steps": 0, "log_images_every": 0,
                "output_dir": str(out)}
    train, _ = make_demo_dataset(out / "data", settings)
    config = GRPOConfig(**{**settings, "train_data": str(train)})
    data = load_jsonl(train).samples

    # the shared supervised warm-up (the demo's: it teaches the random model the answer's shape)
    learner = _learner(config)
    targets = SFTTargets(learner.processor, learner.family, config.max_image_size)
    warm = PromptSampler(data, seed=config.seed)
    for _ in range(WARMUP):
        items = [PromptItem.from_sample(s) for s in warm.take(config.prompts_per_step)]
        learner.sft_step(items, targets(items))
    start = {k: v.detach().clone() for k, v in learner.engine.module.state_dict().items()}

    pool = RolloutPool(1, rollout_worker_kwargs(config, LABELS), num_cpus=1)
    results = {}
    try:
        for staleness in (0, 1):
            # the asynchronous run also takes two updates per batch with a tight clip (issue 25's "done when")
            offpolicy = {"num_iterations": 2, "epsilon": 0.01} if staleness else {}
            run_config = config.model_copy(update={"max_staleness": staleness, **offpolicy})
            history = []
            state = grpo_train(run_config, learner=_learner(run_config, start), rollout=pool,
                               sampler=PromptSampler(data, seed=config.seed, cursor=warm.cursor),
                               sinks=LoopSinks(log_metrics=lambda m, s, h=history: h.append(m)))
            results[staleness] = {"history": history, "versions": pool.versions(), "state": state}
    finally:
        pool.shutdown()
    return results


def test_async_run_overlaps_sampling_and_training(runs):
    history = runs[1]["history"][1:]  # the first step has nothing to overlap with
    wall = sum(m["time/step"] for m in history)
    rollout = sum(m["time/rollout"] for m in history)
    training = sum(m["time/training"] for m in history)
    print(f"async steps 2..{STEPS}: wall {wall:.1f} s, rollout {rollout:.1f} s + training {training:.1f} s; "
          f"on-policy wall {sum(m['time/step'] for m in runs[0]['history'][1:]):.1f} s")
    assert wall < rollout + training
    # the learners waited for rollouts for less than the rollouts took: the rest ran during training
    assert sum(m["time/generation"] for m in history) < rollout


def test_staleness_is_bounded_and_importance_statistics_are_logged(runs):
    for staleness, run in runs.items():
        lags = [m["async/staleness_max"] for m in run["history"]]
        # a step is sampled with the weights sent before it was submitted, or newer ones (an actor may take
        # an update queued behind a generate that is still waiting for its lock): never older
        assert lags[0] == 0 and max(lags) <= staleness
        if staleness:
            assert sum(lags) >= (STEPS - 1) / 2, lags  # mostly one update old: sampling ran ahead
        for m in run["history"]:
            assert 0 < m["tis/ratio_min"] <= m["tis/ratio_mean"] * (1 + 1e-6)
            assert m["tis/ratio_mean"] <= m["tis/ratio_max"] * (1 + 1e-6)
            assert 0 <= m["tis/clipped_fraction"] <= 1 and m["tis/logp_diff_abs"] >= 0
        assert run["versions"] == [STEPS + 1]  # the pool holds the final weights when the loop returns
    on_policy = statistics.mean(m["tis/logp_diff_abs"] for m in runs[0]["history"])
    off_policy = statistics.mean(m["tis/logp_diff_abs"] for m in runs[1]["history"][1:])
    assert on_policy < 1e-3 < off_policy  # same weights: numerics only; one update old: a real gap


def test_two_passes_with_a_tight_clip_clip_the_second_pass(runs):
    """Decoupled PPO: the first pass's ratio to the proximal policy is exactly 1 (nothing clipped, whatever the
    sampler's staleness, which the IS weight corrects); the second pass runs after an update and epsilon 0.01
    clips it wherever the first pass had a signal to move on (a step whose groups all tie has no advantage, no
    update, so nothing to clip). On-policy with one pass the clip never acts."""
    history = runs[1]["history"]
    print("async clip_ratio per step:", [round(m["clip_ratio"], 4) for m in history],
          "reward/std:", [round(m["reward/std"], 4) for m in history])
    assert all(m["clip_ratio/pass_1"] == 0.0 for m in history)
    assert all(m["clip_ratio/pass_2"] > 0 for m in history if m["reward/std"] > 0)
    assert sum(m["clip_ratio"] > 0 for m in history) >= len(history) / 2
    assert all(m["clip_ratio"] == 0.0 and "clip_ratio/pass_2" not in m for m in runs[0]["history"])
