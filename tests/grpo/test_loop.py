"""The GRPO loop's bookkeeping, driven with small fakes (the real parts are tested end to end elsewhere)."""

from __future__ import annotations

import torch

from vlm_rl.config import GRPOConfig
from vlm_rl.data.schema import DetObject, Sample
from vlm_rl.grpo.loop import LoopSinks, LoopState, _due, grpo_train, local_share
from vlm_rl.learner.sampler import PromptSampler
from vlm_rl.rollout.types import Completion, PromptItem


def samples(n: int) -> list[Sample]:
    return [Sample(id=f"s{i}", image=f"/img/{i}.png", width=64, height=64,
                   objects=(DetObject("stop_sign", (1.0, 1.0, 9.0, 9.0)),)) for i in range(n)]


class FakeRollout:
    def __init__(self):
        self.synced: list[int] = []
        self.seen_steps: list[int] = []

    def generate(self, items, G, step):
        self.seen_steps.append(step)
        out = []
        for p, item in enumerate(items):
            for g in range(G):
                r = float(g) / G
                out.append(Completion(prompt_index=p, sample_id=item.sample_id, text="[]", completion_ids=[1] * (g + 1),
                                      rewards={"total": r, "format": 1.0, "detection": r}))
        return {"completions": out, "seconds": 0.01, "tokens": sum(len(c.completion_ids) for c in out)}

    def sync_weights(self, weights, version):
        self.synced.append(version)


class FakeLearner:
    def __init__(self):
        self.batches = []
        self.sft_calls = 0
        self.resets_after_sft = []
        self.rates = []

    def reset_optimizer(self):
        self.resets_after_sft.append(self.sft_calls)
        return 0

    def set_learning_rate(self, lr):
        self.rates.append((self.sft_calls, lr))

    def grpo_step(self, items, completions, advantages):
        self.batches.append((len(items), len(completions), advantages.clone()))
        return {"loss": 0.5, "kl": 0.02, "clip_ratio": 0.0, "grad_norm": 1.0}

    def sft_step(self, items, targets):
        self.sft_calls += 1
        return {"sft_loss": 1.0}

    def export_weights(self, for_sync: bool = False):
        return {"w": torch.zeros(1)}


def config(**kw) -> GRPOConfig:
    base = dict(num_learners=1, prompts_per_step=2, num_generations=4, num_steps=3, save_every_samples=4)
    return GRPOConfig(**{**base, **kw})


def test_loop_runs_steps_syncs_every_step_and_logs_metrics():
    rollout, learner, logged, ckpts = FakeRollout(), FakeLearner(), [], []
    sinks = LoopSinks(log_metrics=lambda m, s: logged.append((s, m)), checkpoint=lambda st: ckpts.append(st.samples))
    state = grpo_train(config(), learner=learner, rollout=rollout, sampler=PromptSampler(samples(5)), sinks=sinks)
    assert state.step == 3 and state.samples == 6 and state.cursor == 6
    assert rollout.seen_steps == [1, 2, 3]
    assert rollout.synced == [1, 2, 3, 4]  # initial sync + one per step
    assert [s for s, _ in logged] == [1, 2, 3]
    metrics = logged[-1][1]
    for key in ("loss", "kl", "reward/total", "reward/format", "reward/detection", "reward/std",
                "completion_length/mean", "samples_per_hour", "time/generation", "time/training",
                "time/weight_sync", "tokens_per_second"):
        assert key in metrics, key
    assert abs(metrics["reward/total"] - 0.375) < 1e-9
    # group-normalised advantages: zero mean within each group of 4
    _, n, adv = learner.batches[0]
    assert n == 8 and torch.allclose(adv.view(2, 4).mean(1), torch.zeros(2), atol=1e-6)
    assert ckpts == [4, 6]  # crossing 4 samples, then the end


