"""Completion log-probs with each image encoded once (``share_images``) equal those of repeated pixels."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlm_rl.learner.policy import completion_logprobs
from vlm_rl.models.loading import load_model, load_processor
from vlm_rl.models.prompts import build_policy_inputs


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_shared_images_run_the_vision_tower_once_per_image(request, family):
    path = request.getfixturevalue("tiny_model_dir" if family == "qwen3_vl" else "tiny_qwen25_dir")
    model, processor = load_model(path).eval(), load_processor(path)
    side = 32 if family == "qwen3_vl" else 28
    images = [Image.new("RGB", (2 * side, 2 * side), (200, 30, 30)), Image.new("RGB", (side, 2 * side), (30, 30, 200))]
    completions = [[58, 4913, 17], [60, 61], [58, 60, 5, 6], [1, 2], [7]]
    repeated = build_policy_inputs(processor, images, "Find.", completions, repeats=[2, 3])
    shared = build_policy_inputs(processor, images, "Find.", completions, repeats=[2, 3], share_images=True)
    assert shared["image_rows"] == [0, 0, 1, 1, 1]
    per_image = shared["unique_image_grid_thw"].prod(-1).tolist()
    assert shared["pixel_values"].shape[0] == sum(per_image)  # each image once
    assert repeated["pixel_values"].shape[0] == 2 * per_image[0] + 3 * per_image[1]

    patches_seen: list[int] = []
    hook = model.model.visual.register_forward_pre_hook(lambda m, args: patches_seen.append(args[0].shape[0]))
    with torch.no_grad():
        want = completion_logprobs(model, repeated)
        got = completion_logprobs(model, shared)
    hook.remove()
    assert patches_seen == [repeated["pixel_values"].shape[0], shared["pixel_values"].shape[0]]
    mask = shared["completion_mask"].bool()
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-5)
