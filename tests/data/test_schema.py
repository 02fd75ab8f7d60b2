"""load_jsonl / write_jsonl: every kind of bad row is reported as file:line: field: problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlm_rl.data.schema import DatasetError, DetObject, Sample, load_jsonl, write_jsonl


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    Image.new("RGB", (100, 80), (10, 20, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 60), (200, 0, 0)).save(tmp_path / "b.png")
    (tmp_path / "corrupt.png").write_bytes((tmp_path / "a.png").read_bytes()[:60])
    return tmp_path


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"image": "a.png", "objects": [{"label": "stop_sign", "bbox_2d": [10, 5, 50, 40]}]}


def test_good_rows_load_with_sizes_from_header(data_dir):
    path = write_rows(data_dir / "d.jsonl", [GOOD, {"id": "x", "image": "b.png", "objects": []}])
    result = load_jsonl(path)
    assert result.skipped == []
    a, b = result.samples
    assert a == Sample("d-1", str(data_dir / "a.png"), 100, 80, (DetObject("stop_sign", (10.0, 5.0, 50.0, 40.0)),))
    assert (b.id, b.width, b.height, b.objects) == ("x", 40, 60, ())


def test_aliases_bbox_and_boxes(data_dir):
    row = {"image": str(data_dir / "a.png"), "boxes": [{"label": "t", "bbox": [1, 2, 3, 4]}]}
    sample = load_jsonl(write_rows(data_dir / "d.jsonl", [row])).samples[0]
    assert sample.objects == (DetObject("t", (1.0, 2.0, 3.0, 4.0)),)


def test_box_within_one_pixel_of_border_is_clipped(data_dir):
    row = {"image": "a.png", "objects": [{"label": "t", "bbox_2d": [-0.8, 0, 100.6, 80.9]}]}
    sample = load_jsonl(write_rows(data_dir / "d.jsonl", [row])).samples[0]
    assert sample.objects[0].bbox_2d == (0.0, 0.0, 100.0, 80.0)


BAD_ROWS = [
    ('{"image": "a.png", "objects": [', "json", "malformed JSON"),
    ({"objects": []}, "image", "missing"),
    ({"image": "nope.png", "objects": []}, "image", "file not found"),
    ({"image": "corrupt.png", "objects": []}, "image", "cannot read image"),
    ({"image": "a.png", "objects": [{"label": "t", "bbox_2d": [1, 2, 3]}]}, "objects[0].bbox_2d", "4 numbers"),
    ({"image": "a.png", "objects": [{"label": "t", "bbox_2d": [1, 2, "3", 4]}]}, "objects[0].bbox_2d", "4 numbers"),
    ({"image": "a.png", "objects": [{"label": "t", "bbox_2d": [50, 2, 50, 4]}]}, "objects[0].bbox_2d", "degenerate"),
    ({"image": "a.png", "objects": [{"label": "t", "bbox_2d": [5, 9, 8, 4]}]}, "objects[0].bbox_2d", "degenerate"),
    ({"image": "a.png", "objects": [{"label": "t", "bbox_2d": [5, 5, 102, 10]}]}, "objects[0].bbox_2d", "outside the 100x80"),
    ({"image": "a.png", "objects": [{"label": "t", "bbox_2d": [-3, 5, 10, 10]}]}, "objects[0].bbox_2d", "outside"),
    ({"image": "a.png", "objects": [GOOD["objects"][0], {"bbox_2d": [1, 1, 2, 2]}]}, "objects[1].label", "non-empty string"),
    ({"image": "a.png", "width": 99}, "width", "but the image is 100 px wide"),
    ({"image": "a.png", "height": -1}, "height", "positive integer"),
    ({"image": "a.png", "objects": {"label": "t"}}, "objects", "expected a list"),
]


@pytest.mark.parametrize("row, field, problem", BAD_ROWS)
def test_bad_row_names_file_line_and_field(data_dir, row, field, problem):
    path = write_rows(data_dir / "d.jsonl", [GOOD, "", row])  # the bad row is on line 3
    with pytest.raises(DatasetError) as err:
        load_jsonl(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3: {field}: "), message
    assert problem in message


def test_unknown_label_when_labels_given(data_dir):
    path = write_rows(data_dir / "d.jsonl", [GOOD])
    with pytest.raises(DatasetError, match=r"d\.jsonl:1: objects\[0\]\.label: unknown label 'stop_sign'"):
        load_jsonl(path, labels=["traffic_light"])
    assert len(load_jsonl(path, labels=["stop_sign"]).samples) == 1


def test_duplicate_id(data_dir):
    path = write_rows(data_dir / "d.jsonl", [{**GOOD, "id": "z"}, {**GOOD, "id": "z"}])
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: id: duplicate id 'z' \(first on line 1\)"):
        load_jsonl(path)


def test_skip_mode_counts_and_keeps_good_rows(data_dir):
    rows = [GOOD, "{bad", {"image": "nope.png"}, {"image": "b.png"}, {"image": "corrupt.png"}]
    result = load_jsonl(write_rows(data_dir / "d.jsonl", rows), on_error="skip")
    assert [s.image for s in result.samples] == [str(data_dir / "a.png"), str(data_dir / "b.png")]
    assert len(result.skipped) == 3
    assert [m.split(": ")[0].rsplit(":", 1)[1] for m in result.skipped] == ["2", "3", "5"]


def test_empty_dataset_names_file(data_dir):
    path = write_rows(data_dir / "empty.jsonl", [])
    with pytest.raises(DatasetError, match=r"empty\.jsonl: dataset is empty"):
        load_jsonl(path)
    only_bad = write_rows(data_dir / "bad.jsonl", [{"image": "nope.png"}])
    with pytest.raises(DatasetError, match=r"bad\.jsonl: dataset is empty.*1 bad rows skipped"):
        load_jsonl(only_bad, on_error="skip")


def test_check_images_false_trusts_given_size(data_dir):
    path = write_rows(data_dir / "d.jsonl", [{"image": "nope.png", "width": 10, "height": 10}])
    assert load_jsonl(path, check_images=False).samples[0].width == 10
    with pytest.raises(DatasetError, match="file not found"):
        load_jsonl(path)


def test_write_then_load_round_trips_with_relative_paths(data_dir, tmp_path):
    samples = load_jsonl(write_rows(data_dir / "d.jsonl", [GOOD, {"image": "b.png"}])).samples
    out = write_jsonl(samples, data_dir / "copy.jsonl")
    assert json.loads(out.read_text().splitlines()[0])["image"] == "a.png"
    assert load_jsonl(out).samples == samples
    elsewhere = write_jsonl(samples, tmp_path / "other" / "copy.jsonl")
    assert json.loads(elsewhere.read_text().splitlines()[0])["image"] == str(data_dir / "a.png")
    assert not [p for p in elsewhere.parent.iterdir() if p.name.endswith(".tmp")]


def test_malformed_json_message_reads_well(tmp_path):
    """An unterminated string: "starting at column 11", not "starting at at column 11" (issue 12)."""
    path = tmp_path / "bad.jsonl"
    for text, expected in (('{"image": "a.png}', "Unterminated string starting at column 11"),
                           ('{"image": "a.png}\n', "Unterminated string starting at column 11")):
        path.write_text(text)
        with pytest.raises(DatasetError) as info:
            load_jsonl(path)
        assert expected in str(info.value) and "at at" not in str(info.value)


def test_malformed_json_names_the_column_of_the_error(tmp_path):
    """Issue 26: a row cut short at its end was reported "at column 1" (json saw the newline as line 2)."""
    row = json.dumps({"id": "a", "image": "a.png", "width": 10, "height": 10,
                      "objects": [{"label": "stop_sign", "bbox_2d": [1, 2, 3, 4]}]})
    path = tmp_path / "cut.jsonl"
    path.write_text(row + "\n" + row[:-2] + "\n")
    result = load_jsonl(path, on_error="skip", check_images=False)
    (message,) = result.skipped
    assert f"cut.jsonl:2: json: malformed JSON (Expecting ',' delimiter at column {len(row) - 1})" in message
