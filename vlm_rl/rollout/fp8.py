"""FP8 rollouts: the text decoder's projections sample with e4m3 weights, quantized per output channel.

Why: decode is bound by reading the weights once per token (16 GB at 8B in bf16). With FP8 weights it reads
half that, and prefill runs on the FP8 tensor cores. verl, NeMo-RL and slime sample this way and correct the
sampler/learner mismatch with importance sampling; here the learner stays in bf16 and the truncated IS weight
(``tis_cap``/``tis_mode``, vlm_rl/algos/importance.py) does the correcting, fed by the sampler's own log-probs.

What is quantized: every ``nn.Linear`` inside the text decoder layers (attention q/k/v/o and the MLP), after
LoRA has been folded in (vlm_rl/models/lora_merge.py), into persistent FP8 buffers refreshed in place at every
``generate`` (so a captured CUDA graph keeps reading the same addresses and always sees the newest weights).
Weights: one scale per output channel (amax / 448). Activations: one scale per token, computed on the fly.
The product is ``torch._scaled_mm`` (Hopper FP8 GEMM on CUDA; the same op on CPU, where tests and the CPU
quality study run). The vision tower, embeddings, norms and ``lm_head`` stay in the model's dtype, as in vLLM's
FP8 checkpoints. Projections whose shapes the FP8 GEMM cannot take (a dimension not a multiple of 16) stay too.

Memory: one byte per quantized parameter (~6.9 GB at 8B) for the FP8 copy, kept between rollouts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
_MIN_SCALE = 1e-12  # an all-zero row or token: any positive scale gives zeros back


def quantize_rows(x: torch.Tensor, out: torch.Tensor | None = None,
                  scale_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, s)`` with ``x ≈ q.float() * s``: e4m3 values and one float32 scale per row ([rows, 1]).

    ``out``/``scale_out`` (preallocated) are written in place, so a CUDA graph that reads them stays valid."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    scale = (amax / FP8_MAX).clamp_(min=_MIN_SCALE)
    q = (x.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    if out is None:
        return q, scale
    out.copy_(q)
    scale_out.copy_(scale)
    return out, scale_out


def fp8_linear(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + b`` with W in e4m3 ([out, in], scales [1, out]) and x quantized per token."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    xq, xs = quantize_rows(rows)
    # mat2 must be column-major: the transpose of the row-major [out, in] buffer is exactly that
    out = torch._scaled_mm(xq, weight_q.t(), scale_a=xs, scale_b=weight_scale, out_dtype=x.dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*shape[:-1], out.shape[-1])


def fake_fp8_linear(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """The same arithmetic dequantized to float32 (the reference the tests compare ``fp8_linear`` with)."""
    xq, xs = quantize_rows(x.reshape(-1, x.shape[-1]))
    w = weight_q.float() * weight_scale.view(-1, 1)
    out = F.linear(xq.float() * xs, w, None if bias is None else bias.float())
    return out.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])


def _quantizable(module: torch.nn.Module) -> bool:
    w = getattr(module, "weight", None)
    if not isinstance(module, torch.nn.Linear) or w is None or w.dim() != 2 or w.numel() == 0:
        return False  # (a ZeRO-3 partitioned weight is empty here)
    out_f, in_f = w.shape
    return out_f % 16 == 0 and in_f % 16 == 0 and w.dtype in (torch.bfloat16, torch.float16, torch.float32)


class Fp8Decoder:
    """FP8 copies of a text decoder's projections and the switch that makes them compute the forward.

    ``with fp8.active():`` refreshes the copies from the current (LoRA-folded) weights and routes every
    quantized ``nn.Linear`` through ``fp8_linear``; on exit the modules are plain again (training never sees
    FP8). ``count`` tells how many projections are quantized, ``nbytes`` what the copies hold."""

    def __init__(self, layers: list[torch.nn.Module]):
        # (PEFT's lora_A/lora_B are Linears too: they stay as they are; LoRA reaches FP8 folded into the base)
        self.modules: list[torch.nn.Linear] = [m for layer in layers for name, m in layer.named_modules()
                                               if _quantizable(m) and "lora_" not in name]
        self._q: list[torch.Tensor] = []
        self._s: list[torch.Tensor] = []
        self.refreshes = 0

    @property
    def count(self) -> int:
        return len(self.modules)

    @property
    def nbytes(self) -> int:
        return sum(q.numel() * q.element_size() + s.numel() * 4 for q, s in zip(self._q, self._s))

    @torch.no_grad()
    def refresh(self) -> None:
        """Quantize the current weights into the persistent buffers (allocated on first use)."""
        if not self._q:
            self._q = [torch.empty_like(m.weight, dtype=FP8) for m in self.modules]
            self._s = [torch.empty(m.weight.shape[0], 1, dtype=torch.float32, device=m.weight.device)
                       for m in self.modules]
        for module, q, s in zip(self.modules, self._q, self._s):
            quantize_rows(module.weight, q, s)
        self.refreshes += 1

    def active(self) -> _Fp8Active:
        return _Fp8Active(self)

    def release(self) -> None:
        """Free the copies (they are rebuilt at the next rollout)."""
        self._q, self._s = [], []


class _Fp8Active:
    def __init__(self, fp8: Fp8Decoder):
        self.fp8 = fp8

    def __enter__(self):
        self.fp8.refresh()
        for module, q, s in zip(self.fp8.modules, self.fp8._q, self.fp8._s):
            scale = s.view(1, -1)  # [1, out]: _scaled_mm's row-wise scale for mat2
            module.forward = _bound(q, scale, module.bias)
        return self.fp8

    def __exit__(self, *exc):
        for module in self.fp8.modules:
            module.__dict__.pop("forward", None)


def _bound(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, q, scale, bias)

    return forward
