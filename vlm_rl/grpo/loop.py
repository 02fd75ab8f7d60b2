"""The GRPO loop as a list of timed phases: rollout → advantages → train → sync → log → checkpoint.

Every collaborator comes in as an argument (learner, rollout source, sampler, comm, sinks), so a CPU
test can drive the loop with small fakes and the Ray Train worker wires in the real ones.

``max_staleness = k > 0`` is asynchronous GRPO: the rollouts of steps ``s+1 .. s+k`` are submitted before
step ``s`` trains (``grpo/async_rollouts.py``) and the weights go out without waiting for the actors, so
generation overlaps training. The "generation" phase is then the time the learners wait for rollouts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from vlm_rl.algos.advantages import group_advantages
from vlm_rl.config import GRPOConfig
from vlm_rl.grpo.async_rollouts import RolloutQueue
from vlm_rl.learner.comm import Comm
from vlm_rl.rollout.types import Completion, PromptItem


@dataclass
class LoopState:
    """What a checkpoint must restore for the run to continue exactly."""

    step: int = 0
    samples: int = 0  # prompts trained on
    cursor: int = 0  # sampler position after the prompts trained on (in-flight ones are re-taken on resume)
    version: int = 0  # weights version held by the rollout pool
    sft_steps: int = 0
    history: list[dict] = field(default_factory=list)
    start_eval: dict = field(default_factory=dict)  # eval of the policy GRPO starts from (eval_on_start)


class PhaseTimer:
    """``with timer.time("generation"):`` — phase seconds of the current step."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def time(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


@dataclass
class LoopSinks:
    """Rank-0 side effects; each is optional so tests can leave them out."""

    log_metrics: Callable[[dict, int], None] | None = None
    on_rollouts: Callable[[int, list[PromptItem], list[Completion]], None] | None = None
    checkpoint: Callable[[LoopState], None] | None = None  # collective: called on every rank
    evaluate: Callable[[int], dict] | None = None
    progress: Callable[[int, dict], None] | None = None


def reward_metrics(completions: list[Completion], num_generations: int) -> dict[str, float]:
    rewards = torch.tensor([[c.rewards[k] for k in ("total", "format", "detection")] for c in completions],
                           dtype=torch.float64)
    groups = rewards[:, 0].view(-1, num_generations)
    lengths = torch.tensor([len(c.completion_ids) for c in completions], dtype=torch.float64)
    return {
        "reward/total": rewards[:, 0].mean().item(),
        "reward/format": rewards[:, 1].mean().item(),
        "reward/detection": rewards[:, 2].mean().item(),
        "reward/std": groups.std(dim=1, unbiased=False).mean().item(),
        "completion_length/mean": lengths.mean().item(),
        "completion_length/max": lengths.max().item(),
    }


def local_share(items: list[PromptItem], completions: list[Completion], advantages: torch.Tensor,
                rank: int, world: int, num_generations: int):
    """This rank's whole groups: prompts [rank*k, (rank+1)*k) and their completions, re-indexed."""
    per_rank = len(items) // world
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    mine = [i for i, c in enumerate(completions) if lo <= c.prompt_index < hi]
    local = []
    for i in mine:
        c = completions[i]
        local.append(Completion(**{**c.__dict__, "prompt_index": c.prompt_index - lo}))
    return items[lo:hi], local, advantages[mine]


def sync_weights(learner, rollout, comm: Comm, version: int, wait: bool = True) -> None:
    """Push the learners' weights to the rollout side; a colocated rollout reads them in place.

    ``wait=False`` (asynchronous GRPO): return once sent; the actors load them after their in-flight work.
    """
    if getattr(rollout, "shares_weights", False):
        rollout.sync_weights(None, version)
        return
    started = time.perf_counter()
    weights = learner.export_weights(for_sync=True)  # collective under ZeRO-3
    exported = time.perf_counter() - started
    if comm.rank == 0:
        if wait:
            rollout.sync_weights(weights, version)
        else:
            rollout.sync_weights(weights, version, wait=False)
        if isinstance(getattr(rollout, "last_sync", None), dict):  # where the phase goes (issue 23)
            rollout.last_sync["weight_sync/export_seconds"] = exported
    comm.barrier()


def staleness_metrics(completions: list[Completion], learner_version: int) -> dict[str, float]:
    """Updates between the weights that sampled each completion and the learner's (0 = on-policy)."""
    lag = [learner_version - c.weights_version for c in completions]
    return {"async/staleness_mean": sum(lag) / max(len(lag), 1), "async/staleness_max": float(max(lag, default=0))}


