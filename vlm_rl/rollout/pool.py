"""The rollout pool: N Ray actors, each a RolloutWorker, fed whole GRPO groups and synced after every step.

Weights travel as one flat buffer (``rollout/weight_sync.py``): through a CUDA IPC handle to every actor on
the sender's own GPU, else through the object store once per sync (fetched by every other actor); with
``transport="broadcast"`` every actor receives it from a torch.distributed broadcast (NCCL between GPUs, gloo
otherwise; ``rollout/broadcast.py``) instead. Each
sync's seconds, bytes and transports are kept in ``last_sync`` (logged as ``weight_sync/*``). An actor that
dies is restarted by Ray (``max_restarts``); the pool notices the lost weights version, re-sends the last
weights and retries the work, so a crash costs time, not the step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import ray
import torch
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from vlm_rl.rollout import weight_sync
from vlm_rl.rollout.types import Completion, PromptItem
from vlm_rl.rollout.worker import RolloutWorker

log = logging.getLogger(__name__)
_ACTOR_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError)
#: How long an actor may take to load an update sent to it: behind the generates already queued on it (an 8B
#: step of long completions takes minutes), so generous; but bounded, so a lost update ends the run in error
#: instead of hanging it (issue 23).
ACK_TIMEOUT_S = 1800.0


def split_evenly(items: list, parts: int) -> list[list]:
    """Contiguous, deterministic split: the same prompts land on the same actor on every run."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


@dataclass
class RolloutHandle:
    """A submitted step: per-actor result refs, the shards they were given, and the oldest weights allowed."""

    step: int
    num_generations: int
    shards: list[list]
    refs: dict[int, ray.ObjectRef]
    min_version: int


