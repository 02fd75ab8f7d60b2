"""A one-process stand-in for the DeepSpeed engine: the same methods PolicyLearner calls, plain torch inside.

On one device ZeRO has nothing to shard, and a process may need two learners on different devices (the
GPU tests compare a CUDA step with a CPU step), which one DeepSpeed process group cannot serve.
"""

from __future__ import annotations

import torch

from vlm_rl.config import BaseConfig


class LocalEngine:
    """``engine(**inputs)``, ``backward``, ``step`` (clip + AdamW + zero_grad), ``get_global_grad_norm``."""

    def __init__(self, model: torch.nn.Module, config: BaseConfig, device: str | torch.device):
        self.module = model
        self.device = torch.device(device)
        self.max_grad_norm = config.max_grad_norm
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self._grad_norm: float | None = None

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self._grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_global_grad_norm(self) -> float | None:
        return self._grad_norm
