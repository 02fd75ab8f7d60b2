"""Model families, image factors and path resolution."""

from __future__ import annotations

import pytest

from vlm_rl.models.families import image_factor, model_family
from vlm_rl.models.loading import resolve_model_path


def test_model_family_from_config_dict_and_folder(tiny_model_dir, tiny_qwen25_dir):
    from transformers import Qwen2VLConfig

    assert model_family(tiny_model_dir) == "qwen3_vl"
    assert model_family(str(tiny_qwen25_dir)) == "qwen2_5_vl"
    assert model_family({"model_type": "qwen2_5_vl"}) == "qwen2_5_vl"
    assert model_family(Qwen2VLConfig()) == "qwen2_vl"
    with pytest.raises(ValueError, match="model_type: 'llama'"):
        model_family({"model_type": "llama"})


def test_image_factor():
    assert image_factor("qwen3_vl") == 32
    assert image_factor("qwen2_5_vl") == 28
    assert image_factor("qwen2_vl") == 28
    with pytest.raises(ValueError, match="family"):
        image_factor("qwen3")


def test_resolve_passes_paths_and_hub_ids_through(tmp_path, monkeypatch):
    assert resolve_model_path("Qwen/Qwen3-VL-2B-Instruct") == __import__("pathlib").Path("Qwen/Qwen3-VL-2B-Instruct")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    assert resolve_model_path("ckpt") == tmp_path / "ckpt"  # absolute, for workers with another cwd


def test_resolve_builds_tiny_models_in_the_cache_dir(tmp_path, tiny_qwen25_dir):
    import shutil

    # seed the cache with the session's model so the test checks resolution, not a second build
    shutil.copytree(tiny_qwen25_dir, tmp_path / "tiny-qwen2.5-vl")
    path = resolve_model_path("tiny-qwen2.5-vl", cache_dir=tmp_path)
    assert path == tmp_path / "tiny-qwen2.5-vl"
    assert model_family(path) == "qwen2_5_vl"
