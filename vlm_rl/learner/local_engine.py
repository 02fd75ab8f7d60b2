"""A one-process stand-in for the DeepSpeed engine: the same methods PolicyLearner calls, plain torch inside.

On one device ZeRO has nothing to shard, and DeepSpeed's bf16 optimizer keeps persistent fp32 gradient
buffers next to its fp32 master weights (memory the one-GPU colocated path needs for activations). Here,
under bf16, the trainable tensors are bf16 (what the forward and the CUDA-graphed decode read), the fp32
master copies and AdamW states live beside them. Each bf16 gradient is folded into an fp32 sum the moment
autograd finishes it (a post-accumulate hook), so micro-batches accumulate in fp32, as DeepSpeed's bf16
optimizer does, and no bf16 gradient outlives its backward. A process
may also need two learners on different devices (the GPU tests compare a CUDA step with a CPU step),
which one DeepSpeed process group cannot serve.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from vlm_rl.config import BaseConfig

_STATE_FILE = "local_engine.pt"


class LocalEngine:
    """``engine(**inputs)``, ``backward``, ``step`` (clip + AdamW + zero_grad at the accumulation boundary),
    ``get_global_grad_norm``, ``save_checkpoint``/``load_checkpoint``: DeepSpeed's semantics, one device.

    Like DeepSpeed, ``backward`` divides the loss by ``accumulation`` and ``step`` is a no-op until the
    ``accumulation``-th call; ``global_steps`` counts optimizer steps.
    """

    dp_world_size = 1  # no data parallelism: gradients are never averaged over ranks

    def __init__(self, model: torch.nn.Module, config: BaseConfig, device: str | torch.device,
                 accumulation: int = 1):
        self.module = model
        self.device = torch.device(device)
        self.max_grad_norm = config.max_grad_norm
        self.accumulation = max(1, int(accumulation))
        self.params = [p for p in model.parameters() if p.requires_grad]
        if config.bf16:
            with torch.no_grad():  # PEFT up-casts adapters to fp32; run them in bf16 as DeepSpeed's bf16 does
                for p in self.params:
                    p.data = p.data.to(torch.bfloat16)
        self.masters = [p.detach().to(torch.float32, copy=True) for p in self.params]
        self.mixed = any(p.dtype != torch.float32 for p in self.params)
        opt_params = self.masters if self.mixed else self.params
        self.optimizer = torch.optim.AdamW(opt_params, lr=config.learning_rate, weight_decay=config.weight_decay)
        if not self.mixed:
            self.masters = []
        else:
            for p, master in zip(self.params, self.masters):
                p.register_post_accumulate_grad_hook(functools.partial(_fold_into_fp32, master))
        self._micro = 0
        self.global_steps = 0
        self._grad_norm: float | None = None

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def gradient_accumulation_steps(self) -> int:
        return self.accumulation

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self._micro + 1) % self.accumulation == 0

    def step(self) -> None:
        boundary = self.is_gradient_accumulation_boundary()
        self._micro += 1
        if not boundary:
            return
        if self.mixed:
            for master, p in zip(self.masters, self.params):
                if p.grad is not None:  # a gradient written outside autograd's accumulation (no hook fired)
                    _fold_into_fp32(master, p)
            targets = self.masters
        else:
            targets = self.params
        self._grad_norm = float(torch.nn.utils.clip_grad_norm_(targets, self.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_steps += 1
        if self.mixed:
            with torch.no_grad():  # in place: the decode graph holds these tensors' addresses
                torch._foreach_copy_(self.params, self.masters)

    def get_global_grad_norm(self) -> float | None:
        return self._grad_norm

    # -- checkpoints (the calls vlm_rl.learner.checkpoint makes on a DeepSpeed engine) ---------------
    def save_checkpoint(self, save_dir: str, tag: str = "state", save_latest: bool = False) -> None:
        out = Path(save_dir) / tag
        out.mkdir(parents=True, exist_ok=True)
        state = {"optimizer": self.optimizer.state_dict(), "micro": self._micro,
                 "global_steps": self.global_steps,
                 "masters": [m.cpu() for m in self.masters],
                 "params": [p.detach().cpu() for p in self.params]}
        torch.save(state, out / _STATE_FILE)

    def load_checkpoint(self, load_dir: str, tag: str = "state", load_optimizer_states: bool = True,
                        load_lr_scheduler_states: bool = True):
        path = Path(load_dir) / tag / _STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no LocalEngine state (was this checkpoint written by DeepSpeed?)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if len(state["params"]) != len(self.params):
            raise ValueError(f"{path}: {len(state['params'])} trainable tensors saved, model has {len(self.params)}")
        with torch.no_grad():
            for p, saved in zip(self.params, state["params"]):
                p.copy_(saved)
            for m, saved in zip(self.masters, state["masters"]):
                m.copy_(saved)
        if load_optimizer_states:
            self.optimizer.load_state_dict(state["optimizer"])
        self._micro = int(state["micro"])
        self.global_steps = int(state.get("global_steps", 0))
        return str(path), {}


def _fold_into_fp32(master: torch.Tensor, param: torch.Tensor) -> None:
    """Add ``param``'s (bf16) gradient into ``master.grad`` (fp32) and free it: fp32 accumulation."""
    if param.grad is None:
        return
    if master.grad is None:
        master.grad = param.grad.to(torch.float32)
    else:
        master.grad.add_(param.grad)
    param.grad = None
