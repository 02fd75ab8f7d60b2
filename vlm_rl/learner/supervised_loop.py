"""The step loop shared by SFT and DPO: take a batch → this rank's share → one optimizer step → log → checkpoint.

The algorithm is a ``step_fn(items) -> metrics`` argument, so the same loop (and the same resume logic:
the data cursor alone restores the order) serves both, and a CPU test can drive it with a fake step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from vlm_rl.learner.comm import Comm


@dataclass
class TrainState:
    """What a checkpoint must restore for the run to continue exactly."""

    step: int = 0
    samples: int = 0  # examples consumed over all ranks
    cursor: int = 0  # sampler position
    history: list[dict] = field(default_factory=list)


@dataclass
class TrainSinks:
    """Side effects; ``log_metrics``/``progress`` run on rank 0, ``checkpoint`` is collective."""

    log_metrics: Callable[[dict, int], None] | None = None
    checkpoint: Callable[[TrainState], None] | None = None
    progress: Callable[[int, dict], None] | None = None


def total_steps(num_examples: int, batch_size: int, num_epochs: int, max_steps: int) -> int:
    """``max_steps`` when set, else enough steps to see every example ``num_epochs`` times.

    >>> total_steps(10, 4, 2, 0), total_steps(10, 4, 2, 3)
    (5, 3)
    """
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(num_examples * num_epochs / batch_size))


def rank_share(items: list, rank: int, world: int) -> list:
    """Rank ``rank``'s contiguous slice of a global batch (the batch size is a multiple of ``world``)."""
    per = len(items) // world
    return items[rank * per : (rank + 1) * per]


def checkpoint_due(state: TrainState, num_steps: int, every_samples: int, batch: int) -> bool:
    """At the end, and whenever the sample count crosses a multiple of ``every_samples``."""
    if state.step >= num_steps:
        return True
    return bool(every_samples) and state.samples // every_samples > (state.samples - batch) // every_samples


def supervised_train(
    step_fn: Callable[[list], dict],
    *,
    sampler,
    batch_size: int,
    num_steps: int,
    num_examples: int,
    save_every_samples: int = 0,
    lr: Callable[[], float] | None = None,
    comm: Comm | None = None,
    state: TrainState | None = None,
    sinks: TrainSinks | None = None,
) -> TrainState:
    """Run from ``state`` to ``num_steps``; every rank calls it, metrics are averaged over ranks."""
    comm = comm or Comm()
    state = state or TrainState()
    sinks = sinks or TrainSinks()
    sampler.cursor = state.cursor
    started, samples_at_start = time.perf_counter(), state.samples
    while state.step < num_steps:
        t0 = time.perf_counter()
        batch = sampler.take(batch_size)
        metrics = comm.mean(step_fn(rank_share(batch, comm.rank, comm.world_size)))
        state.step += 1
        state.samples += len(batch)
        state.cursor = sampler.cursor
        elapsed = time.perf_counter() - started
        metrics["time/step"] = time.perf_counter() - t0
        metrics["samples_per_hour"] = 3600.0 * (state.samples - samples_at_start) / max(elapsed, 1e-9)
        metrics["samples"] = float(state.samples)
        metrics["epoch"] = state.samples / max(num_examples, 1)
        if lr is not None:
            metrics["lr"] = float(lr())
        if comm.rank == 0:
            state.history.append({"step": state.step, **metrics})
            if sinks.log_metrics:
                sinks.log_metrics(metrics, state.step)
            if sinks.progress:
                sinks.progress(state.step, metrics)
        if sinks.checkpoint and checkpoint_due(state, num_steps, save_every_samples, len(batch)):
            sinks.checkpoint(state)
    return state


def state_dict(state: TrainState) -> dict:
    return asdict(state)
