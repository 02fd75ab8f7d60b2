"""Shared-prompt forward for the learner: a GRPO group's completions share one prompt, so run it once.

A row-per-completion batch repeats each prompt (at 1024 px about 1,000 image tokens) once per completion.
Here the rows of one group become one packed row: the prompt, then every completion in its own block. A
block mask lets each completion attend to the prompt and to its own earlier tokens only, and each block's
rotary positions continue from the prompt as in its own row, so the log-probs and their gradients equal
the row-per-completion forward's (tests/learner/test_shared_prompt.py). The decoder then sees P + G·C tokens
per group instead of G·(P + C). It works on the stock Hugging Face model through a custom 4-D attention
mask (SDPA or eager attention) or a FlexAttention block mask (learner/packed_attention.py); verl's PrefixGrouper instead splits attention into two calls inside a
modified model file.
"""

from __future__ import annotations

import torch

from vlm_rl.learner import packed_attention


def prompt_groups(image_rows: list[int]) -> list[tuple[int, int]]:
    """(first row, row count) of each run of consecutive rows that show the same prompt."""
    runs: list[tuple[int, int]] = []
    for r, image in enumerate(image_rows):
        if runs and image_rows[runs[-1][0]] == image:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((r, 1))
    return runs


#: With the dense [L, L] mask SDPA runs its memory-efficient kernel over every tile (no causal skipping), each
#: dearer than the causal flash kernel's: per attention FLOP it is taken as this much dearer than the
#: row-per-completion forward's causal attention (which does half the pairs). Uncalibrated (no GPU A/B yet).
MASKED_ATTENTION_COST = 1.5
#: FlexAttention's block mask skips empty tiles: the packed row computes about its allowed pairs, at the causal
#: kernel's cost per pair, plus the partial tiles on the block edges (taken as one block-wide tile per row).
FLEX_TILE = packed_attention.FLEX_BLOCK


def decoder_cost(tokens: int, attention_pairs: float, text_config) -> float:
    """FLOPs of one decoder pass: projections (2 x a layer's weights per token) + attention (4 x width per
    query-key pair), per layer. Enough to compare two layouts of the same work."""
    h = text_config.hidden_size
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or h // heads
    kv = text_config.num_key_value_heads * head_dim
    weights = h * heads * head_dim * 2 + 2 * h * kv + 3 * h * text_config.intermediate_size
    return text_config.num_hidden_layers * (2 * weights * tokens + 4 * heads * head_dim * attention_pairs)


def packed_attention_pairs(prompt_len: int, completion_len: int, k: int, kernel: str) -> float:
    """Query-key pairs the packed row's attention computes: all L² under the dense mask (weighted by
    ``MASKED_ATTENTION_COST``), the allowed ones plus edge tiles under FlexAttention."""
    length = prompt_len + k * completion_len
    if kernel == "flex":
        allowed = prompt_len * prompt_len / 2 + k * (prompt_len * completion_len + completion_len * completion_len / 2)
        return allowed + length * FLEX_TILE
    return MASKED_ATTENTION_COST * length * length


def packing_pays(prompt_len: int, completion_len: int, group_sizes: list[int], text_config,
                 kernel: str = "dense") -> bool:
    """Does one packed row per group (P + k·C tokens) cost less than k rows of P + C (causal)?

    Usually yes: the prompt's projections are done once. Under the dense mask, with long completions, large
    groups and short prompts, the packed row's attention, growing with (P + k·C)², outgrows what the prompt
    saves (k·(P + C)² / 2); FlexAttention computes only the allowed pairs, so it nearly always pays."""
    row = prompt_len + completion_len
    packed = unpacked = 0.0
    for k in group_sizes:
        length = prompt_len + k * completion_len
        packed += decoder_cost(length, packed_attention_pairs(prompt_len, completion_len, k, kernel), text_config)
        unpacked += decoder_cost(k * row, k * row * row / 2, text_config)
    return packed < unpacked


def can_pack(batch: dict, attn_implementation: str | None, text_config=None, kernel: str = "dense") -> bool:
    """Packing needs some prompt serving two or more rows and an attention that takes a 4-D mask, and (given
    the model's ``text_config``) must cost less than the row-per-completion forward (``packing_pays``)."""
    if attn_implementation not in (None, "sdpa", "eager", packed_attention.ATTENTION_NAME) or "image_rows" not in batch:
        return False
    prompt_len = int(batch["prompt_length"])
    if batch["input_ids"].shape[1] <= prompt_len:
        return False
    groups = prompt_groups(list(batch["image_rows"]))
    if len(groups) == len(batch["image_rows"]):
        return False
    if text_config is None:
        return True
    return packing_pays(prompt_len, batch["input_ids"].shape[1] - prompt_len, [k for _, k in groups], text_config,
                        kernel)


