"""The evaluation runner on the tiny model: ground truth in model coordinates, end-to-end metrics, LoRA dirs."""

from __future__ import annotations

import pytest
import torch

from vlm_rl.data.schema import DetObject, Sample, load_jsonl
from vlm_rl.eval.runner import generate_answers, ground_truth_in_model_coords, load_for_eval, run_evaluation

RATE_KEYS = ("mAP@0.5", "mAP@[.5:.95]", "precision", "recall", "f1", "format_valid_rate")


def test_ground_truth_follows_resize_then_model_coordinates():
    # 640x480 -> 448x352 for Qwen3-VL (factor 32); the box is 10%..50% of each side -> 100..500 of 1000
    sample = Sample("s", "/unused.png", 640, 480, (DetObject("stop_sign", (64.0, 48.0, 320.0, 240.0)),))
    assert ground_truth_in_model_coords(sample, 448, "qwen3_vl") == [
        {"label": "stop_sign", "bbox_2d": [100, 100, 500, 500]}
    ]
    # Qwen2.5-VL answers in pixels of the resized input: 640x480 -> 448x336 (factor 28), scale 0.7
    (gt,) = ground_truth_in_model_coords(sample, 448, "qwen2_5_vl")
    assert gt["bbox_2d"] == pytest.approx([44.8, 33.6, 224.0, 168.0], abs=0.5)


def test_run_evaluation_end_to_end(tiny_model_dir, synthetic_dataset):
    _, val = synthetic_dataset
    result = run_evaluation(tiny_model_dir, val, max_image_size=128, max_new_tokens=16, batch_size=2, limit=4,
                            progress=False)
    m = result.metrics
    assert m["n_images"] == 4 and m["model_family"] == "qwen3_vl"
    for key in RATE_KEYS:
        assert 0.0 <= m[key] <= 1.0, key
    samples = load_jsonl(val).samples[:4]
    assert m["n_gt"] == sum(len(s.objects) for s in samples)
    assert [r["id"] for r in result.records] == [s.id for s in samples]
    assert all(isinstance(r["answer"], str) for r in result.records)
    assert m["format_valid_rate"] == sum(r["parsed"] is not None for r in result.records) / 4
    # gt in Qwen3-VL's 0..1000 space
    assert all(0 <= v <= 1000 for r in result.records for o in r["gt"] for v in o["bbox_2d"])


def test_lora_adapter_dir_is_loaded_and_merged(tiny_model_dir, synthetic_dataset, tmp_path):
    from peft import get_peft_model

    from vlm_rl.models.loading import load_model
    from vlm_rl.models.lora import lora_config

    torch.manual_seed(0)
    peft_model = get_peft_model(load_model(tiny_model_dir), lora_config(4, 8))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained-looking adapter, so it changes the outputs
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    assert (adapter_dir / "adapter_config.json").is_file()

    merged, processor, family = load_for_eval(adapter_dir)
    ids = torch.tensor([[151644, 872, 198, 9707, 151645]])
    with torch.no_grad():
        expected = peft_model.eval()(input_ids=ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert family == "qwen3_vl" and not hasattr(merged, "peft_config")  # merged into a plain model
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)

    samples = load_jsonl(synthetic_dataset[1]).samples[:2]
    answers = generate_answers(merged, processor, samples, max_image_size=64, family=family, max_new_tokens=2,
                               batch_size=2, progress=False)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