def test_sft_warmup_runs_before_grpo_and_counts():
    learner = FakeLearner()
    state = grpo_train(config(sft_warmup_steps=2, num_steps=1), learner=learner, rollout=FakeRollout(),
                       sampler=PromptSampler(samples(8)), sft_targets=lambda items: [[1, 2]] * len(items))
    assert learner.sft_calls == 2 and state.sft_steps == 2 and state.cursor == 6
    assert learner.resets_after_sft == [2]  # the optimizer forgets the warm-up once, before the first GRPO step
    assert learner.rates == []  # no warm-up rate: GRPO's rate throughout


def test_sft_warmup_learning_rate_applies_to_the_warmup_only():
    learner = FakeLearner()
    grpo_train(config(sft_warmup_steps=2, num_steps=1, sft_warmup_learning_rate=3e-3, learning_rate=1e-4),
               learner=learner, rollout=FakeRollout(), sampler=PromptSampler(samples(8)),
               sft_targets=lambda items: [[1, 2]] * len(items))
    assert learner.rates == [(0, 3e-3), (2, 1e-4)]  # set before the first warm-up step, restored before GRPO


def test_eval_on_start_scores_the_synced_starting_policy_once():
    rollout, learner, evals = FakeRollout(), FakeLearner(), []

    def evaluate(step):
        evals.append((step, list(rollout.synced), len(learner.batches)))
        return {"eval/mAP_50": 0.25}

    sinks = LoopSinks(evaluate=evaluate)
    state = grpo_train(config(eval_steps=2, eval_on_start=True, sft_warmup_steps=1), learner=learner,
                       rollout=rollout, sampler=PromptSampler(samples(9)), sinks=sinks,
                       sft_targets=lambda items: [[1, 2]] * len(items))
    # step 0: after the warm-up and the first sync, before any GRPO update; then every eval_steps
    assert evals == [(0, [1], 0), (2, [1, 2, 3], 2)]
    assert state.start_eval == {"eval/mAP_50": 0.25} and "eval/mAP_50" not in state.history[0]
    resumed = grpo_train(config(eval_steps=2, eval_on_start=True, num_steps=4), learner=learner,
                         rollout=rollout, sampler=PromptSampler(samples(9)), sinks=sinks, state=state)
    assert [e[0] for e in evals] == [0, 2, 4] and resumed.start_eval == state.start_eval  # not redone on resume


def test_resume_state_continues_where_it_stopped():
    rollout = FakeRollout()
    start = LoopState(step=2, samples=4, cursor=4, version=3)
    state = grpo_train(config(num_steps=3), learner=FakeLearner(), rollout=rollout,
                       sampler=PromptSampler(samples(5)), state=start)
    assert rollout.seen_steps == [3] and state.step == 3 and state.version == 4


def test_local_share_gives_each_rank_whole_groups():
    items = [PromptItem(f"s{i}", "x", 1, 1, ()) for i in range(4)]
    comps = [Completion(prompt_index=p, sample_id=f"s{p}", text="", completion_ids=[1], rewards={"total": 0.0})
             for p in range(4) for _ in range(2)]
    adv = torch.arange(8, dtype=torch.float32)
    mine_items, mine, mine_adv = local_share(items, comps, adv, rank=1, world=2, num_generations=2)
    assert [i.sample_id for i in mine_items] == ["s2", "s3"]
    assert [c.prompt_index for c in mine] == [0, 0, 1, 1]
    assert mine_adv.tolist() == [4, 5, 6, 7]


def test_checkpoint_due_when_crossing_multiples():
    cfg = config(num_steps=100, save_every_samples=5)
    assert not _due(cfg, LoopState(step=1, samples=4), 4)
    assert _due(cfg, LoopState(step=2, samples=8), 4)
    assert _due(config(num_steps=2, save_every_samples=0), LoopState(step=2, samples=4), 2)


def test_sampler_peek_returns_the_next_take_without_moving():
    sampler = PromptSampler(list(range(5)), seed=3, cursor=4)  # peeks across an epoch boundary
    ahead = sampler.peek(3)
    assert sampler.cursor == 4
    assert sampler.take(3) == ahead and sampler.cursor == 7
