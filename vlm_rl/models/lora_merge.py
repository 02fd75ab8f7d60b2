"""Fold LoRA into the base weights while sampling, then restore the base weights bit for bit.

Why: during decode every LoRA projection costs two extra small GEMMs and an add per token (at 8B, ~500
extra kernels per token). With the adapter folded in, decode reads one weight matrix per projection, as an
un-adapted model does: 12.5 → 8.6 ms per token at 8B on an H100 (docs/PERFORMANCE.md). verl and OpenRLHF
do the same when they load merged weights into vLLM, but they keep a second copy of the model; here the
merge is in place, so no memory is added.

The catch is exactness: ``W + ΔW`` rounded to bf16 and then ``- ΔW`` rounded again is not always ``W``
(binade crossings, ties). The base weights are frozen and must not drift step after step, so at merge
time we compute the very restore that will run later (same ``ΔW`` tensor, same arithmetic), find the
elements it would get wrong (typically a tiny fraction) and keep their original values. Restoring is then
``W = round(W' - ΔW)`` plus those few fix-ups, recomputing ``ΔW`` from the unchanged adapter (GEMMs are
deterministic for the same shapes on the same device), which tests check bitwise on CPU and GPU.

While merged, PEFT's own forward skips the adapter (``merged_adapters`` non-empty), so HF prefill and the
decode step both run the plain projections. Adapters must not be disabled inside the context (PEFT would
then un-merge with its inexact subtraction); the sampling code never does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class _Merged:
    module: torch.nn.Module
    adapter: str
    fix_index: torch.Tensor  # flat indices the subtraction would get wrong
    fix_values: torch.Tensor  # their original values


def _lora_linears(model, adapter: str) -> list[torch.nn.Module]:
    """PEFT LoRA ``Linear`` layers that can be merged exactly in place (plain LoRA, full local weights)."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    found = []
    for module in model.modules():
        if not isinstance(module, LoraLinear) or adapter not in module.lora_A:
            continue
        weight = module.base_layer.weight
        if (module.merged or adapter in module.lora_variant or module.fan_in_fan_out
                or weight.numel() == 0 or getattr(weight, "ds_numel", None) is not None):
            return []  # partitioned (ZeRO-3), a LoRA variant or already merged: leave the model alone
        found.append(module)
    return found


def _delta(module, adapter: str) -> torch.Tensor:
    """``scaling * B @ A`` in the weight's dtype (a bf16 GEMM with fp32 accumulation on GPU). Its own
    rounding does not matter for exactness: merge and restore use the same, deterministic, value."""
    weight = module.base_layer.weight
    a = module.lora_A[adapter].weight.to(weight.dtype)
    b = module.lora_B[adapter].weight.to(weight.dtype)
    return b @ a.mul(module.scaling[adapter])


def _fold(weight: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W + d, where restoring would not give W back)``, the sums in float32, one rounding each."""
    merged = (weight.float() + delta.float()).to(weight.dtype)
    return merged, _unfold(merged, delta) != weight


def _unfold(merged: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return (merged.float() - delta.float()).to(merged.dtype)


_EAGER = {"fold": _fold, "unfold": _unfold}
_GROUP = 7  # modules folded between host syncs: one decoder layer's projections (~0.6 GB of temporaries at 8B)
_compiled: dict[str, object] = {}


def _run(name: str, *tensors: torch.Tensor):
    """On CUDA each of ``_fold``/``_unfold`` runs as one fused elementwise kernel (eager, ~8 passes over every
    weight took 0.39 s per rollout at 8B). Float add/sub and the bf16 cast round the same way compiled or not,
    and the same function serves the check and the restore."""
    if not tensors[0].is_cuda:
        return _EAGER[name](*tensors)
    if name not in _compiled:
        # emulate_precision_casts: Inductor must round `merged` to bf16 before the check subtracts d again
        # (by default it may keep the fp32 value inside the fused kernel, and the check would then differ
        # from the restore, which reads the stored bf16 weight)
        from vlm_rl.models.compile_cache import use_compile_cache

        use_compile_cache()
        _compiled[name] = torch.compile(_EAGER[name], dynamic=False, options={"emulate_precision_casts": True})
    try:
        return _compiled[name](*tensors)
    except Exception:  # noqa: BLE001 - no working compiler: the eager version is exact too
        _compiled[name] = _EAGER[name]
        return _EAGER[name](*tensors)


class merged_lora:
    """``with merged_lora(model):`` the adapter is folded into the base weights; on exit they are exactly
    what they were. A no-op for models without (mergeable) LoRA layers. ``count`` tells how many were merged."""

    def __init__(self, model, adapter: str = "default", enabled: bool = True):
        self.model = model
        self.adapter = adapter
        self.enabled = enabled
        self._merged: list[_Merged] = []
        self.fixups = 0

    @property
    def count(self) -> int:
        return len(self._merged)

    @torch.no_grad()
    def __enter__(self):
        if not self.enabled:
            return self
        try:
            self._merge(_lora_linears(self.model, self.adapter))
        except BaseException:  # e.g. out of memory half-way: put back what was merged, then fail
            self.__exit__()
            raise
        return self

    def _merge(self, modules: list) -> None:
        for first in range(0, len(modules), _GROUP):
            group = modules[first : first + _GROUP]
            folds = [_run("fold", m.base_layer.weight, _delta(m, self.adapter)) for m in group]
            # one host sync per group (not per module): the fix-up counts, then fixed-size nonzero
            counts = torch.stack([wrong.sum() for _, wrong in folds]).tolist()
            for module, (merged, wrong), count in zip(group, folds, counts):
                weight = module.base_layer.weight
                index = torch.nonzero_static(wrong.view(-1), size=int(count)).view(-1)
                self._merged.append(_Merged(module, self.adapter, index, weight.view(-1)[index].clone()))
                weight.copy_(merged)
                module.merged_adapters.append(self.adapter)
                self.fixups += int(count)
            del folds

    @torch.no_grad()
    def __exit__(self, *exc) -> None:
        while self._merged:
            entry = self._merged.pop()
            weight = entry.module.base_layer.weight
            weight.copy_(_run("unfold", weight, _delta(entry.module, entry.adapter)))
            weight.view(-1).index_copy_(0, entry.fix_index, entry.fix_values)
            entry.module.merged_adapters.remove(entry.adapter)
