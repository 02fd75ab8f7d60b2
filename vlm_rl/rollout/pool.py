"""The rollout pool: N Ray actors, each a RolloutWorker, fed whole GRPO groups and synced after every step.

Weights are put in the object store once per sync and fetched by every actor. An actor that dies is
restarted by Ray (``max_restarts``); the pool notices the lost weights version, re-sends the last weights
and retries the work, so a crash costs time, not the step.
"""

from __future__ import annotations

import logging
import time

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from vlm_rl.rollout.types import Completion, PromptItem
from vlm_rl.rollout.worker import RolloutWorker

log = logging.getLogger(__name__)
_ACTOR_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError)


def split_evenly(items: list, parts: int) -> list[list]:
    """Contiguous, deterministic split: the same prompts land on the same actor on every run."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


class RolloutPool:
    """Driver-side handle over the rollout actors (serialisable: it can be passed to Ray Train workers)."""

    def __init__(self, num_workers: int, worker_kwargs: dict, *, num_cpus: float = 1, num_gpus: float = 0,
                 max_restarts: int = 3):
        actor_cls = ray.remote(RolloutWorker).options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_concurrency=2
        )
        self.workers = [actor_cls.remote(**worker_kwargs, worker_index=i) for i in range(num_workers)]
        self.version = 0
        self._weights_ref = None
        self.restarts_seen = 0

    def sync_weights(self, state_or_ref, version: int) -> float:
        """Push the learners' weights to every actor; returns seconds spent."""
        t0 = time.perf_counter()
        ref = state_or_ref if isinstance(state_or_ref, ray.ObjectRef) else ray.put(state_or_ref)
        self._weights_ref, self.version = ref, version
        pending = [w.update_weights.remote(ref, version) for w in self.workers]
        for worker, done in zip(self.workers, pending):
            try:
                ray.get(done)
            except _ACTOR_ERRORS as exc:  # died mid-sync: Ray restarts it with base weights, so send again
                self.restarts_seen += 1
                log.warning("rollout actor failed during weight sync (%s); waiting for its restart", exc)
                self._wait_alive(worker)
                self._resync(worker)
        return time.perf_counter() - t0

    def _resync(self, worker) -> None:
        if self._weights_ref is not None:
            ray.get(worker.update_weights.remote(self._weights_ref, self.version))

    def generate(self, prompts: list[PromptItem], num_generations: int, step: int, retries: int = 3) -> dict:
        """All completions of a step, ordered by prompt then sample; plus per-actor timings."""
        shards = split_evenly(list(enumerate(prompts)), len(self.workers))
        pending = {i: self.workers[i].generate.remote(shard, num_generations, step)
                   for i, shard in enumerate(shards) if shard}
        results: dict[int, dict] = {}
        attempts = dict.fromkeys(pending, 0)
        while pending:
            i, ref = next(iter(pending.items()))
            try:
                result = ray.get(ref)
            except _ACTOR_ERRORS as exc:
                if attempts[i] >= retries:
                    raise
                reason = str(exc)
            else:
                stale = {c.weights_version for c in result["completions"]} - {self.version}
                if not stale or self._weights_ref is None:
                    results[i] = result
                    del pending[i]
                    continue
                if attempts[i] >= retries:
                    raise RuntimeError(f"rollout actor {i} keeps answering with weights version {stale}, "
                                       f"not {self.version}")
                # Died and restarted between calls: it sampled with the base weights, so redo the shard.
                reason = f"restarted between steps, sampled with weights version {sorted(stale)}"
            attempts[i] += 1
            self.restarts_seen += 1
            log.warning("rollout actor %d failed (%s); waiting for its restart and retrying", i, reason)
            self._wait_alive(self.workers[i])
            self._resync(self.workers[i])
            pending[i] = self.workers[i].generate.remote(shards[i], num_generations, step)
        completions: list[Completion] = []
        for i in sorted(results):
            completions.extend(results[i]["completions"])
        completions.sort(key=lambda c: c.prompt_index)  # stable: keeps sample order within a group
        return {
            "completions": completions,
            "seconds": max((r["seconds"] for r in results.values()), default=0.0),
            "tokens": sum(r["tokens"] for r in results.values()),
        }

    @staticmethod
    def _wait_alive(worker, timeout: float = 300.0) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                ray.get(worker.version.remote(), timeout=30)
                return
            except _ACTOR_ERRORS + (ray.exceptions.GetTimeoutError,):
                if time.time() > deadline:
                    raise
                time.sleep(1.0)

    def evaluate(self, val_data: str, limit: int | None = None) -> dict[str, float]:
        """Evaluation runs on a rollout actor: it already holds the newest weights."""
        return ray.get(self.workers[0].evaluate.remote(val_data, limit))

    def get_weights(self, index: int = 0) -> dict:
        return ray.get(self.workers[index].get_weights.remote())

    def versions(self) -> list[int]:
        return ray.get([w.version.remote() for w in self.workers])

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
