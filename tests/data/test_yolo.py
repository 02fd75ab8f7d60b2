"""YOLO import: normalised cx cy w h -> pixel boxes; class names from list / data.yaml / classes.txt."""

from __future__ import annotations

import pytest
from PIL import Image

from vlm_rl.data.schema import DatasetError, DetObject
from vlm_rl.data.yolo import load_yolo, read_class_names


@pytest.fixture
def yolo_dir(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.new("RGB", (200, 100)).save(tmp_path / "images" / "one.png")
    Image.new("RGB", (64, 32)).save(tmp_path / "images" / "two.jpg")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "labels" / "one.txt").write_text("1 0.5 0.5 0.5 0.2\n\n0 0.125 0.25 0.25 0.5\n")
    return tmp_path


def test_load_yolo_exact_boxes(yolo_dir):
    one, two = load_yolo(yolo_dir / "images", yolo_dir / "labels", ["stop_sign", "traffic_light"])
    assert (one.id, one.width, one.height) == ("one", 200, 100)
    assert one.objects == (
        DetObject("traffic_light", (50.0, 40.0, 150.0, 60.0)),
        DetObject("stop_sign", (0.0, 0.0, 50.0, 50.0)),
    )
    assert two.objects == () and two.image == str(yolo_dir / "images" / "two.jpg")


def test_class_names_sources(tmp_path):
    (tmp_path / "data.yaml").write_text("names: [a, b]\n")
    (tmp_path / "map.yaml").write_text("names: {1: b, 0: a}\n")
    (tmp_path / "classes.txt").write_text("a\nb\n\n")
    for name in ("data.yaml", "map.yaml", "classes.txt"):
        assert read_class_names(tmp_path / name) == ["a", "b"]
    (tmp_path / "empty.yaml").write_text("nc: 2\n")
    with pytest.raises(DatasetError, match=r"empty\.yaml: names:"):
        read_class_names(tmp_path / "empty.yaml")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("2 0.5 0.5 0.1 0.1", r"one\.txt:2: class: 2 out of range \(2 classes\)"),
        ("x 0.5 0.5 0.1 0.1", r"one\.txt:2: class: expected an integer"),
        ("0 0.5 0.5 0.1", r"one\.txt:2: row: expected 'class cx cy w h'"),
        ("0 0.5 0.5 nan? 0.1", r"one\.txt:2: bbox: expected 4 numbers"),
        ("0 0.9 0.5 0.5 0.1", r"one\.txt:2: bbox: .* outside the 200x100"),
        ("0 0.5 0.5 0 0.1", r"one\.txt:2: bbox: degenerate"),
    ],
)
def test_bad_label_line_is_named(yolo_dir, line, expected):
    (yolo_dir / "labels" / "one.txt").write_text(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(DatasetError, match=expected):
        load_yolo(yolo_dir / "images", yolo_dir / "labels", ["a", "b"])


def test_bad_label_file_skips_its_image_and_an_orphan_label_is_reported(yolo_dir):
    """Issue 26: skip mode names file:line, leaves that image out, and reports a label file with no image."""
    (yolo_dir / "labels" / "two.txt").write_text("0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n")
    (yolo_dir / "labels" / "gone.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (yolo_dir / "labels" / "classes.txt").write_text("a\nb\n")
    skipped: list[str] = []
    (one,) = load_yolo(yolo_dir / "images", yolo_dir / "labels", yolo_dir / "labels" / "classes.txt", skipped=skipped)
    assert one.id == "one" and len(one.objects) == 2
    assert len(skipped) == 2, skipped
    assert skipped[0].startswith(f"{yolo_dir / 'labels' / 'two.txt'}:2: class: 7 out of range")
    assert "image two.jpg left out" in skipped[0]
    assert skipped[1].startswith(f"{yolo_dir / 'labels' / 'gone.txt'}: image: no image for this label file")
    with pytest.raises(DatasetError, match=r"gone\.txt: image: no image"):  # without a list: a hard stop
        (yolo_dir / "labels" / "two.txt").unlink()
        load_yolo(yolo_dir / "images", yolo_dir / "labels", ["a", "b"])
