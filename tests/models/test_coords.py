"""Pixel boxes ↔ model answer space: Qwen3-VL/Qwen2-VL relative 0-1000, Qwen2.5-VL absolute pixels."""

from __future__ import annotations

import pytest

from vlm_rl.models.coords import from_model_coords, to_model_coords


def test_qwen3_relative_hand_checked():
    # 448 x 352 input: x / 448 * 1000, y / 352 * 1000
    assert to_model_coords([44.8, 35.2, 224, 352], 448, 352, "qwen3_vl") == [100, 100, 500, 1000]
    assert to_model_coords([10, 10, 100, 50], 320, 96, "qwen3_vl") == [31, 104, 313, 521]  # 31.25, 104.17, ...
    assert from_model_coords([100, 100, 500, 1000], 448, 352, "qwen3_vl") == pytest.approx([44.8, 35.2, 224, 352])


def test_qwen2_vl_uses_relative_coordinates_too():
    assert to_model_coords([32, 16, 64, 64], 64, 64, "qwen2_vl") == [500, 250, 1000, 1000]


def test_qwen25_absolute_hand_checked():
    assert to_model_coords([10.4, 20.5, 111.6, 83.9], 112, 84, "qwen2_5_vl") == [10, 21, 112, 84]
    assert from_model_coords([10, 21, 112, 84], 112, 84, "qwen2_5_vl") == [10.0, 21.0, 112.0, 84.0]


def test_clamped_to_the_image():
    assert to_model_coords([-5, -1, 500, 999], 96, 64, "qwen3_vl") == [0, 0, 1000, 1000]
    assert to_model_coords([-5, -1, 500, 999], 96, 64, "qwen2_5_vl") == [0, 0, 96, 64]
    assert from_model_coords([-20, 5, 1200, 1001], 96, 64, "qwen3_vl") == pytest.approx([0, 0.32, 96, 64])
    assert from_model_coords([-20, 5, 1200, 1001], 96, 64, "qwen2_5_vl") == [0.0, 5.0, 96.0, 64.0]


@pytest.mark.parametrize("family,width,height", [("qwen3_vl", 448, 352), ("qwen3_vl", 96, 32),
                                                 ("qwen2_5_vl", 448, 336), ("qwen2_5_vl", 28, 84)])
def test_round_trip_within_one_unit(family, width, height):
    for i in range(50):
        box = [(i * 7.3) % width, (i * 3.1) % height, width - (i * 1.7) % width, height - (i * 2.9) % height]
        model = to_model_coords(box, width, height, family)
        assert all(isinstance(v, int) for v in model)
        back = from_model_coords(model, width, height, family)
        # one answer unit is 1 px (absolute) or width/1000 px (relative)
        units = (1.0, 1.0) if family == "qwen2_5_vl" else (width / 1000, height / 1000)
        for axis, (a, b) in enumerate(zip(box, back)):
            assert abs(a - b) <= units[axis % 2] / 2 + 1e-9
        assert to_model_coords(back, width, height, family) == model


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="family"):
        to_model_coords([0, 0, 1, 1], 10, 10, "llava")
    with pytest.raises(ValueError, match="bbox_2d"):
        from_model_coords([0, 0, 1], 10, 10, "qwen3_vl")
    with pytest.raises(ValueError, match="size"):
        to_model_coords([0, 0, 1, 1], 0, 10, "qwen2_5_vl")
