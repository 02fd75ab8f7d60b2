"""The few collectives the loop needs, over torch.distributed (or a single process)."""

from __future__ import annotations

import torch
import torch.distributed as dist


class Comm:
    """Rank-0-centric helpers; with no process group they act on one process."""

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_initialized() else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_initialized() else 1

    def broadcast(self, obj):
        """Rank 0's object on every rank."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average float metrics over ranks (every rank must pass the same keys)."""
        if not dist.is_initialized() or dist.get_world_size() == 1 or not metrics:
            return dict(metrics)
        keys = sorted(metrics)
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        t /= dist.get_world_size()
        return dict(zip(keys, t.tolist()))

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()