def pack_prompt_groups(batch: dict, pad_id: int, float_mask_dtype: torch.dtype | None = None,
                       kernel: str = "dense") -> dict:
    """The packed batch of a ``share_images`` policy batch (``policy_inputs_from_encoding``).

    Returns the model's inputs for one row per group (``input_ids``, a 4-D ``attention_mask``,
    ``mm_token_type_ids``, ``image_grid_thw``, ``image_rows``, ``pixel_values``, ``unique_image_grid_thw``),
    plus ``prompt_mask`` (the prompts' own 2-D mask, for rotary positions), ``completion_offset`` [B, L] (a
    completion column's place in its block, 0 elsewhere), ``hidden_index`` [N, C] (where in the flattened [B·L] hidden states each
    completion token's prediction is read) and ``completion_ids`` [N, C].
    ``float_mask_dtype``: an additive mask of that dtype (eager attention) instead of a boolean one (SDPA).
    ``kernel="flex"``: the mask is a FlexAttention ``BlockMask`` (learner/packed_attention.py), no [L, L] tensor.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    prompt_len = int(batch["prompt_length"])
    n, width = ids.shape
    c = width - prompt_len
    groups = prompt_groups(list(batch["image_rows"]))
    k = max(count for _, count in groups)
    # whole tiles: 16 columns for the masked SDPA kernels; FlexAttention's 128-wide blocks, so that its compiled
    # kernel sees few distinct lengths as completion lengths vary from step to step
    tile = packed_attention.FLEX_BLOCK if kernel == "flex" else 16
    length = -(-(prompt_len + k * c) // tile) * tile
    device = ids.device
    starts = torch.tensor([s for s, _ in groups], dtype=torch.long, device=device)
    # Row r of the batch is completion j = r - start of group g: its block is j + 1.
    group_of = torch.tensor([g for g, (_, count) in enumerate(groups) for _ in range(count)], device=device)
    slot_of = torch.arange(n, device=device) - starts[group_of]

    packed_ids = torch.full((len(groups), length), pad_id, dtype=ids.dtype, device=device)
    packed_ids[:, :prompt_len] = ids[starts, :prompt_len]
    valid = torch.zeros((len(groups), length), dtype=torch.bool, device=device)
    valid[:, :prompt_len] = mask[starts, :prompt_len].bool()
    block_of = torch.full((len(groups), length), -1, dtype=torch.long, device=device)
    block_of[:, :prompt_len] = 0
    cols = prompt_len + slot_of[:, None] * c + torch.arange(c, device=device)[None, :]  # [N, C] packed columns
    rows = group_of[:, None].expand(-1, c)
    packed_ids[rows, cols] = ids[:, prompt_len:]
    valid[rows, cols] = batch["completion_mask"].bool()
    block_of[rows, cols] = (slot_of + 1)[:, None].expand(-1, c)
    offset = torch.zeros((len(groups), length), dtype=torch.long, device=device)  # column's place in its block
    offset[rows, cols] = torch.arange(c, device=device)[None, :].expand(n, -1)

    if kernel == "flex":
        attention = packed_attention.block_mask(valid, block_of)
    else:
        attention = packed_attention.dense_mask(valid, block_of, float_mask_dtype)

    # Token t of a completion is predicted at the position before it: the prompt's last for t = 0.
    before = cols - 1
    before[:, 0] = prompt_len - 1
    out = {
        "input_ids": packed_ids,
        "attention_mask": attention,
        "prompt_mask": mask[starts, :prompt_len],
        "completion_offset": offset,
        "image_grid_thw": batch["image_grid_thw"][starts],
        "image_rows": [batch["image_rows"][s] for s, _ in groups],
        "hidden_index": group_of[:, None] * length + before,
        "completion_ids": ids[:, prompt_len:],
        "prompt_length": prompt_len,
        "key_valid": valid,  # [B, L]: the mask's two inputs (packed_attention.dense_mask / block_mask)
        "block_of": block_of,
    }
    for key in ("pixel_values", "unique_image_grid_thw"):
        if key in batch:
            out[key] = batch[key]
    if "mm_token_type_ids" in batch:
        mm = torch.zeros_like(packed_ids, dtype=batch["mm_token_type_ids"].dtype)
        mm[:, :prompt_len] = batch["mm_token_type_ids"][starts, :prompt_len]
        out["mm_token_type_ids"] = mm
    return out


def packed_position_ids(core, packed: dict) -> torch.Tensor:
    """Multimodal rotary positions [3, B, L]: the prompt's from the model's own ``get_rope_index``; each
    completion block continues from the prompt's largest position, as that completion's own row would."""
    prompt_len = int(packed["prompt_length"])
    ids = packed["input_ids"]
    kwargs = {"image_grid_thw": packed["image_grid_thw"], "attention_mask": packed["prompt_mask"]}
    if "mm_token_type_ids" in packed:
        kwargs["mm_token_type_ids"] = packed["mm_token_type_ids"][:, :prompt_len]
    prompt_pos, _ = core.get_rope_index(ids[:, :prompt_len], **kwargs)
    prompt_pos = prompt_pos.to(ids.device)
    real = packed["prompt_mask"].bool()[None].expand_as(prompt_pos)
    first = prompt_pos.masked_fill(~real, -1).amax(dim=(0, 2)) + 1  # [B]: first completion token's position
    completion_pos = (first[:, None] + packed["completion_offset"])[None].expand(prompt_pos.shape[0], -1, -1)
    positions = completion_pos.clone()
    positions[:, :, :prompt_len] = prompt_pos
    return positions
