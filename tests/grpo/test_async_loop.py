"""Asynchronous GRPO's bookkeeping, driven with fakes: what is submitted when, how stale the rollouts a step
trains on may be, and that a resume after a checkpoint with rollouts in flight trains every prompt once."""

from __future__ import annotations

import copy

import pytest
import torch

from vlm_rl.config import GRPOConfig
from vlm_rl.data.schema import DetObject, Sample
from vlm_rl.grpo.async_rollouts import RolloutQueue
from vlm_rl.grpo.loop import LoopSinks, LoopState, grpo_train
from vlm_rl.learner.sampler import PromptSampler
from vlm_rl.rollout.types import Completion


def samples(n: int) -> list[Sample]:
    return [Sample(id=f"s{i}", image=f"/img/{i}.png", width=64, height=64,
                   objects=(DetObject("stop_sign", (1.0, 1.0, 9.0, 9.0)),)) for i in range(n)]


class FakeActorPool:
    """Like RolloutPool: an actor runs its calls in arrival order, so a submitted step samples with the newest
    weights sent before it; ``collect`` hands the completions back later."""

    def __init__(self, events: list):
        self.events = events
        self.actor_version = 0
        self.unacknowledged = 0

    def sync_weights(self, weights, version, wait=True):
        self.events.append(("sync", version, wait))
        self.actor_version = version
        self.unacknowledged = 0 if wait else self.unacknowledged + 1

    def wait_for_sync(self):
        self.unacknowledged = 0

    def submit(self, items, G, step):
        self.events.append(("submit", step))
        out = [Completion(prompt_index=p, sample_id=item.sample_id, text="[]", completion_ids=[1] * (g + 1),
                          rewards={"total": g / G, "format": 1.0, "detection": g / G},
                          sampling_logprobs=[-1.0] * (g + 1), weights_version=self.actor_version)
               for p, item in enumerate(items) for g in range(G)]
        return {"completions": out, "seconds": 0.01, "tokens": sum(len(c.completion_ids) for c in out)}

    def collect(self, handle):
        self.events.append(("collect",))
        return handle


class FakeLearner:
    def __init__(self, events: list, fail_at: int | None = None):
        self.events = events
        self.fail_at = fail_at
        self.steps = 0
        self.trained: list[tuple[list[str], set[int]]] = []  # (prompt ids, sampler versions) per step

    def grpo_step(self, items, completions, advantages):
        self.steps += 1
        if self.steps == self.fail_at:
            raise RuntimeError("learner crashed")
        self.events.append(("train", self.steps))
        self.trained.append(([i.sample_id for i in items], {c.weights_version for c in completions}))
        return {"loss": 0.5, "kl": 0.0, "clip_ratio": 0.0, "grad_norm": 1.0}

    def export_weights(self, for_sync: bool = False):
        return {"w": torch.zeros(1)}


def config(**kw) -> GRPOConfig:
    base = dict(num_learners=1, prompts_per_step=2, num_generations=2, num_steps=6, save_every_samples=0)
    return GRPOConfig(**{**base, **kw})


