"""COCO import: xywh -> xyxy, category names, unannotated images kept, bad entries named."""

from __future__ import annotations

import json

import pytest

from vlm_rl.data.coco import load_coco
from vlm_rl.data.schema import DatasetError, DetObject


def coco(**changes):
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "sub/b.jpg", "width": 50, "height": 50},
        ],
        "categories": [{"id": 3, "name": "stop_sign"}, {"id": 7, "name": "traffic_light"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40]},
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [0.5, 1.25, 99.5, 78.75]},
            {"id": 12, "image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5], "iscrowd": 1},
        ],
    }
    data.update(changes)
    return data


def test_load_coco_boxes_and_labels(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco()))
    a, b = load_coco(path)
    assert a.image == str(tmp_path / "a.jpg") and (a.width, a.height, a.id) == (100, 80, "1")
    assert a.objects == (
        DetObject("stop_sign", (10.0, 20.0, 40.0, 60.0)),
        DetObject("traffic_light", (0.5, 1.25, 100.0, 80.0)),
    )
    assert b.objects == () and b.image == str(tmp_path / "sub" / "b.jpg")
    assert load_coco(path, images_dir=tmp_path / "imgs")[0].image == str(tmp_path / "imgs" / "a.jpg")


@pytest.mark.parametrize(
    "ann, expected",
    [
        ({"image_id": 9, "category_id": 3, "bbox": [1, 1, 2, 2]}, r"annotations\[1\]: image_id: unknown image id 9"),
        ({"image_id": 1, "category_id": 4, "bbox": [1, 1, 2, 2]}, r"annotations\[1\]: category_id: unknown category"),
        ({"image_id": 1, "category_id": 3, "bbox": [1, 1, 2]}, r"annotations\[1\]: bbox: expected 4 numbers"),
        ({"image_id": 1, "category_id": 3, "bbox": [1, 1, 0, 2]}, r"annotations\[1\]: bbox: degenerate"),
        ({"image_id": 2, "category_id": 3, "bbox": [40, 1, 20, 2]}, r"annotations\[1\]: bbox: .* outside the 50x50"),
    ],
)
def test_bad_annotation_is_named(tmp_path, ann, expected):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco(annotations=[coco()["annotations"][0], ann])))
    with pytest.raises(DatasetError, match=rf"ann\.json: {expected}"):
        load_coco(path)


def test_bad_image_entry_and_bad_json(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco(images=[{"id": 1, "file_name": "a.jpg", "width": 0, "height": 5}])))
    with pytest.raises(DatasetError, match=r"ann\.json: images\[0\]: width: expected a positive integer"):
        load_coco(path)
    path.write_text('{"images": [\n{"id": 1,}')
    with pytest.raises(DatasetError, match=r"ann\.json:2: json: malformed JSON"):
        load_coco(path)


def test_bad_entries_are_skipped_and_named(tmp_path):
    """Issue 26: with a ``skipped`` list every bad entry is named and left out; the good images stay."""
    data = coco(images=[*coco()["images"], {"id": 3, "file_name": "c.jpg", "width": 0, "height": 5},
                        {"id": 4, "file_name": "d.jpg", "width": 20, "height": 20}],
                annotations=[*coco()["annotations"], {"image_id": 2, "category_id": 3, "bbox": [40, 1, 20, 2]},
                             {"image_id": 3, "category_id": 3, "bbox": [1, 1, 2, 2]},
                             {"image_id": 9, "category_id": 3, "bbox": [1, 1, 2, 2]},
                             {"image_id": 4, "category_id": 3, "bbox": [1, 1, 2, 2]}])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    skipped: list[str] = []
    samples = load_coco(path, skipped=skipped)
    assert [s.id for s in samples] == ["1", "4"] and len(samples[0].objects) == 2
    assert len(skipped) == 3, skipped  # image 3's own annotation is not reported a second time
    assert skipped[0].startswith(f"{path}: images[2]: width: expected a positive integer")
    assert skipped[1].startswith(f"{path}: annotations[3]: bbox:") and "image 2 (sub/b.jpg) left out" in skipped[1]
    assert skipped[2].startswith(f"{path}: annotations[5]: image_id: unknown image id 9")
    from vlm_rl.data.schema import count_reasons

    assert count_reasons(skipped) == {"bbox": 1, "image_id": 1, "width": 1}
