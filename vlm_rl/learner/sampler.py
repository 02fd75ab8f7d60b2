"""Deterministic prompt order: a seeded permutation per epoch, so the data cursor alone restores it."""

from __future__ import annotations

import random
from typing import Generic, TypeVar

T = TypeVar("T")


class PromptSampler(Generic[T]):
    """Hands out items epoch by epoch in a seeded order; ``cursor`` counts items handed out so far."""

    def __init__(self, items: list[T], seed: int = 0, cursor: int = 0):
        if not items:
            raise ValueError("PromptSampler: the dataset is empty")
        self.items = list(items)
        self.seed = seed
        self.cursor = cursor

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.seed * 7919 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[T]:
        out = []
        for _ in range(n):
            epoch, pos = divmod(self.cursor, len(self.items))
            out.append(self.items[self._order(epoch)[pos]])
            self.cursor += 1
        return out

    def peek(self, n: int) -> list[T]:
        """The next ``n`` items ``take`` will return, without moving the cursor (for prefetching)."""
        cursor = self.cursor
        try:
            return self.take(n)
        finally:
            self.cursor = cursor