def run(max_staleness: int, num_steps: int = 6, data: int = 7, **kw):
    events: list = []
    learner, pool, logged = FakeLearner(events), FakeActorPool(events), []
    state = grpo_train(config(max_staleness=max_staleness, num_steps=num_steps, **kw), learner=learner,
                       rollout=pool, sampler=PromptSampler(samples(data), seed=1),
                       sinks=LoopSinks(log_metrics=lambda m, s: logged.append(m)))
    return state, learner, pool, events, logged


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rollouts_are_submitted_k_steps_ahead_and_at_most_k_updates_old(k):
    state, learner, pool, events, logged = run(k)
    submits = [e[1] for e in events if e[0] == "submit"]
    trains = [e[1] for e in events if e[0] == "train"]
    assert submits == list(range(1, 7)) and trains == list(range(1, 7))
    for step in range(1, 7):  # step s+k (when it exists) is submitted before step s trains
        ahead = min(step + k, 6)
        assert events.index(("submit", ahead)) < events.index(("train", step))
    for step, (_, versions) in enumerate(learner.trained, start=1):
        # the learner holds weights version s at step s (version 1 = the start); sampled with >= s - k
        assert min(versions) >= step - k, (step, versions)
        assert logged[step - 1]["async/staleness_max"] == step - min(versions) <= k
    # steady state: exactly k updates old (the weights the learners had when the step was submitted)
    assert [m["async/staleness_max"] for m in logged][k:] == [float(k)] * (6 - k)
    # weights go out without waiting for the actors, except the first sync; the pool is acknowledged at the end
    assert [e[2] for e in events if e[0] == "sync"] == [True] + [False] * 6
    assert pool.unacknowledged == 0 and state.version == 7


def test_on_policy_loop_is_unchanged_by_the_queue():
    state, learner, _, events, logged = run(0)
    kinds = [e[0] for e in events]
    # sync, then per step: submit, collect, train, sync (waited for)
    assert kinds == ["sync"] + ["submit", "collect", "train", "sync"] * 6
    assert all(e[2] for e in events if e[0] == "sync")
    assert all(m["async/staleness_max"] == 0 for m in logged)
    assert [v for _, v in learner.trained] == [{s} for s in range(1, 7)]


def test_async_trains_the_same_prompts_in_the_same_order_as_sync():
    _, sync_learner, *_ = run(0, data=5)  # crosses an epoch boundary
    _, async_learner, *_ = run(2, data=5)
    assert [ids for ids, _ in async_learner.trained] == [ids for ids, _ in sync_learner.trained]


def test_resume_after_a_checkpoint_with_rollouts_in_flight_trains_each_prompt_once():
    """Checkpoint after step 3 (steps 4 and 5 are in flight with k=2), crash while training step 5; the resumed
    run re-samples steps 4.. from the saved cursor: no prompt skipped, none trained twice."""
    assert GRPOConfig.model_fields["max_staleness"].default == 0
    _, reference, *_ = run(2, num_steps=8, data=7)
    expected = [ids for ids, _ in reference.trained]

    saved: list[LoopState] = []
    events: list = []
    first = FakeLearner(events, fail_at=5)
    sinks = LoopSinks(checkpoint=lambda st: saved.append(copy.deepcopy(st)))
    cfg = config(max_staleness=2, num_steps=8, save_every_samples=6)
    with pytest.raises(RuntimeError, match="learner crashed"):
        grpo_train(cfg, learner=first, rollout=FakeActorPool(events), sampler=PromptSampler(samples(7), seed=1),
                   sinks=sinks)
    assert [s.step for s in saved] == [3]
    assert ("submit", 6) in events  # steps 4..6 were taken from the sampler and submitted when it crashed
    checkpoint = saved[-1]
    assert checkpoint.cursor == 6 and checkpoint.samples == 6  # the prompts trained, not those taken

    second = FakeLearner([])
    state = grpo_train(cfg, learner=second, rollout=FakeActorPool([]),
                       sampler=PromptSampler(samples(7), seed=1), state=copy.deepcopy(checkpoint))
    # the weights come back from the checkpoint too, so what counts is what it had trained: steps 1..3
    trained = [ids for ids, _ in first.trained[: checkpoint.step]] + [ids for ids, _ in second.trained]
    assert trained == expected and state.step == 8 and state.cursor == 16


def test_queue_refuses_out_of_order_steps():
    queue = RolloutQueue(FakeActorPool([]), PromptSampler(samples(4)), prompts_per_step=1, num_generations=2,
                         max_staleness=1, last_step=5, submit=True)
    assert queue.fill(1).step == 1 and queue.in_flight == 2
    with pytest.raises(RuntimeError, match="collecting step 2, the oldest in flight is 1"):
        queue.collect(2)
