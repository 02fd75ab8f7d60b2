"""Detection prompts and answers: what the model is asked, the exact text it should answer, and batches.

Rollout and learner must build token-for-token identical prompts, otherwise the learner scores
completions under a different context than the one they were sampled from; both therefore go through
:func:`encode_prompts` (rollout) and :func:`build_policy_inputs` (learner, which calls it).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence

import torch
from PIL import Image
from transformers import BatchFeature

from vlm_rl.models.tokenizer import SPECIAL_IDS

ANSWER_FORMAT = '[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]'


def detection_instruction(labels: Sequence[str] | None) -> str:
    """The user instruction asking for every object as a JSON list of boxes.

    >>> print(detection_instruction(["stop_sign", "traffic_light"]))
    Detect every object in the image that belongs to one of these labels: stop_sign, traffic_light. \
Answer with a JSON list, one entry per object: [{"bbox_2d": [x1, y1, x2, y2], "label": "..."}], \
using only those labels. If there is no such object, answer [].
    """
    if labels:
        what = f"Detect every object in the image that belongs to one of these labels: {', '.join(labels)}."
        only = ", using only those labels"
    else:
        what, only = "Detect every object in the image.", ""
    return (
        f"{what} Answer with a JSON list, one entry per object: {ANSWER_FORMAT}{only}. "
        "If there is no such object, answer []."
    )


def build_messages(instruction: str) -> list[dict]:
    """One user turn: the image, then the instruction (the order Qwen's own examples use)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]


def _instructions(instruction: str | Sequence[str], n: int) -> list[str]:
    if isinstance(instruction, str):
        return [instruction] * n
    if len(instruction) != n:
        raise ValueError(f"instruction: got {len(instruction)} instructions for {n} images")
    return list(instruction)


def encode_prompts(processor, images: Sequence[Image.Image], instruction: str | Sequence[str]) -> BatchFeature:
    """Chat-formatted prompts with generation prompt, one per image, LEFT-padded for generation.

    Returns input_ids, attention_mask, mm_token_type_ids (transformers 5 needs it for multimodal RoPE:
    pass it to the model too), pixel_values (all images' patches, in image order) and image_grid_thw.
    """
    if not images:
        raise ValueError("images: need at least one image")
    texts = [
        processor.apply_chat_template(build_messages(text), tokenize=False, add_generation_prompt=True)
        for text in _instructions(instruction, len(images))
    ]
    with _PROCESSOR_LOCK:  # prompts are encoded on prefetch threads too; HF tokenizers keep per-call padding state
        return processor(images=list(images), text=texts, padding=True, padding_side="left", return_tensors="pt")


_PROCESSOR_LOCK = threading.Lock()


def _box_value(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


def answer_text(objects: Sequence[Mapping]) -> str:
    """The answer the model should give for ``objects`` ({"label", "bbox_2d"} in model coordinates).

    >>> answer_text([{"label": "stop_sign", "bbox_2d": [10, 20, 110, 220]}])
    '[{"bbox_2d": [10, 20, 110, 220], "label": "stop_sign"}]'
    >>> answer_text([])
    '[]'
    """
    items = [{"bbox_2d": [_box_value(v) for v in o["bbox_2d"]], "label": str(o["label"])} for o in objects]
    return json.dumps(items, separators=(", ", ": "), ensure_ascii=False)


def build_policy_inputs(
    processor,
    images: Sequence[Image.Image],
    instruction: str | Sequence[str],
    completion_ids: Sequence[Sequence[int]],
    repeats: int | Sequence[int],
    share_images: bool = False,
) -> dict:
    """One row per completion: its prompt (left-padded) then the completion (right-padded).

    Image ``i`` serves ``repeats[i]`` consecutive completions (an int repeats every image that often).
    Returns input_ids, attention_mask, mm_token_type_ids, pixel_values and image_grid_thw (repeated in row
    order, as Qwen VL models expect flattened patches of every row's image), ``completion_mask`` [N, C]
    (1 on real completion tokens) and ``prompt_length`` (int): completion logits are
    ``logits[:, prompt_length - 1 : -1]``.

    ``share_images``: pixel_values hold each image once; ``image_rows`` [N] says which image each row shows
    and ``unique_image_grid_thw`` their grids, so the vision tower runs once per image (``image_features``).
    """
    counts = [repeats] * len(images) if isinstance(repeats, int) else list(repeats)
    if len(counts) != len(images):
        raise ValueError(f"repeats: got {len(counts)} counts for {len(images)} images")
    if any(c < 0 for c in counts) or sum(counts) != len(completion_ids):
        raise ValueError(f"repeats: counts {counts} must be >= 0 and sum to the {len(completion_ids)} completions")
    enc = encode_prompts(processor, images, instruction)
    rows = [i for i, c in enumerate(counts) for _ in range(c)]
    return policy_inputs_from_encoding(enc, rows, completion_ids, processor.tokenizer.pad_token_id, share_images)


def policy_inputs_from_encoding(enc, rows: Sequence[int], completion_ids: Sequence[Sequence[int]], pad_id: int,
                                share_images: bool = False) -> dict:
    """``build_policy_inputs`` from an existing ``encode_prompts`` output: completion ``r`` follows prompt
    ``rows[r]`` of ``enc``. Lets a caller encode a step's prompts once (e.g. ahead of time, on a thread)
    and build each micro-batch from them without the processor."""
    if len(rows) != len(completion_ids):
        raise ValueError(f"rows: got {len(rows)} prompt indices for {len(completion_ids)} completions")
    grid = enc["image_grid_thw"]
    patches_per_image = grid.prod(dim=-1)
    starts = (torch.cumsum(patches_per_image, 0) - patches_per_image).tolist()
    sizes = patches_per_image.tolist()
    used = list(dict.fromkeys(rows))  # distinct prompts in first-use order
    blocks = used if share_images else list(rows)
    pixels = enc["pixel_values"]
    if blocks == list(range(len(sizes))):
        pixel_values = pixels
    else:
        pixel_values = torch.cat([pixels[starts[i] : starts[i] + sizes[i]] for i in blocks])

    index = torch.as_tensor(list(rows), dtype=torch.long)
    width = max((len(c) for c in completion_ids), default=0)
    completion = torch.full((len(completion_ids), width), pad_id, dtype=enc["input_ids"].dtype)
    completion_mask = torch.zeros((len(completion_ids), width), dtype=enc["attention_mask"].dtype)
    for r, ids in enumerate(completion_ids):
        completion[r, : len(ids)] = torch.as_tensor(list(ids), dtype=completion.dtype)
        completion_mask[r, : len(ids)] = 1

    out = {
        "input_ids": torch.cat([enc["input_ids"][index], completion], dim=1),
        "attention_mask": torch.cat([enc["attention_mask"][index], completion_mask], dim=1),
        "pixel_values": pixel_values,
        "image_grid_thw": grid[index],
        "completion_mask": completion_mask,
        "prompt_length": int(enc["input_ids"].shape[1]),
    }
    if share_images:
        local = {prompt: k for k, prompt in enumerate(used)}
        out["image_rows"] = [local[r] for r in rows]  # a list: reading it never waits for the GPU
        out["unique_image_grid_thw"] = grid[torch.as_tensor(used, dtype=torch.long)]
    if "mm_token_type_ids" in enc:
        mm = enc["mm_token_type_ids"][index]
        out["mm_token_type_ids"] = torch.cat([mm, torch.zeros_like(completion)], dim=1)
    return out


def end_token_ids(model, tokenizer) -> list[int]:
    """The model's end tokens plus Qwen's chat end tokens, so a chat answer stops at ``<|im_end|>``."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    for token in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid >= 0 and tid not in ids:
            ids.append(tid)
    return ids


#: Vision placeholders the policy must never sample: one in a completion breaks the image-token count
#: of the learner's forward pass (suppressed in every sampler).
NEVER_GENERATE = (SPECIAL_IDS["<|image_pad|>"], SPECIAL_IDS["<|video_pad|>"])