def grpo_train(
    config: GRPOConfig,
    *,
    learner,
    rollout,
    sampler,
    comm: Comm | None = None,
    state: LoopState | None = None,
    sinks: LoopSinks | None = None,
    sft_targets: Callable[[list[PromptItem]], list[list[int]]] | None = None,
) -> LoopState:
    """Run GRPO from ``state`` to ``config.num_steps``; returns the final state (with metric history)."""
    comm = comm or Comm()
    state = state or LoopState()
    sinks = sinks or LoopSinks()
    sampler.cursor = state.cursor
    rank, world, G = comm.rank, comm.world_size, config.num_generations
    run_start = time.perf_counter()
    samples_at_start = state.samples

    # Optional supervised warm-up (teaches a tiny random model the answer format so rewards move).
    warmed_up_here = False
    warmup_lr = config.sft_warmup_learning_rate
    while sft_targets is not None and state.sft_steps < config.sft_warmup_steps:
        if not warmed_up_here and warmup_lr is not None:
            learner.set_learning_rate(warmup_lr)
        warmed_up_here = True
        items = [PromptItem.from_sample(s) for s in sampler.take(config.prompts_per_step)]
        per = len(items) // world
        mine = items[rank * per : (rank + 1) * per]
        metrics = comm.mean(learner.sft_step(mine, sft_targets(mine)))
        state.sft_steps += 1
        state.cursor = sampler.cursor
        if rank == 0 and sinks.log_metrics:
            sinks.log_metrics({f"warmup/{k}": v for k, v in metrics.items()}, state.sft_steps)
    if warmed_up_here:  # GRPO starts with fresh moments, not the warm-up's (a resume past this point keeps its own)
        learner.reset_optimizer()
        if warmup_lr is not None:
            learner.set_learning_rate(config.learning_rate)

    # Fresh (or restarted) rollout actors hold the base weights: always start from the learners'.
    state.version = max(state.version, 1)
    sync_weights(learner, rollout, comm, state.version)
    if rank == 0 and config.eval_on_start and sinks.evaluate and state.step == 0 and not state.start_eval:
        _wait_for_sync(rollout)  # the baseline every later evaluation is judged against: warm-up only, no GRPO
        state.start_eval = sinks.evaluate(0)
    stale = config.max_staleness
    queue = RolloutQueue(rollout, sampler, prompts_per_step=config.prompts_per_step, num_generations=G,
                         max_staleness=stale, last_step=config.num_steps, submit=rank == 0)

    while state.step < config.num_steps:
        timer = PhaseTimer()
        step = state.step + 1
        with timer.time("step"):
            entry = queue.fill(step)  # submits the rollouts of steps up to step + max_staleness
            items = entry.items
            if hasattr(learner, "prefetch"):  # this rank's prompts are encoded on a thread during generation
                per = len(items) // world
                learner.prefetch(items[rank * per : (rank + 1) * per])
            with timer.time("generation"):  # asynchronous: the time spent waiting for the rollouts
                out = comm.broadcast(queue.collect(step))
            completions: list[Completion] = out["completions"]
            rewards = torch.tensor([c.reward for c in completions], dtype=torch.float32)
            advantages = group_advantages(rewards, G, scale=config.scale_rewards)
            my_items, my_completions, my_adv = local_share(items, completions, advantages, rank, world, G)
            if rank == 0 and not stale and step < config.num_steps and hasattr(rollout, "prefetch"):
                # the next prompts' images are loaded and encoded on the CPU while the GPU trains (on-policy
                # only: asynchronous, the next step is already queued on the actors)
                rollout.prefetch([PromptItem.from_sample(s) for s in sampler.peek(config.prompts_per_step)])
            with timer.time("training"):
                train_metrics = comm.mean(learner.grpo_step(my_items, my_completions, my_adv))
            with timer.time("weight_sync"):
                sync_weights(learner, rollout, comm, state.version + 1, wait=not stale)
        learner_version = state.version
        state.step, state.version = step, state.version + 1
        state.samples += len(items)
        state.cursor = entry.cursor

        elapsed = time.perf_counter() - run_start
        metrics = {**train_metrics, **reward_metrics(completions, G), **staleness_metrics(completions, learner_version)}
        metrics.update({f"time/{k}": v for k, v in timer.seconds.items()})
        metrics["time/rollout"] = float(out.get("seconds", 0.0))  # the rollout side's own sampling seconds
        metrics["async/in_flight"] = float(queue.in_flight)
        metrics["samples_per_hour"] = 3600.0 * (state.samples - samples_at_start) / max(elapsed, 1e-9)
        sampling_seconds = metrics["time/rollout"] if stale else timer.seconds["generation"]
        metrics["tokens_per_second"] = out["tokens"] / max(sampling_seconds, 1e-9)
        metrics["samples"] = float(state.samples)
        if torch.cuda.is_available():
            metrics["memory/peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if "peak_memory_gb" in out:  # the rollout actors' (the busiest one's) GPU peak
            metrics["memory/rollout_peak_gb"] = float(out["peak_memory_gb"])
        if rank == 0:
            if sinks.on_rollouts:
                sinks.on_rollouts(step, items, completions)
            if sinks.evaluate and config.eval_steps and step % config.eval_steps == 0:
                _wait_for_sync(rollout)  # evaluate the newest weights, not ones an update is still queued behind
                metrics.update(sinks.evaluate(step))
            state.history.append({"step": step, **metrics})
            if sinks.log_metrics:
                sinks.log_metrics(metrics, step)
            if sinks.progress:
                sinks.progress(step, metrics)
        if sinks.checkpoint and _due(config, state, len(items)):
            sinks.checkpoint(state)
    if rank == 0:
        _wait_for_sync(rollout)  # the pool holds the final weights when the loop returns
    return state


def _wait_for_sync(rollout) -> None:
    if hasattr(rollout, "wait_for_sync"):
        rollout.wait_for_sync()


def _due(config: GRPOConfig, state: LoopState, batch: int) -> bool:
    """Checkpoint when the sample count crosses a multiple of save_every_samples, and at the end."""
    if state.step >= config.num_steps:
        return True
    every = config.save_every_samples
    return bool(every) and (state.samples // every) > ((state.samples - batch) // every)


def state_dict(state: LoopState) -> dict:
    return asdict(state)
