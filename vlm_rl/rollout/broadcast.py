"""A torch.distributed group of its own between the weight sender (learner rank 0) and the rollout actors.

Between GPUs the object store costs two host copies and a pickle-free but CPU-bound transfer (~2 GB/s); the
peers (verl, NeMo-RL, OpenRLHF, TRL's async trainer) broadcast the weights from the learner over NCCL instead.
This group is separate from the learners' own (DeepSpeed's) default group: its own ``TCPStore`` on the sender,
rank 0 = sender, ranks 1..n = actors, one ``ProcessGroupNCCL`` (every member on its own GPU) or
``ProcessGroupGloo`` (CPU, or when two members share a GPU, which NCCL forbids). One flat ``uint8`` buffer
(``weight_sync.pack``) goes out per sync, so the receivers' copies are bit-exact.

The sender creates the store first and every receiver connects to it, then all construct the process group
at once (each call blocks until all members are there). A group cannot take a new member: when an actor is
restarted the pool forms a new group (``generation`` keeps the keys of two groups apart in one store).
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

BACKENDS = ("nccl", "gloo")


#: Aborted gloo groups, kept referenced until the process ends (see ``BroadcastGroup.abort``).
_ABANDONED: list = []


class BroadcastTimeout(RuntimeError):
    """A broadcast did not complete in time, or a member was lost during it; the group was aborted."""


def _timeout(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


def open_store(host: str, world_size: int, timeout_s: float) -> dist.TCPStore:
    """The sender's store on a free port of ``host`` (``store.port`` tells the receivers where)."""
    return dist.TCPStore(host, 0, world_size, True, timeout=_timeout(timeout_s), wait_for_workers=False)


def node_address() -> str:
    """This node's address as the other Ray nodes reach it (Ray's own view when Ray runs here)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:  # pragma: no cover - Ray is a dependency
        pass
    return socket.gethostbyname(socket.gethostname())


class BroadcastGroup:
    """One member of a weight-broadcast group; ``broadcast`` sends (rank 0) or receives (others) in place."""

    def __init__(self, store: dist.Store, rank: int, world_size: int, backend: str, *, generation: int = 0,
                 timeout_s: float = 300.0):
        if backend not in BACKENDS:
            raise ValueError(f"broadcast backend: expected one of {BACKENDS}, got {backend!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"broadcast group: rank {rank} outside a group of {world_size}")
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.timeout_s = timeout_s
        prefixed = dist.PrefixStore(f"vlm_rl_weights_{generation}", store)
        if backend == "nccl":
            # NCCL's own watchdog gets twice our deadline: ``broadcast`` gives up (and aborts the communicator)
            # first, so the watchdog never tears the learner process down over a lost rollout actor.
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = _timeout(2 * timeout_s)
            self._pg = dist.ProcessGroupNCCL(prefixed, rank, world_size, options)
        else:
            self._pg = dist.ProcessGroupGloo(prefixed, rank, world_size, _timeout(timeout_s))
        self._store = store  # the store must outlive the group (the sender's is also the server)

    @classmethod
    def join(cls, host: str, port: int, rank: int, world_size: int, backend: str, *, generation: int = 0,
             timeout_s: float = 300.0) -> BroadcastGroup:
        """A receiver's side: connect to the sender's store, then join the process group."""
        store = dist.TCPStore(host, port, world_size, False, timeout=_timeout(timeout_s))
        return cls(store, rank, world_size, backend, generation=generation, timeout_s=timeout_s)

    @property
    def device(self) -> torch.device:
        """Where this member's buffers must live: its current GPU for NCCL, the CPU for gloo."""
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def broadcast(self, buffer: torch.Tensor, timeout_s: float | None = None,
                  lost: Callable[[], bool] | None = None) -> torch.Tensor:
        """Rank 0's ``buffer`` lands in every member's ``buffer`` (same size); blocks until this member is done.

        Bounded: after ``timeout_s`` (the group's by default), or as soon as ``lost()`` says a member is gone,
        the group is aborted and :class:`BroadcastTimeout` raised. A plain ``wait()`` would block the sender
        until NCCL's watchdog fires, which then takes the whole process down with it.
        """
        if buffer.device.type != self.device.type:
            raise ValueError(f"broadcast over {self.backend} needs the buffer on {self.device}, not {buffer.device}")
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        work = self._pg.broadcast(buffer, 0)
        pause = 0.0005
        while not work.is_completed():
            gone = lost is not None and lost()
            if gone or time.monotonic() > deadline:
                self.abort()
                raise BroadcastTimeout("a member of the weight group was lost mid-broadcast" if gone else
                                       f"weight broadcast not done after {self.timeout_s if timeout_s is None else timeout_s:.0f} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        work.wait()  # raises the backend's own error, if it had one
        if self.backend == "nccl":
            torch.cuda.current_stream().synchronize()
        return buffer

    def abort(self) -> None:
        """Tear the group down without waiting for its members (a lost peer would block a clean shutdown)."""
        pg, self._pg = self._pg, None
        if pg is None:
            return
        if self.backend != "nccl":
            # gloo cannot abort: its shutdown (and its destructor) wait out the pending operation's own timeout.
            # Park it; its background work ends by itself at that timeout.
            _ABANDONED.append(pg)
            return
        try:
            pg.abort()  # ncclCommAbort: returns at once, whatever the members do
        except Exception:  # noqa: BLE001 - a broken communicator may refuse even this; it is dropped either way
            pass

    def close(self) -> None:
        pg, self._pg = self._pg, None
        if pg is not None and self.backend == "nccl" and hasattr(pg, "shutdown"):
            pg.shutdown()
