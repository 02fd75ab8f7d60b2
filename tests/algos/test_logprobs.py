"""Chosen-token log-probs: values and gradients against naive full-logit versions."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_rl.algos.logprobs import chunked_token_logprobs, selective_log_softmax


def loop_reference(logits, index, temperature=1.0):
    """Plain Python log-softmax per token, float64."""
    n, t, _ = logits.shape
    out = torch.zeros(n, t, dtype=torch.float64)
    for i in range(n):
        for j in range(t):
            row = [x / temperature for x in logits[i, j].double().tolist()]
            m = max(row)
            lse = m + math.log(sum(math.exp(x - m) for x in row))
            out[i, j] = row[int(index[i, j])] - lse
    return out


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_selective_log_softmax_matches_loop(temperature, chunk_size):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64) * 4
    index = torch.randint(0, 11, (3, 5))
    got = selective_log_softmax(logits, index, temperature=temperature, chunk_size=chunk_size)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, loop_reference(logits, index, temperature), rtol=0, atol=1e-12)


def test_selective_log_softmax_bf16_computes_in_float32():
    torch.manual_seed(0)
    logits = (torch.randn(2, 4, 50) * 8).bfloat16()
    index = torch.randint(0, 50, (2, 4))
    got = selective_log_softmax(logits, index, chunk_size=3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), loop_reference(logits.double(), index), rtol=0, atol=1e-5)


def test_selective_log_softmax_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 7, (2, 3))
    torch.autograd.gradcheck(lambda x: selective_log_softmax(x, index, chunk_size=2), (logits,))


def naive(hidden, weight, index, temperature):
    logits = hidden @ weight.T / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, index[..., None]).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000])
def test_chunked_values_and_gradients_match_naive(temperature, chunk_size):
    torch.manual_seed(chunk_size)
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 37, (3, 7))
    upstream = torch.randn(3, 7, dtype=torch.float64)

    got = chunked_token_logprobs(hidden, weight, index, chunk_size=chunk_size, temperature=temperature)
    gh, gw = torch.autograd.grad((got * upstream).sum(), (hidden, weight))
    want = naive(hidden, weight, index, temperature)
    wh, ww = torch.autograd.grad((want * upstream).sum(), (hidden, weight))

    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    torch.testing.assert_close(got, loop_reference((hidden @ weight.T).detach(), index, temperature), rtol=0, atol=1e-10)
    torch.testing.assert_close(gh, wh, rtol=0, atol=1e-8)
    torch.testing.assert_close(gw, ww, rtol=0, atol=1e-8)


def test_chunked_gradcheck_and_frozen_head():
    torch.manual_seed(1)
    hidden = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 9, (2, 3))
    torch.autograd.gradcheck(lambda h, w: chunked_token_logprobs(h, w, index, chunk_size=4, temperature=0.8),
                             (hidden, weight))
    frozen = weight.detach()  # LoRA: the head is frozen, only hidden needs a gradient
    out = chunked_token_logprobs(hidden, frozen, index, chunk_size=2)
    (g,) = torch.autograd.grad(out.sum(), (hidden,))
    torch.testing.assert_close(g, torch.autograd.grad(naive(hidden, frozen, index, 1.0).sum(), (hidden,))[0])


def test_chunked_bf16_is_float32_and_close():
    torch.manual_seed(2)
    hidden = torch.randn(2, 5, 32).bfloat16().requires_grad_()
    weight = (torch.randn(64, 32) * 0.2).bfloat16().requires_grad_()
    index = torch.randint(0, 64, (2, 5))
    out = chunked_token_logprobs(hidden, weight, index, chunk_size=3)
    assert out.dtype == torch.float32
    ref = naive(hidden.double(), weight.double(), index, 1.0)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=0.1)
    out.sum().backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    assert torch.isfinite(hidden.grad.float()).all() and torch.isfinite(weight.grad.float()).all()


def test_chunked_keeps_peak_memory_to_one_chunk():
    """Autograd saves no [tokens, V] tensor: only inputs and the per-token logsumexp."""
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    hidden = torch.randn(4, 64, 8, requires_grad=True)
    weight = torch.randn(500, 8, requires_grad=True)
    index = torch.randint(0, 500, (4, 64))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = chunked_token_logprobs(hidden, weight, index, chunk_size=16)
    out.sum().backward()
    assert max(saved) <= weight.numel()  # a full-logits save would be 4 * 64 * 500 = 128,000


def test_shape_errors():
    with pytest.raises(ValueError, match="index"):
        chunked_token_logprobs(torch.zeros(2, 3, 4), torch.zeros(5, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="lm_head_weight"):
        chunked_token_logprobs(torch.zeros(2, 3, 4), torch.zeros(5, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        selective_log_softmax(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), temperature=0)
