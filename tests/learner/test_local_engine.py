"""LocalEngine under bf16 accumulates micro-batch gradients in fp32 and takes one optimizer step per
``accumulation`` micro-batches (issue 15: it used to add bf16 gradients in bf16)."""

from __future__ import annotations

import torch

from vlm_rl.config import BaseConfig
from vlm_rl.learner.local_engine import LocalEngine

MICRO, ROWS, DIM = 16, 4, 48


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(DIM, DIM, bias=False), torch.nn.Tanh(),
                               torch.nn.Linear(DIM, 1, bias=False))


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(MICRO * ROWS, DIM, generator=gen), torch.randn(MICRO * ROWS, generator=gen)


def _loss(model, x, y):
    """This chunk's share of the whole batch's mean squared error, in fp32 from bf16 activations."""
    out = model(x.to(torch.bfloat16)).float().squeeze(-1)
    return ((out - y) ** 2).sum() / (MICRO * ROWS)


def _engine(accumulation: int) -> LocalEngine:
    config = BaseConfig(use_gpu=True, bf16=True, learning_rate=1e-2, max_grad_norm=1e9)
    return LocalEngine(_model(), config, "cpu", accumulation=accumulation)


def test_micro_batch_gradients_add_in_fp32():
    x, y = _data()
    engine = _engine(MICRO)
    for i in range(MICRO):  # as PolicyLearner hands them over: each loss times the accumulation steps
        engine.backward(_loss(engine.module, x[i * ROWS:(i + 1) * ROWS], y[i * ROWS:(i + 1) * ROWS]) * MICRO)
        assert all(p.grad is None for p in engine.params)  # folded into fp32 at once, no bf16 grad kept
    accumulated = [m.grad.clone() for m in engine.masters]
    assert all(g.dtype == torch.float32 for g in accumulated)

    # The same micro-batch gradients, each computed alone in bf16, summed in float64 and in bf16.
    wide = [torch.zeros_like(g, dtype=torch.float64) for g in accumulated]
    narrow = [torch.zeros_like(g, dtype=torch.bfloat16) for g in accumulated]
    model = _model().to(torch.bfloat16)  # the engine's bf16 weights, without its fp32-folding hooks
    for i in range(MICRO):
        model.zero_grad(set_to_none=True)
        _loss(model, x[i * ROWS:(i + 1) * ROWS], y[i * ROWS:(i + 1) * ROWS]).backward()
        for w, n, p in zip(wide, narrow, [p for p in model.parameters() if p.requires_grad]):
            w += p.grad.double()
            n += p.grad
    for got, w, n in zip(accumulated, wide, narrow):
        torch.testing.assert_close(got.double(), w, rtol=1e-6, atol=1e-9)
        assert not torch.allclose(n.double(), w, rtol=1e-6, atol=1e-9)  # bf16 sums would fail the check


def test_several_micro_batches_step_like_one():
    """One optimizer step either way, and the same update (Adam's first step reads the fp32 gradient)."""
    x, y = _data()
    one, several = _engine(1), _engine(MICRO)
    one.backward(_loss(one.module, x, y))
    one.step()
    for i in range(MICRO):
        several.backward(_loss(several.module, x[i * ROWS:(i + 1) * ROWS], y[i * ROWS:(i + 1) * ROWS]) * MICRO)
        several.step()
    assert one.global_steps == several.global_steps == 1
    assert abs(one.get_global_grad_norm() - several.get_global_grad_norm()) < 1e-2 * one.get_global_grad_norm()
    for a, b in zip(one.masters, several.masters):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-4)  # lr 1e-2 steps; bf16 grad rounding only
