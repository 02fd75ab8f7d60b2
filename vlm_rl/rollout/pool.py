"""The rollout pool: N Ray actors, each a RolloutWorker, fed whole GRPO groups and synced after every step.

Weights travel as one flat buffer (``rollout/weight_sync.py``): through a CUDA IPC handle to every actor on
the sender's own GPU, else through the object store once per sync (fetched by every other actor). Each
sync's seconds, bytes and transports are kept in ``last_sync`` (logged as ``weight_sync/*``). An actor that
dies is restarted by Ray (``max_restarts``); the pool notices the lost weights version, re-sends the last
weights and retries the work, so a crash costs time, not the step.
"""

from __future__ import annotations

import logging
import time

import ray
import torch
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from vlm_rl.rollout import weight_sync
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
                 max_restarts: int = 3, transport: str = "auto"):
        if transport not in weight_sync.TRANSPORTS:
            raise ValueError(f"transport: expected one of {weight_sync.TRANSPORTS}, got {transport!r}")
        # max_concurrency=2: health checks answer during a generate; the worker's lock keeps weight
        # updates from running inside one
        actor_cls = ray.remote(RolloutWorker).options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_concurrency=2
        )
        self.workers = [actor_cls.remote(**worker_kwargs, worker_index=i) for i in range(num_workers)]
        self.version = 0
        self.transport = transport
        self._last_weights = None  # the last state (or ref): re-sent to restarted actors
        self._last_ref = None  # ... packed into the object store, once needed
        self._last_bytes = 0
        self._actor_gpus: list[str | None] | None = None
        self.last_sync: dict[str, float] = {}
        self.restarts_seen = 0

    def sync_weights(self, state_or_ref, version: int) -> float:
        """Push the learners' weights (a state dict on CPU or GPU) to every actor; returns seconds spent.

        Actors on the sender's GPU get a CUDA IPC handle; the others one object-store copy. Records
        ``last_sync``: seconds, bytes packed, and how many actors each transport served.
        """
        t0 = time.perf_counter()
        ipc_workers, store_workers = self._split_by_transport(state_or_ref)
        # kept for restarted actors (a restart may land on another GPU, so they always get the object store)
        self._last_weights, self._last_ref, self.version = state_or_ref, None, version
        pending, staged, nbytes = [], None, 0
        if ipc_workers:
            packed, staged = weight_sync.to_cuda_ipc(state_or_ref, self._sender_device(state_or_ref))
            nbytes = packed.nbytes
            pending += [(w, w.update_weights.remote(packed, version)) for w in ipc_workers]
        if store_workers:
            ref = self._store_ref()
            nbytes = nbytes or self._last_bytes
            pending += [(w, w.update_weights.remote(ref, version)) for w in store_workers]
        for worker, done in pending:
            try:
                ray.get(done)
            except _ACTOR_ERRORS as exc:  # died mid-sync: Ray restarts it with base weights, so send again
                self.restarts_seen += 1
                self._actor_gpus = None
                log.warning("rollout actor failed during weight sync (%s); waiting for its restart", exc)
                self._wait_alive(worker)
                self._resync(worker)
        del staged  # every IPC receiver has copied out of it (their update_weights returned)
        if ipc_workers:
            torch.cuda.ipc_collect()
        seconds = time.perf_counter() - t0
        self.last_sync = {
            "weight_sync/seconds": seconds,
            "weight_sync/bytes": float(nbytes),
            "weight_sync/actors_cuda_ipc": float(len(ipc_workers)),
            "weight_sync/actors_object_store": float(len(store_workers)),
        }
        return seconds

    def _split_by_transport(self, state) -> tuple[list, list]:
        """(actors reached by CUDA IPC, actors reached through the object store) for this state."""
        if self.transport == "object_store" or isinstance(state, ray.ObjectRef) or not torch.cuda.is_available():
            if self.transport == "cuda_ipc":
                raise RuntimeError("transport: cuda_ipc needs CUDA in the learner and a state dict, not a ref")
            return [], list(self.workers)
        if self._actor_gpus is None:
            self._actor_gpus = ray.get([w.device_uuid.remote() for w in self.workers])
        mine = weight_sync.device_uuid(self._sender_device(state))
        ipc = [w for w, gpu in zip(self.workers, self._actor_gpus) if gpu is not None and gpu == mine]
        if self.transport == "cuda_ipc" and len(ipc) != len(self.workers):
            raise RuntimeError(f"transport: cuda_ipc, but only {len(ipc)} of {len(self.workers)} rollout actors "
                               f"share the learner's GPU {mine}; use transport=auto")
        return ipc, [w for w in self.workers if w not in ipc]

    @staticmethod
    def _sender_device(state: dict) -> torch.device:
        """The GPU the weights are on, else this process's current GPU (staging a CPU export there)."""
        for tensor in state.values():
            if tensor.is_cuda:
                return tensor.device
        return torch.device("cuda", torch.cuda.current_device())

    def _store_ref(self):
        """The last weights in the object store (packed and put on first use)."""
        if self._last_ref is None:
            if isinstance(self._last_weights, ray.ObjectRef):  # a caller's own ray.put of a state dict
                self._last_ref, self._last_bytes = self._last_weights, 0
            else:
                packed = weight_sync.to_object_store(self._last_weights)
                self._last_ref, self._last_bytes = ray.put(packed), packed.nbytes
        return self._last_ref

    def _resync(self, worker) -> None:
        if self._last_weights is not None:
            ray.get(worker.update_weights.remote(self._store_ref(), self.version))

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
                if not stale or self._last_weights is None:
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

    def prefetch(self, prompts: list[PromptItem]) -> None:
        """Each actor starts encoding the shard of ``prompts`` that ``generate`` will give it (fire and forget)."""
        for worker, shard in zip(self.workers, split_evenly(list(enumerate(prompts)), len(self.workers))):
            if shard:
                worker.prefetch.remote(shard)

    def evaluate(self, val_data: str, limit: int | None = None) -> dict[str, float]:
        """Evaluation runs on a rollout actor: it already holds the newest weights."""
        return ray.get(self.workers[0].evaluate.remote(val_data, limit))

    def get_weights(self, index: int = 0, include_base: bool = False) -> dict:
        return ray.get(self.workers[index].get_weights.remote(include_base))

    def versions(self) -> list[int]:
        return ray.get([w.version.remote() for w in self.workers])

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
