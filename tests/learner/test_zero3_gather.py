"""Reassembling parameters from gathered ZeRO-3 shards, for shard counts that do not divide the sizes (the
2-rank DeepSpeed run in test_zero3.py checks the collective itself, on a model whose sizes all divide by 2)."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_rl.learner.zero3_gather import unshard_into


def _shard(t: torch.Tensor, world: int) -> list[torch.Tensor]:
    """DeepSpeed's layout: rank r holds elements [r*s, (r+1)*s) of the flat tensor, s = ceil(n / world),
    the last shard zero-padded."""
    flat = t.reshape(-1)
    s = math.ceil(flat.numel() / world)
    padded = torch.cat([flat, flat.new_zeros(s * world - flat.numel())])
    return [padded[r * s:(r + 1) * s].clone() for r in range(world)]


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_every_parameter_comes_back_bit_exact_from_uneven_shards(world):
    torch.manual_seed(world)
    params = [torch.randn(7, 5).to(torch.bfloat16), torch.randn(3), torch.randn(16, 8).to(torch.bfloat16),
              torch.randn(1).to(torch.bfloat16), torch.randn(11, 3, 2)]
    shards = [_shard(p, world) for p in params]
    # each rank's bucket: its shards end to end, as bytes; gathered: one row per rank
    rows = [torch.cat([s[r].view(torch.uint8) for s in shards]) for r in range(world)]
    gathered = torch.stack(rows)
    offset = 0
    for p, s in zip(params, shards):
        out = torch.full_like(p, float("nan"))
        piece = s[0].numel() * s[0].element_size()
        unshard_into(out, gathered, offset, piece)
        offset += piece
        assert torch.equal(out, p), (world, p.shape)
    assert offset == gathered.shape[1]
