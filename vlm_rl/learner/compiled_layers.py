"""Regional torch.compile of the text decoder layers, switched on only for the learner's forward/backward.

Why: with LoRA the learner's matmuls are already efficient (~85 % of bf16 peak at 8B); what costs is the
rest of each layer: RMSNorm in float32, rotary, LoRA scaling and adds, SiLU·up, each a bandwidth-bound
elementwise kernel (in the 8B profile 12,000 multiplies alone, and together about as much GPU time as every
matmul) plus the CPU time to launch them. Compiling one decoder layer fuses those, and every layer reuses the same compiled code.

Gradient checkpointing moves inside the compiled region (``checkpoint(layer._call_impl)``, non-reentrant), as
torchtitan composes activation checkpointing with per-block compile, so the recomputation is fused too.

Only the learner uses it: the rollout's prefill and its own compiled decode step see plain layers (the
switch restores ``_compiled_call_impl`` and HF's checkpoint flag on exit), so neither recompiles the other.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.utils.checkpoint

from vlm_rl.models.compile_cache import use_compile_cache


def text_decoder_layers(model) -> list[torch.nn.Module]:
    """The language model's decoder layers inside any DeepSpeed engine / PEFT wrapper."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    core = getattr(inner, "model", None)
    text = getattr(core, "language_model", None)
    layers = getattr(text, "layers", None)
    return list(layers) if layers is not None else []


def _checkpointed(layer: torch.nn.Module, *args, **kwargs):
    return torch.utils.checkpoint.checkpoint(layer._call_impl, *args, use_reentrant=False, **kwargs)


def _plain(layer: torch.nn.Module, *args, **kwargs):
    return layer._call_impl(*args, **kwargs)


class CompiledLayers:
    """Holds one compiled callable per layer (they share Dynamo's cache: same code, parameters as inputs)."""

    def __init__(self, model, enabled: bool = True):
        self.layers = text_decoder_layers(model) if enabled else []
        self._fns: dict[tuple[int, bool], object] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.layers)

    def _fn(self, i: int, checkpointed: bool):
        key = (i, checkpointed)
        if key not in self._fns:
            body = _checkpointed if checkpointed else _plain
            use_compile_cache()  # kept across runs under $VLM_RL_CACHE (models/compile_cache.py)
            self._fns[key] = torch.compile(functools.partial(body, self.layers[i]))
        return self._fns[key]

    @contextlib.contextmanager
    def active(self):
        """Inside: every decoder layer call goes through its compiled callable (checkpointing included)."""
        if not self.layers:
            yield
            return
        saved = [(layer._compiled_call_impl, getattr(layer, "gradient_checkpointing", False)) for layer in self.layers]
        try:
            for i, layer in enumerate(self.layers):
                checkpointed = bool(getattr(layer, "gradient_checkpointing", False)) and layer.training
                layer._compiled_call_impl = self._fn(i, checkpointed)
                if checkpointed:
                    layer.gradient_checkpointing = False  # HF's own wrapper would checkpoint a second time
            yield
        finally:
            for layer, (impl, ckpt) in zip(self.layers, saved):
                layer._compiled_call_impl = impl
                if hasattr(layer, "gradient_checkpointing"):
                    layer.gradient_checkpointing = ckpt
