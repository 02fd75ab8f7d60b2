"""Attention masks for the shared-prompt packed row: a dense [L, L] mask (SDPA, eager) or a FlexAttention
block mask that skips what no query may see.

The packed row (learner/shared_prompt.py) is the prompt, then k completion blocks; a completion attends to
the prompt and to its own earlier tokens. With a dense boolean mask SDPA runs its memory-efficient kernel
over every tile of the [L, L] score matrix, L = P + k·C, allowed or not. A FlexAttention ``BlockMask``
records per 128 x 128 tile whether it is empty, full or partial: empty tiles (a key after the query, a key
in another completion's block) are skipped and full ones read no mask, so the row costs about its allowed
pairs, P²/2 + k·(P·C + C²/2), as a causal flash kernel on unpacked rows does.

FlexAttention has no backward on CPU (torch 2.13), so ``auto`` picks it on CUDA only; on CPU it serves
no-grad passes (and the tests that compare it with the dense mask). The text layers reach it through one
attention function registered with transformers (``ATTENTION_NAME``) that sends a ``BlockMask`` to
FlexAttention and anything else to SDPA, so the unpacked forward, generation and gradient-checkpoint
recomputes behave as under ``sdpa``.
"""

from __future__ import annotations

import torch

ATTENTION_NAME = "vlm_rl_packed"
#: Kernels a ``packed_attention`` setting may name.
KERNELS = ("auto", "flex", "dense")
#: FlexAttention's tile (its default sparse block size): the packed row is padded to whole tiles.
FLEX_BLOCK = 128


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import BlockMask  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(setting: str, device: torch.device | str) -> str:
    """"flex" or "dense" for a ``packed_attention`` setting on this device."""
    if setting not in KERNELS:
        raise ValueError(f"packed_attention: {setting!r} is not one of {', '.join(KERNELS)}")
    if setting == "auto":
        return "flex" if torch.device(device).type == "cuda" and flex_available() else "dense"
    if setting == "flex" and not flex_available():
        raise ValueError("packed_attention: flex needs torch.nn.attention.flex_attention (torch >= 2.5)")
    return setting


def check_trainable(setting: str, device: torch.device | str) -> None:
    """Refuse ``flex`` for a learner on CPU before its first step (FlexAttention has no backward there)."""
    if resolve(setting, device) == "flex" and torch.device(device).type != "cuda":
        raise ValueError("packed_attention: flex trains on a CUDA GPU only (FlexAttention has no backward on CPU "
                         "in this torch); use auto or dense")


def dense_mask(key_valid: torch.Tensor, block_of: torch.Tensor, float_dtype: torch.dtype | None = None
               ) -> torch.Tensor:
    """[B, 1, L, L] boolean mask (SDPA), or additive in ``float_dtype`` (eager attention). A query may see a
    key that is real, not after it, and in the prompt (block 0) or the query's own block."""
    length = key_valid.shape[1]
    pos = torch.arange(length, device=key_valid.device)
    causal = pos[None, :] <= pos[:, None]
    same_block = (block_of[:, None, :] == 0) | (block_of[:, None, :] == block_of[:, :, None])
    allowed = key_valid[:, None, :] & causal[None] & same_block
    allowed |= torch.eye(length, dtype=torch.bool, device=key_valid.device)[None]  # no query with an empty row
    attention = allowed[:, None]
    if float_dtype is not None:
        attention = torch.zeros(attention.shape, dtype=float_dtype, device=key_valid.device).masked_fill(
            ~attention, torch.finfo(float_dtype).min)
    return attention


def block_mask(key_valid: torch.Tensor, block_of: torch.Tensor):
    """The same mask as a FlexAttention ``BlockMask`` (the tile map is built once per packing and reused by
    every layer and by the reference pass)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        key_block = block_of[b, kv_idx]
        return ((kv_idx <= q_idx) & key_valid[b, kv_idx] & ((key_block == 0) | (key_block == block_of[b, q_idx]))
                ) | (q_idx == kv_idx)

    batch, length = key_valid.shape
    return create_block_mask(mask_mod, batch, None, length, length, device=key_valid.device)


_compiled_flex = None


def _flex(device_type: str):
    """FlexAttention compiled once per process on CUDA (uncompiled it materialises every score); inside a
    compiled region (``compile_layers``) the plain op, which that compilation fuses; on CPU the eager form,
    which is exact and serves no-grad passes."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if device_type != "cuda" or torch.compiler.is_dynamo_compiling():
        return flex_attention
    if _compiled_flex is None:  # dynamic after the first new length: one more compile, not one per length
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not isinstance(attention_mask, BlockMask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if dropout:
        raise ValueError("packed_attention: flex takes no attention dropout")
    kernel = _flex(query.device.type)
    kwargs = dict(block_mask=attention_mask, scale=scaling, enable_gqa=key.shape[1] != query.shape[1])
    if query.device.type == "cuda":  # (no context manager here: it would break a compiled layer's graph)
        out = kernel(query, key, value, **kwargs)
    else:
        import warnings

        with warnings.catch_warnings():  # the eager (CPU) form warns that it is unfused, which is what it is for
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out = kernel(query, key, value, **kwargs)
    return out.transpose(1, 2).contiguous(), None


def install(text_config) -> bool:
    """Route the text layers' attention through ``_attention`` (SDPA unless handed a ``BlockMask``). Only an
    ``sdpa`` model is switched; returns whether the layers now take a block mask."""
    if text_config._attn_implementation == ATTENTION_NAME:
        return True
    if text_config._attn_implementation != "sdpa" or not flex_available():
        return False
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, _attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)  # unpacked rows and generation: SDPA's masks
    text_config._attn_implementation_internal = ATTENTION_NAME
    return True
