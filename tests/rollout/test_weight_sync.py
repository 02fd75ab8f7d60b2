"""The flat weight buffer: every dtype and shape comes back bit for bit (the actors' weights must equal the
learners' exactly), and views stay aligned."""

from __future__ import annotations

import pytest
import torch

from vlm_rl.rollout import weight_sync


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**15), 2**15, (37, 5), generator=gen, dtype=torch.int16)
    return {
        "a.lora_A.weight": torch.randn(4, 33, generator=gen),
        "a.lora_B.weight": bits.view(torch.bfloat16),  # arbitrary bf16 bit patterns, NaNs included
        "b.bias": torch.randn(3, generator=gen, dtype=torch.float64),
        "steps": torch.tensor([7], dtype=torch.int64),
        "scalar": torch.tensor(1.5),
        "strided": torch.randn(6, 4, generator=gen).t(),  # not contiguous
    }


def test_pack_unpack_roundtrip_is_bit_exact():
    state = _state()
    entries, buffer = weight_sync.pack(state)
    assert buffer.dtype == torch.uint8 and all(e.offset % weight_sync.ALIGN == 0 for e in entries)
    out = weight_sync.unpack(entries, buffer)
    assert list(out) == list(state)
    for name, tensor in state.items():
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape, name
        assert torch.equal(out[name].reshape(-1).view(torch.uint8),
                           tensor.contiguous().reshape(-1).view(torch.uint8)), name


def test_object_store_message_opens_to_the_same_bits():
    state = _state()
    packed = weight_sync.to_object_store(state)
    assert packed.nbytes == weight_sync.layout(state)[1]
    assert packed.nbytes >= sum(t.numel() * t.element_size() for t in state.values())
    packed.data.setflags(write=False)  # as Ray hands it out: read-only shared memory
    out = weight_sync.open_packed(packed)
    assert all(torch.equal(out[k].view(torch.uint8), state[k].contiguous().view(torch.uint8))
               for k in state if state[k].dim() > 0)


def test_no_gpu_means_no_uuid():
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    assert weight_sync.device_uuid() is None
