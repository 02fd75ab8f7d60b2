"""One job computed ahead of time on a CPU thread, handed over only to a caller that asks for the same key.

Used for prompt encoding (image load, resize, processor): the colocated rollout prepares the next step's
prompts while the learner trains, the learner its own while the rollout generates. Image decoding and the
processor's array work mostly run outside the GIL.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Prefetcher(Generic[K, V]):
    """``start(key)`` runs ``compute(key)`` on a thread; ``take(key)`` returns that result when the key is the
    one started (waiting if needed), else computes ``compute(key)`` here. Only the latest start is kept."""

    def __init__(self, compute: Callable[[K], V], name: str):
        self.compute = compute
        self.name = name
        self._pool: ThreadPoolExecutor | None = None
        self.pending: tuple[K, Future] | None = None

    def start(self, key: K) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        self.pending = (key, self._pool.submit(self.compute, key))

    def take(self, key: K) -> V:
        pending, self.pending = self.pending, None
        if pending is not None and pending[0] == key:
            return pending[1].result()
        return self.compute(key)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool, self.pending = None, None
