"""Moving the learners' trainable weights to the rollout actors: one flat byte buffer, two transports.

The state (the LoRA adapter alone under LoRA) is packed into one contiguous ``uint8`` buffer plus a small
table of (name, dtype, shape, offset). Bytes in, bytes out: actor weights are bit-exact copies.

* ``object_store``: the buffer goes into Ray's object store as a numpy array, which Ray stores out of band
  in shared memory; an actor on the same node maps it without unpickling a copy and copies each view into
  its parameters. Works between any two processes, on CPU and GPU.
* ``cuda_ipc``: when the learner and an actor share one GPU (fractional ``gpus_per_learner`` /
  ``rollout_gpus``), the buffer is staged once on that GPU and the actor opens it through a CUDA IPC handle
  (``torch.multiprocessing.reductions.reduce_tensor``, as vLLM's colocated RLHF example, OpenRLHF and verl
  do), then copies device to device: no pickling, no host round trip for the actor.
  NCCL cannot be used there (two ranks of one communicator may not share a GPU).

Devices are matched by UUID, not index: Ray gives each process its own ``CUDA_VISIBLE_DEVICES``, so the
same GPU can be ``cuda:3`` for the learner and ``cuda:0`` for the actor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ALIGN = 64  # bytes: every view starts aligned for any dtype (and for vectorised copies)
TRANSPORTS = ("auto", "object_store", "cuda_ipc", "broadcast")


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str  # e.g. "bfloat16"
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass
class Packed:
    """A packed state: ``entries`` plus ``data`` (a numpy uint8 array or an IPC handle), ``nbytes`` in all."""

    entries: list[Entry]
    data: object
    nbytes: int
    transport: str


class PackedState(dict):
    """A state dict whose tensors are views of one packed buffer (``entries``, ``buffer``), as ``pack`` lays it
    out: the learner can export straight into it, and the transports then send the buffer without a copy."""

    def __init__(self, entries: list[Entry], buffer: torch.Tensor):
        super().__init__(unpack(entries, buffer))
        self.entries, self.buffer = entries, buffer


def layout_specs(specs: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> tuple[list[Entry], int]:
    """Offsets of every (name, dtype, shape) in the flat buffer (aligned), and the buffer's size."""
    entries, offset = [], 0
    for name, dtype, shape in specs:
        numel = 1
        for d in shape:
            numel *= int(d)
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        entries.append(Entry(name, str(dtype).removeprefix("torch."), tuple(int(d) for d in shape), offset, nbytes))
        offset += -(-nbytes // ALIGN) * ALIGN
    return entries, offset


def layout(state: dict[str, torch.Tensor]) -> tuple[list[Entry], int]:
    """Offsets of every tensor in the flat buffer (aligned), and the buffer's size."""
    return layout_specs([(name, t.dtype, tuple(t.shape)) for name, t in state.items()])


def empty_packed(specs: list[tuple[str, torch.dtype, tuple[int, ...]]], device: torch.device | str) -> PackedState:
    """An uninitialised ``PackedState`` for ``specs`` on ``device``: fill its views, then send it."""
    entries, total = layout_specs(specs)
    return PackedState(entries, torch.empty(total, dtype=torch.uint8, device=device))


def pack(state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> tuple[list[Entry], torch.Tensor]:
    """One ``uint8`` buffer on ``device`` holding every tensor's bytes (one copy per tensor; none, or one
    bulk copy across devices, when ``state`` is already a ``PackedState``)."""
    if isinstance(state, PackedState):
        buffer = state.buffer
        return state.entries, buffer if _same_device(buffer.device, torch.device(device)) else buffer.to(device)
    entries, total = layout(state)
    buffer = torch.empty(total, dtype=torch.uint8, device=device)
    for entry, tensor in zip(entries, state.values()):
        flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        buffer[entry.offset : entry.offset + entry.nbytes].copy_(flat, non_blocking=True)
    return entries, buffer


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:<current>`` are one device (torch.device equality says they are not)."""
    index = lambda d: d.index if d.index is not None or d.type != "cuda" else torch.cuda.current_device()  # noqa: E731
    return a.type == b.type and index(a) == index(b)


def unpack(entries: list[Entry], buffer: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of ``buffer`` with each tensor's name, dtype and shape (no copies)."""
    return {e.name: buffer[e.offset : e.offset + e.nbytes].view(getattr(torch, e.dtype)).view(e.shape)
            for e in entries}


def to_object_store(state: dict[str, torch.Tensor]) -> Packed:
    """Pack on the CPU; the numpy buffer is what Ray stores out of band."""
    if not isinstance(state, PackedState):
        state = {k: v.cpu() for k, v in state.items()}
    entries, buffer = pack(state, "cpu")
    return Packed(entries, buffer.numpy(), buffer.numel(), "object_store")


def from_object_store(packed: Packed) -> dict[str, torch.Tensor]:
    import warnings

    with warnings.catch_warnings():  # Ray hands out a read-only view of shared memory; we only read it
        warnings.simplefilter("ignore", UserWarning)
        buffer = torch.from_numpy(packed.data)
    return unpack(packed.entries, buffer)


def device_uuid(device: torch.device | str | int | None = None) -> str | None:
    """This process's view of a GPU's UUID (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    index = torch.device(device).index if isinstance(device, (str, torch.device)) else device
    index = torch.cuda.current_device() if index is None else index
    return str(torch.cuda.get_device_properties(index).uuid)


def to_cuda_ipc(state: dict[str, torch.Tensor], device: torch.device) -> tuple[Packed, torch.Tensor]:
    """Stage the state on ``device`` as one buffer and share it: returns the message and the buffer, which
    the sender must keep alive until every receiver has copied from it."""
    from torch.multiprocessing.reductions import reduce_tensor

    entries, buffer = pack(state, device)
    torch.cuda.current_stream(device).synchronize()
    rebuild, args = reduce_tensor(buffer)
    handle = (rebuild, args, device_uuid(device))
    return Packed(entries, handle, buffer.numel(), "cuda_ipc"), buffer


def from_cuda_ipc(packed: Packed) -> dict[str, torch.Tensor]:
    """Open the sender's buffer on this process's index of the same GPU (found by UUID)."""
    rebuild, args, uuid = packed.data
    local = [i for i in range(torch.cuda.device_count()) if device_uuid(i) == uuid]
    if not local:
        raise RuntimeError(f"cuda_ipc: GPU {uuid} is not visible to this process; use the object store")
    args = list(args)
    args[6] = local[0]  # rebuild_cuda_tensor's storage_device: the sender's index is not ours
    return unpack(packed.entries, rebuild(*args))


def open_packed(packed: Packed) -> dict[str, torch.Tensor]:
    return from_cuda_ipc(packed) if packed.transport == "cuda_ipc" else from_object_store(packed)
