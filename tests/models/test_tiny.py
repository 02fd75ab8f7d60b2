"""Tiny random-weight models build, reload and generate; full-size configs have the published sizes."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from PIL import Image

from vlm_rl.models.cache import build_once
from vlm_rl.models.families import model_family
from vlm_rl.models.loading import load_model, load_processor
from vlm_rl.models.prompts import detection_instruction, encode_prompts
from vlm_rl.models.tiny import build_tiny_model, real_architecture_config


@pytest.mark.parametrize("fixture,family,size,cls_name", [
    ("tiny_model_dir", "qwen3_vl", 64, "Qwen3VLForConditionalGeneration"),
    ("tiny_qwen25_dir", "qwen2_5_vl", 84, "Qwen2_5_VLForConditionalGeneration"),
])
def test_tiny_model_loads_and_generates(request, fixture, family, size, cls_name):
    path = request.getfixturevalue(fixture)
    model, processor = load_model(path), load_processor(path)
    assert type(model).__name__ == cls_name and model_family(model.config) == family
    assert model.config.image_token_id == 151655 and model.config.vision_start_token_id == 151652
    assert model.get_input_embeddings().weight.shape[0] == 151936
    assert model.generation_config.eos_token_id == [151645, 151643]
    assert processor.image_processor.patch_size == {"qwen3_vl": 16, "qwen2_5_vl": 14}[family]
    assert processor.tokenizer.eos_token_id == 151645

    enc = encode_prompts(processor, [Image.new("RGB", (size, size), (200, 30, 30))], detection_instruction(["stop"]))
    patch = processor.image_processor.patch_size
    assert enc["image_grid_thw"].tolist() == [[1, size // patch, size // patch]]  # no resizing by the processor
    n_image_tokens = int((enc["input_ids"] == 151655).sum())
    assert n_image_tokens == (size // patch) ** 2 // 4
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, enc["input_ids"].shape[1] + 5)
    assert torch.equal(out[:, : enc["input_ids"].shape[1]], enc["input_ids"])


def test_build_is_idempotent(tiny_model_dir):
    weights = tiny_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert build_tiny_model(tiny_model_dir, family="qwen3_vl") == tiny_model_dir
    assert time.perf_counter() - t0 < 1.0
    assert weights.stat().st_mtime_ns == before


def test_same_seed_same_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    again = load_file(build_tiny_model(tmp_path / "again", family="qwen3_vl", seed=0) / "model.safetensors")
    original = load_file(tiny_model_dir / "model.safetensors")
    assert again.keys() == original.keys()
    assert all(torch.equal(again[k], original[k]) for k in original)


def test_build_once_builds_once_under_concurrency(tmp_path):
    calls = []

    def build(tmp):
        calls.append(1)
        time.sleep(0.2)
        (tmp / "file.txt").write_text("x")

    results = []
    threads = [threading.Thread(target=lambda: results.append(build_once(tmp_path / "m", build))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and set(results) == {tmp_path / "m"}
    assert (tmp_path / "m" / "file.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.tmp")] == []


def test_build_once_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        build_once(tmp_path / "m", lambda tmp: None)
    assert (tmp_path / "m" / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("name,expected,tied", [("qwen3-vl-2b", 2.13e9, True), ("qwen3-vl-8b", 8.77e9, False)])
def test_real_architecture_parameter_counts(name, expected, tied):
    from transformers import Qwen3VLForConditionalGeneration

    config = real_architecture_config(name)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - expected) / expected < 0.02, n
    assert config.tie_word_embeddings is tied
    assert config.text_config.rope_parameters["mrope_section"] == [24, 20, 20]
    assert config.image_token_id == 151655


def test_unknown_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="qwen3-vl-2b"):
        real_architecture_config("qwen3-vl-4b")
    with pytest.raises(ValueError, match="family"):
        build_tiny_model(tmp_path / "x", family="llava")
