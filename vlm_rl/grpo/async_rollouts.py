"""The steps whose rollouts are in flight: asynchronous GRPO's queue between the sampler and the loop.

With ``max_staleness = k`` the loop keeps the rollouts of steps ``s .. s+k`` submitted while step ``s``
trains, so the rollout pool samples step ``s+1`` (and on) during the learners' update. Every submission
goes out after the newest weights were sent, so the rollouts of step ``s+k`` are sampled with the weights
the learners held at step ``s``: at most ``k`` updates old (``RolloutPool.collect`` re-samples a shard that
is older). ``k = 0`` submits and collects each step in turn: today's on-policy loop.

Each entry remembers the sampler cursor after its prompts, so a checkpoint records the cursor of the
prompts *trained*; resuming from it re-takes, and re-samples, exactly the prompts that were in flight
(the way NeMo-RL gap-fills after a resume, without saving the rollouts themselves).

A rollout source without ``submit``/``collect`` (the colocated rollout, simple fakes) is asked to
``generate`` when its step is collected: with ``k = 0`` that is the same moment.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from vlm_rl.rollout.types import PromptItem


@dataclass
class InFlight:
    """One submitted step: its prompts, the sampler cursor after them, and the rollout handle (rank 0)."""

    step: int
    items: list[PromptItem]
    cursor: int
    handle: object | None = None


class RolloutQueue:
    """Submits steps ahead (up to ``max_staleness``) in prompt order; hands them back oldest first.

    Every rank takes the same prompts from its own sampler (the cursors stay equal); only rank 0 talks to
    the rollout source.
    """

    def __init__(self, rollout, sampler, *, prompts_per_step: int, num_generations: int, max_staleness: int,
                 last_step: int, submit: bool):
        if max_staleness < 0:
            raise ValueError(f"max_staleness: must be >= 0, got {max_staleness}")
        self.rollout = rollout
        self.sampler = sampler
        self.prompts_per_step = prompts_per_step
        self.num_generations = num_generations
        self.max_staleness = max_staleness
        self.last_step = last_step
        self.submit_here = submit  # rank 0
        self.asynchronous = hasattr(rollout, "submit") and hasattr(rollout, "collect")
        self._queue: deque[InFlight] = deque()
        self.submitted: list[int] = []  # steps in submission order (tests and logs)

    def fill(self, step: int) -> InFlight:
        """Submit every step up to ``step + max_staleness`` not yet submitted; return ``step``'s entry."""
        next_step = self._queue[-1].step + 1 if self._queue else step
        while next_step <= min(step + self.max_staleness, self.last_step):
            items = [PromptItem.from_sample(s) for s in self.sampler.take(self.prompts_per_step)]
            handle = None
            if self.submit_here and self.asynchronous:
                handle = self.rollout.submit(items, self.num_generations, next_step)
            self._queue.append(InFlight(next_step, items, self.sampler.cursor, handle))
            self.submitted.append(next_step)
            next_step += 1
        head = self._queue[0]
        if head.step != step:
            raise RuntimeError(f"rollout queue: asked for step {step}, the oldest in flight is {head.step}")
        return head

    def collect(self, step: int) -> dict | None:
        """Hand ``step`` back: rank 0 waits for its rollouts (``{"completions", "seconds", "tokens", ...}``),
        the other ranks get None (the loop broadcasts rank 0's)."""
        entry = self._queue.popleft()
        if entry.step != step:
            raise RuntimeError(f"rollout queue: collecting step {step}, the oldest in flight is {entry.step}")
        if not self.submit_here:
            return None
        if self.asynchronous:
            return self.rollout.collect(entry.handle)
        return self.rollout.generate(entry.items, self.num_generations, step)

    @property
    def in_flight(self) -> int:
        """Steps submitted and not yet handed back."""
        return len(self._queue)
