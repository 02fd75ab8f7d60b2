"""Resize math and exact box rescaling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from vlm_rl.data.resize import load_resized, model_image_size, rescale_objects
from vlm_rl.data.schema import DatasetError, DetObject, Sample


@pytest.mark.parametrize(
    "size, max_size, factor, expected",
    [
        ((640, 480), 448, 32, (448, 352)),
        ((1920, 1080), 448, 28, (448, 252)),
        ((300, 200), 448, 32, (288, 192)),  # never enlarged
        ((20, 10), 448, 32, (32, 32)),  # tiny: one factor
        ((100, 50), 448, 32, (96, 32)),
        ((1000, 1000), 470, 32, (448, 448)),  # 470 is no multiple: floor, not round up
        ((2209, 2543), 274, 28, (224, 252)),  # long side floored to 9 cells, short scaled by that: not 252x252
    ],
)
def test_model_image_size_examples(size, max_size, factor, expected):
    assert model_image_size(*size, max_size, factor) == expected


@given(
    st.integers(1, 5000), st.integers(1, 5000), st.integers(32, 2048), st.sampled_from([14, 28, 32])
)
def test_model_image_size_properties(w, h, max_size, factor):
    nw, nh = model_image_size(w, h, max_size, factor)
    assert nw % factor == 0 and nh % factor == 0 and nw >= factor and nh >= factor
    assert max(nw, nh) <= max(max_size, factor)
    assert nw <= max(w, factor) and nh <= max(h, factor)
    assert model_image_size(nw, nh, max_size, factor) == (nw, nh)  # a preprocessed dataset is not resized again
    if min(w, h) * min(1, max_size / max(w, h)) >= 8 * factor:  # aspect kept up to rounding to the grid
        assert abs(nw / nh - w / h) / (w / h) < 0.15


def test_rescale_objects_is_exact():
    objs = [DetObject("a", (10.0, 20.0, 110.0, 70.0))]
    assert rescale_objects(objs, (200, 100), (64, 32)) == [DetObject("a", (3.2, 6.4, 35.2, 22.4))]


def test_load_resized_image_and_boxes(tmp_path):
    Image.new("RGB", (640, 480), (1, 2, 3)).save(tmp_path / "x.png")
    sample = Sample("x", str(tmp_path / "x.png"), 640, 480, (DetObject("s", (64.0, 48.0, 640.0, 480.0)),))
    image, objects = load_resized(sample, 448, 32)
    assert image.mode == "RGB" and image.size == (448, 352)
    assert objects == [DetObject("s", (44.8, 35.2, 448.0, 352.0))]


def test_load_resized_reports_bad_images(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(DatasetError, match=r"bad\.jpg: image: cannot decode"):
        load_resized(Sample("b", str(tmp_path / "bad.jpg"), 10, 10), 448, 32)
    with pytest.raises(DatasetError, match=r"gone\.png: image: file not found"):
        load_resized(Sample("g", str(tmp_path / "gone.png"), 10, 10), 448, 32)