class RolloutPool:
    """Driver-side handle over the rollout actors (serialisable: it can be passed to Ray Train workers)."""

    def __init__(self, num_workers: int, worker_kwargs: dict, *, num_cpus: float = 1, num_gpus: float = 0,
                 max_restarts: int = 3, transport: str = "auto", broadcast_timeout_s: float = 300.0):
        if transport not in weight_sync.TRANSPORTS:
            raise ValueError(f"transport: expected one of {weight_sync.TRANSPORTS}, got {transport!r}")
        # max_concurrency=2: health checks answer during a generate; the worker's lock keeps weight
        # updates from running inside one. A broadcast is received during a generate: one thread more.
        actor_cls = ray.remote(RolloutWorker).options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
            max_concurrency=3 if transport == "broadcast" else 2,
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
        self._syncs: list[tuple[list, object, bool]] = []  # sent, not yet acknowledged (sync_weights wait=False)
        self.broadcast_timeout_s = broadcast_timeout_s
        self._group = None  # the sender's BroadcastGroup (made in the process that syncs; never pickled)
        self._group_key: tuple | None = None  # (restarts seen, backend) it was formed at
        self._group_generation = 0
        self._broadcasts = 0  # sequence number of the next broadcast in this group

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_group=None, _group_key=None, _syncs=[])  # a process group belongs to its process
        return state

    def sync_weights(self, state_or_ref, version: int, wait: bool = True) -> float:
        """Push the learners' weights (a state dict on CPU or GPU) to every actor; returns seconds spent.

        Actors on the sender's GPU get a CUDA IPC handle; the others one object-store copy (or, with
        ``transport="broadcast"``, every actor a torch.distributed broadcast). Records ``last_sync``: seconds,
        bytes packed, and how many actors each transport served. ``wait=False``
        (asynchronous GRPO) returns once the update is sent: each actor applies it after the generates
        submitted before it, and ``wait_for_sync`` (or a later ``collect``) checks that it landed.
        """
        t0 = time.perf_counter()
        ipc_workers, store_workers, broadcast_workers = self._split_by_transport(state_or_ref)
        # kept for restarted actors (a restart may land on another GPU, so they always get the object store)
        self._last_weights, self._last_ref, self.version = state_or_ref, None, version
        pending, staged, nbytes, failed = [], None, 0, []
        if broadcast_workers:
            sent, failed, nbytes = self._broadcast(state_or_ref, version, broadcast_workers)
            pending += sent
            store_workers = store_workers + failed
        staged_seconds = 0.0
        if ipc_workers:
            packed, staged = weight_sync.to_cuda_ipc(state_or_ref, self._sender_device(state_or_ref))
            staged_seconds = time.perf_counter() - t0
            nbytes = packed.nbytes
            pending += [(w, w.update_weights.remote(packed, version)) for w in ipc_workers]
        if store_workers:
            ref = self._store_ref()
            nbytes = nbytes or self._last_bytes
            pending += [(w, w.update_weights.remote(ref, version)) for w in store_workers]
        self._syncs.append((pending, staged, bool(ipc_workers)))
        del staged  # owned by self._syncs until every IPC receiver has copied out of it
        if wait:
            self.wait_for_sync()
        else:
            self._reap_syncs()
        seconds = time.perf_counter() - t0
        self.last_sync = {
            "weight_sync/seconds": seconds,
            "weight_sync/stage_seconds": staged_seconds,
            "weight_sync/bytes": float(nbytes),
            "weight_sync/actors_cuda_ipc": float(len(ipc_workers)),
            "weight_sync/actors_object_store": float(len(store_workers)),
            "weight_sync/actors_broadcast": float(len(broadcast_workers) - len(failed)),
        }
        return seconds

    def _broadcast(self, state: dict, version: int, workers: list) -> tuple[list, list, int]:
        """Send ``state`` to ``workers`` through the broadcast group; returns (pending acknowledgements, workers
        it failed to reach, bytes). A failed broadcast (a member died) drops the group: those actors get the
        object store this time and the next sync forms a new group."""
        self._ensure_group(workers)
        entries, buffer = weight_sync.pack(state, self._group.device)
        sequence, self._broadcasts = self._broadcasts, self._broadcasts + 1
        receipts = [(w, w.receive_weights.remote(entries, buffer.numel(), version, sequence)) for w in workers]
        try:
            # A receipt that resolves while the broadcast is still running means that actor died (or failed)
            # mid-broadcast: NCCL would wait for it until its watchdog ends the process, so abort at once.
            self._group.broadcast(buffer, timeout_s=self.broadcast_timeout_s, lost=self._lost(receipts))
        except Exception as exc:  # noqa: BLE001 - gloo/NCCL raise plain RuntimeErrors on a lost member
            log.warning("weight broadcast failed (%s); this sync goes through the object store", exc)
            self._close_group()
            return [], list(workers), buffer.numel()
        return receipts, [], buffer.numel()

    @staticmethod
    def _lost(receipts: list):
        """A check, cheap enough to poll, of whether any receiver's call has already ended (it died)."""
        refs = [ref for _, ref in receipts]
        last = [0.0]

        def lost() -> bool:
            now = time.monotonic()
            if now - last[0] < 0.5:
                return False
            last[0] = now
            for ref in ray.wait(refs, num_returns=len(refs), timeout=0)[0]:
                try:  # a receiver may be done already (received and loaded): only an error means lost
                    ray.get(ref, timeout=0)
                except Exception:  # noqa: BLE001 - RayActorError, or the receiver's own failure
                    return True
            return False

        return lost

    def _ensure_group(self, workers: list) -> None:
        """Form the broadcast group (sender = rank 0) unless the current one still has the same members."""
        from vlm_rl.rollout import broadcast

        backend = self._broadcast_backend(workers)
        if self._group is not None and self._group_key == (self.restarts_seen, backend):
            return
        self._close_group()
        self._group_generation += 1
        world = len(workers) + 1
        host = broadcast.node_address()
        store = broadcast.open_store(host, world, self.broadcast_timeout_s)
        joined = [w.join_weight_group.remote(host, store.port, rank, world, backend, self._group_generation,
                                             self.broadcast_timeout_s) for rank, w in enumerate(workers, start=1)]
        self._group = broadcast.BroadcastGroup(store, 0, world, backend, generation=self._group_generation,
                                               timeout_s=self.broadcast_timeout_s)
        ray.get(joined)
        self._group_key, self._broadcasts = (self.restarts_seen, backend), 0

    def _broadcast_backend(self, workers: list) -> str:
        """NCCL when the sender and every receiver sit on GPUs of their own; gloo (host memory) otherwise."""
        if not torch.cuda.is_available():
            return "gloo"
        if self._actor_gpus is None:
            self._actor_gpus = ray.get([w.device_uuid.remote() for w in self.workers])
        gpus = [gpu for w, gpu in zip(self.workers, self._actor_gpus) if w in workers]
        mine = weight_sync.device_uuid()
        distinct = None not in gpus and len(set(gpus)) == len(gpus) and mine not in gpus
        return "nccl" if distinct else "gloo"

    def _close_group(self) -> None:
        if self._group is not None:
            self._group.close()
        self._group, self._group_key = None, None

    def wait_for_sync(self) -> None:
        """Block until every actor has loaded every update sent so far (restarting and re-sending to an actor
        that died on the way)."""
        while self._syncs:
            self._finish_first_sync()

    def _reap_syncs(self) -> None:
        """Release the staging buffers of updates every actor has acknowledged, without waiting."""
        while self._syncs and self._acknowledged(self._syncs[0][0]):
            self._finish_first_sync()

    def _finish_first_sync(self) -> None:
        pending, staged, ipc = self._syncs.pop(0)
        for worker, done in pending:
            try:
                ray.get(done, timeout=ACK_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError as exc:  # never a silent hang at the end of a run (issue 23)
                raise RuntimeError(f"a rollout actor did not acknowledge weights version {self.version} within "
                                   f"{ACK_TIMEOUT_S:.0f} s: it is stuck (see its log in the Ray dashboard)") from exc
            except _ACTOR_ERRORS as exc:  # died mid-sync: Ray restarts it with base weights, so send again
                self.restarts_seen += 1
                self._actor_gpus = None
                log.warning("rollout actor failed during weight sync (%s); waiting for its restart", exc)
                self._wait_alive(worker)
                self._resync(worker)
        del staged  # every IPC receiver has copied out of it (their update_weights returned)
        if ipc:
            torch.cuda.ipc_collect()

    @staticmethod
    def _acknowledged(pending: list) -> bool:
        refs = [done for _, done in pending]
        return not refs or len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) == len(refs)

    def _split_by_transport(self, state) -> tuple[list, list, list]:
        """(actors reached by CUDA IPC, through the object store, by broadcast) for this state."""
        if self.transport == "broadcast" and not isinstance(state, ray.ObjectRef):
            return [], [], list(self.workers)
        if self.transport == "object_store" or isinstance(state, ray.ObjectRef) or not torch.cuda.is_available():
            if self.transport == "cuda_ipc":
                raise RuntimeError("transport: cuda_ipc needs CUDA in the learner and a state dict, not a ref")
            return [], list(self.workers), []
        if self._actor_gpus is None:
            self._actor_gpus = ray.get([w.device_uuid.remote() for w in self.workers])
        mine = weight_sync.device_uuid(self._sender_device(state))
        ipc = [w for w, gpu in zip(self.workers, self._actor_gpus) if gpu is not None and gpu == mine]
        if self.transport == "cuda_ipc" and len(ipc) != len(self.workers):
            raise RuntimeError(f"transport: cuda_ipc, but only {len(ipc)} of {len(self.workers)} rollout actors "
                               f"share the learner's GPU {mine}; use transport=auto")
        return ipc, [w for w in self.workers if w not in ipc], []

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
        return self.collect(self.submit(prompts, num_generations, step), retries)

    def submit(self, prompts: list[PromptItem], num_generations: int, step: int) -> RolloutHandle:
        """Start a step's generation on the actors and return at once (asynchronous GRPO keeps steps in flight).

        Each actor runs its calls in order of arrival behind its weight lock and waits for the weights sent
        before this call (``min_version``), so this shard samples with them or later; ``collect`` enforces it.
        """
        shards = split_evenly(list(enumerate(prompts)), len(self.workers))
        refs = {i: self.workers[i].generate.remote(shard, num_generations, step, self.version)
                for i, shard in enumerate(shards) if shard}
        return RolloutHandle(step, num_generations, shards, refs, min_version=self.version)

    def ready(self, handle: RolloutHandle) -> bool:
        """True when every shard of ``handle`` has answered (``collect`` would not wait)."""
        refs = list(handle.refs.values())
        return not refs or len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) == len(refs)

    def collect(self, handle: RolloutHandle, retries: int = 3) -> dict:
        """Wait for a submitted step: all its completions, ordered by prompt then sample; plus timings.

        A shard sampled with weights older than ``handle.min_version`` (its actor died and came back with
        the base weights, or ran it before the update sent ahead of it) is re-sampled, so a step never
        trains on completions more stale than the loop asked for.
        """
        shards, num_generations, step = handle.shards, handle.num_generations, handle.step
        pending = dict(handle.refs)
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
                stale = {v for v in (c.weights_version for c in result["completions"]) if v < handle.min_version}
                if not stale or self._last_weights is None:
                    results[i] = result
                    del pending[i]
                    continue
                if attempts[i] >= retries:
                    raise RuntimeError(f"rollout actor {i} keeps answering with weights version {sorted(stale)}, "
                                       f"older than {handle.min_version}")
                # Died and restarted between calls (base weights), or ran ahead of the update sent before it.
                reason = f"sampled with weights version {sorted(stale)} < {handle.min_version}"
            attempts[i] += 1
            self.restarts_seen += 1
            self._actor_gpus = None  # a restarted actor may sit on another GPU: ask again before the next sync
            log.warning("rollout actor %d failed (%s); waiting for its restart and retrying", i, reason)
            self._wait_alive(self.workers[i])
            self._resync(self.workers[i])
            pending[i] = self.workers[i].generate.remote(shards[i], num_generations, step, handle.min_version)
        self._reap_syncs()  # updates queued behind this step have landed by now: free their staging buffers
        completions: list[Completion] = []
        for i in sorted(results):
            completions.extend(results[i]["completions"])
        completions.sort(key=lambda c: c.prompt_index)  # stable: keeps sample order within a group
        out = {
            "completions": completions,
            "seconds": max((r["seconds"] for r in results.values()), default=0.0),
            "tokens": sum(r["tokens"] for r in results.values()),
            # the slowest actor's phase split (prepare, decode and its laps, score)
            "timings": max((r.get("timings", {}) for r in results.values()),
                           key=lambda t: sum(t.get(k, 0.0) for k in ("prepare", "decode", "score")), default={}),
        }
        peaks = [r["peak_memory_gb"] for r in results.values() if "peak_memory_gb" in r]
        if peaks:
            out["peak_memory_gb"] = max(peaks)
        return out

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

    def engine_info(self, index: int = 0) -> dict:
        return ray.get(self.workers[index].engine_info.remote())

    def versions(self) -> list[int]:
        return ray.get([w.version.remote() for w in self.workers])

    def shutdown(self) -> None:
        self._close_group()
        for w in self.workers:
            ray.kill(w)
