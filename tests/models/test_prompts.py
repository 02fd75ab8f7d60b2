"""Prompts, answers and the learner's batches (left-padded prompts + right-padded completions)."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from PIL import Image

from vlm_rl.models.loading import load_model, load_processor
from vlm_rl.models.prompts import (
    answer_text,
    build_messages,
    build_policy_inputs,
    detection_instruction,
    encode_prompts,
)
from vlm_rl.rewards.parse import parse_detections

MODEL_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")


def test_instruction_names_labels_format_and_empty_answer():
    text = detection_instruction(["stop_sign", "traffic_light"])
    assert "stop_sign, traffic_light" in text
    assert '[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]' in text
    assert "answer []" in text
    assert "labels" not in detection_instruction(None)


def test_messages_have_image_then_text():
    assert build_messages("go") == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "go"}]}
    ]


def test_answer_text_is_compact_deterministic_and_parses():
    objects = [{"label": "stop_sign", "bbox_2d": [10, 20.0, 110, 220]}, {"bbox_2d": [1, 2, 3, 4], "label": "yield"}]
    text = answer_text(objects)
    assert text == '[{"bbox_2d": [10, 20, 110, 220], "label": "stop_sign"}, {"bbox_2d": [1, 2, 3, 4], "label": "yield"}]'
    assert json.loads(text) == [{"bbox_2d": [10, 20, 110, 220], "label": "stop_sign"},
                                {"bbox_2d": [1, 2, 3, 4], "label": "yield"}]
    assert [d["label"] for d in parse_detections(text)] == ["stop_sign", "yield"]
    assert answer_text([]) == "[]"


@functools.lru_cache(maxsize=2)
def _loaded(path):
    return load_model(path), load_processor(path)


@pytest.fixture(scope="module")
def qwen3(tiny_model_dir):
    return _loaded(tiny_model_dir)


def _images():
    return [Image.new("RGB", (96, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))]


def test_encode_prompts_left_pads(qwen3):
    _, processor = qwen3
    instructions = ["Find.", "Find every traffic sign and traffic light in this picture, please."]
    enc = encode_prompts(processor, _images(), instructions)
    assert enc["image_grid_thw"].tolist() == [[1, 4, 6], [1, 4, 4]]
    mask = enc["attention_mask"]
    assert mask[:, -1].tolist() == [1, 1] and mask[0, 0] == 0 and mask[1].all()
    assert (enc["input_ids"][0][mask[0] == 0] == 151643).all()
    text = processor.tokenizer.decode(enc["input_ids"][1])
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|>")
    assert text.endswith("<|vision_end|>" + instructions[1] + "<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_policy_inputs_match_unpadded_single_rows(request, family):
    """Logits at completion positions of the padded batch equal those of each row alone, unpadded."""
    path = request.getfixturevalue("tiny_model_dir" if family == "qwen3_vl" else "tiny_qwen25_dir")
    model, processor = _loaded(path)
    side = 32 if family == "qwen3_vl" else 28
    images = [Image.new("RGB", (3 * side, 2 * side), (220, 20, 20)), Image.new("RGB", (side, side), (20, 20, 220))]
    instructions = ["Find.", "Find every traffic sign and traffic light in this picture, please."]
    completions = [[58, 4913, 17], [60], [58, 60, 151645, 5, 6], [1, 2]]
    batch = build_policy_inputs(processor, images, instructions, completions, repeats=[1, 3])

    n, width, p = 4, 5, batch["prompt_length"]
    assert batch["input_ids"].shape == (n, p + width) == batch["attention_mask"].shape
    assert batch["completion_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1] * 5, [1, 1, 0, 0, 0]]
    grids = batch["image_grid_thw"]
    assert grids.tolist() == [[1, 4, 6], [1, 2, 2], [1, 2, 2], [1, 2, 2]]  # row order, patch units
    assert batch["pixel_values"].shape[0] == int(grids.prod(-1).sum())
    assert batch["input_ids"][2, p:].tolist() == completions[2]
    assert batch["input_ids"][1, p + 1 :].eq(processor.tokenizer.pad_token_id).all()

    with torch.no_grad():
        logits = model(**{k: batch[k] for k in MODEL_KEYS}).logits
        for row, image_index in enumerate([0, 1, 1, 1]):
            single = build_policy_inputs(processor, [images[image_index]], instructions[image_index],
                                         [completions[row]], repeats=1)
            assert single["attention_mask"].all()  # nothing padded
            alone = model(**{k: single[k] for k in MODEL_KEYS}).logits
            k, ps = len(completions[row]), single["prompt_length"]
            torch.testing.assert_close(logits[row, p - 1 : p - 1 + k], alone[0, ps - 1 : ps - 1 + k],
                                       atol=1e-4, rtol=1e-4)


def test_policy_inputs_reject_bad_repeats(qwen3):
    _, processor = qwen3
    with pytest.raises(ValueError, match="repeats"):
        build_policy_inputs(processor, _images(), "x", [[1], [2], [3]], repeats=2)
