"""Log-probabilities of chosen tokens without materialising full-vocabulary float32 tensors.

With Qwen's ~152k vocabulary, ``logits.float().log_softmax(-1)`` for 8 x 1024 completion tokens is
5 GB, more than the model's activations. Both functions here work on ``chunk_size`` rows at a time.
"""

from __future__ import annotations

import torch

#: Rows (tokens) per chunk: chunk_size * vocab * 4 bytes is the peak extra memory (~620 MB for 1024 x 152k).
DEFAULT_CHUNK_SIZE = 1024


def selective_log_softmax(
    logits: torch.Tensor, index: torch.Tensor, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """``log_softmax(logits / temperature).gather(-1, index)`` for ``logits [..., V]`` and ``index [...]``.

    Computed in float32 (float64 stays float64) chunk by chunk, so low-precision logits lose nothing and
    no full-size float32 copy exists at once. Differentiable.

    >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    >>> selective_log_softmax(logits, torch.tensor([[0, 1]]))
    tensor([[-0.6931, -2.1269]])
    """
    if temperature <= 0:
        raise ValueError(f"temperature: must be positive, got {temperature}")
    if logits.shape[:-1] != index.shape:
        raise ValueError(f"index: shape {tuple(index.shape)} does not match logits {tuple(logits.shape)} minus vocab")
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_index = index.reshape(-1, 1)
    out = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        chunk = flat_logits[start:start + chunk_size].to(compute_dtype)
        if temperature != 1.0:
            chunk = chunk / temperature
        picked = chunk.gather(-1, flat_index[start:start + chunk_size]).squeeze(-1)
        out.append(picked - torch.logsumexp(chunk, dim=-1))
    if not out:
        return logits.new_zeros(index.shape, dtype=compute_dtype)
    return torch.cat(out).view(index.shape)


def chunked_token_logprobs(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    index: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Log-probs ``[N, T]`` of ``index`` under ``softmax(hidden @ W.T / temperature)``, never holding all logits.

    ``hidden [N, T, H]`` are the final (normed) hidden states, ``lm_head_weight [V, H]``. The backward pass
    recomputes each chunk's logits, so memory is O(chunk_size * V) in both directions; gradients flow
    to ``hidden`` and to ``lm_head_weight`` (when it requires grad, e.g. full fine-tuning). Under ZeRO-3
    the caller gathers ``lm_head_weight`` first.
    """
    if temperature <= 0:
        raise ValueError(f"temperature: must be positive, got {temperature}")
    if hidden.shape[:-1] != index.shape:
        raise ValueError(f"index: shape {tuple(index.shape)} does not match hidden {tuple(hidden.shape)} minus H")
    if lm_head_weight.ndim != 2 or lm_head_weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"lm_head_weight: expected [V, {hidden.shape[-1]}], got {tuple(lm_head_weight.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
    flat = _ChunkedTokenLogprobs.apply(
        hidden.reshape(-1, hidden.shape[-1]), lm_head_weight, index.reshape(-1), chunk_size, temperature
    )
    return flat.view(index.shape)


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """Forward keeps only the per-row logsumexp; backward recomputes logits per chunk.

    d logp_i / d logits = onehot(index_i) - softmax_i, scaled by 1/temperature.
    """

    @staticmethod
    def forward(ctx, hidden, weight, index, chunk_size, temperature):  # type: ignore[override]
        compute_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        logps, lses = [], []
        for start in range(0, hidden.shape[0], chunk_size):
            logits = _chunk_logits(hidden[start:start + chunk_size], weight, temperature, compute_dtype)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(-1, index[start:start + chunk_size, None]).squeeze(-1)
            logps.append(picked - lse)
            lses.append(lse)
        empty = hidden.new_zeros(0, dtype=compute_dtype)
        lse_all = torch.cat(lses) if lses else empty
        ctx.save_for_backward(hidden, weight, index, lse_all)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        return torch.cat(logps) if logps else empty

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        hidden, weight, index, lse_all = ctx.saved_tensors
        chunk_size, temperature = ctx.chunk_size, ctx.temperature
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        compute_dtype = lse_all.dtype
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=compute_dtype, device=weight.device) if need_w else None
        for start in range(0, hidden.shape[0], chunk_size):
            stop = start + chunk_size
            h = hidden[start:stop]
            logits = _chunk_logits(h, weight, temperature, compute_dtype)
            # grad wrt logits: g * (onehot - softmax) / T, built in place to keep one [chunk, V] buffer
            grad_logits = torch.exp(logits.sub_(lse_all[start:stop, None])).neg_()
            grad_logits.scatter_add_(-1, index[start:stop, None], torch.ones_like(grad_logits[:, :1]))
            grad_logits.mul_((grad_out[start:stop].to(compute_dtype) / temperature)[:, None])
            if need_h:
                grad_h[start:stop] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(grad_logits.T, h.to(compute_dtype))
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """Logits of a chunk: matmul in the model's dtype (as its lm_head would), then upcast and scale."""
    logits = (h @ weight.T).to(dtype)
    return logits / temperature if temperature != 1.0 else logits
