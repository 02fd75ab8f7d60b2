"""`vlm-rl preprocess` end to end: one corrupt and one missing image reported, the rest written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlm_rl.cli import main
from vlm_rl.data.schema import DetObject, load_jsonl


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i, size in enumerate([(640, 480), (300, 600), (90, 70)]):
        Image.new("RGB", size, (i * 60, 100, 50)).save(src / f"img{i}.png")
    (src / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 30)
    rows = [
        {"id": "a", "image": "img0.png", "objects": [{"label": "stop_sign", "bbox_2d": [64, 48, 640, 480]}]},
        {"id": "b", "image": "img1.png", "objects": [{"label": "traffic_light", "bbox_2d": [30, 60, 60, 120]}]},
        {"id": "c", "image": "corrupt.jpg", "width": 50, "height": 50, "objects": []},
        {"id": "d", "image": "missing.png", "width": 50, "height": 50, "objects": []},
        {"id": "e", "image": "img2.png", "objects": [{"label": "stop_sign", "bbox_2d": [10, 10, 90, 70]}]},
        {"id": "f", "image": "img2.png", "objects": [{"label": "stop_sign", "bbox_2d": [10, 10, 10, 70]}]},
    ]
    path = src / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check_output(out: Path, dataset: Path) -> None:
    report = json.loads((out / "preprocess_report.json").read_text())
    assert (report["total"], report["written"], report["failed_images"], report["skipped_rows"]) == (6, 3, 2, 1)
    assert {f["id"] for f in report["failures"]} == {"c", "d"}
    assert any("corrupt.jpg: image: cannot decode" in f["error"] for f in report["failures"])
    assert any("missing.png: image: file not found" in f["error"] for f in report["failures"])
    assert report["skipped"][0].startswith(f"{dataset.resolve()}:6: objects[0].bbox_2d: degenerate")

    samples = {s.id: s for s in load_jsonl(out / "train.jsonl").samples}  # re-validates sizes and boxes
    assert set(samples) == {"a", "b", "e"}
    a, b, e = samples["a"], samples["b"], samples["e"]
    assert (a.width, a.height) == (224, 160) and Path(a.image).parent == out / "images"
    assert a.objects == (DetObject("stop_sign", (64 * 224 / 640, 48 * 160 / 480, 224.0, 160.0)),)
    assert (b.width, b.height) == (128, 224)  # 112 px is 3.5 grid cells: rounds up
    assert b.objects == (DetObject("traffic_light", (30 * 128 / 300, 60 * 224 / 600, 60 * 128 / 300, 120 * 224 / 600)),)
    assert (e.width, e.height) == (64, 64)  # 90x70: rounded down to the grid, never enlarged past it
    assert e.objects == (DetObject("stop_sign", (10 * 64 / 90, 10 * 64 / 70, 64.0, 64.0)),)
    assert Image.open(a.image).size == (224, 160)


def test_preprocess_jsonl_with_process_pool(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["preprocess", "--input", str(dataset), "--output", str(out), "--size", "224", "--workers", "2"])
    assert code == 0
    check_output(out, dataset)
    printed = capsys.readouterr().out
    assert "bad image:" in printed and "wrote 3 samples" in printed


def test_preprocess_with_ray_data(dataset, tmp_path, ray_cluster):
    out = tmp_path / "out"
    assert main(["preprocess", "--input", str(dataset), "--output", str(out), "--size", "224", "--ray"]) == 0
    check_output(out, dataset)


def test_preprocess_coco_input(tmp_path):
    Image.new("RGB", (100, 50)).save(tmp_path / "x.png")
    coco = {
        "images": [{"id": 5, "file_name": "x.png", "width": 100, "height": 50}],
        "categories": [{"id": 1, "name": "yield_sign"}],
        "annotations": [{"image_id": 5, "category_id": 1, "bbox": [10, 5, 20, 10]}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    args = ["preprocess", "--format", "coco", "--input", str(tmp_path / "ann.json"), "--output", str(out)]
    assert main([*args, "--size", "64", "--factor", "32", "--workers", "1"]) == 0
    (sample,) = load_jsonl(out / "ann.jsonl").samples
    assert (sample.width, sample.height) == (64, 32)
    assert sample.objects == (DetObject("yield_sign", (6.4, 3.2, 19.2, 9.6)),)


def test_nothing_readable_fails(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text('{"image": "gone.png", "width": 5, "height": 5}\n')
    assert main(["preprocess", "--input", str(tmp_path / "d.jsonl"), "--output", str(tmp_path / "o")]) == 1
    assert json.loads((tmp_path / "o" / "preprocess_report.json").read_text())["failed_images"] == 1
    assert main(["preprocess", "--input", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "o")]) == 2
    assert "none.jsonl: file not found" in capsys.readouterr().err


def _coco_with_a_broken_row(tmp_path: Path) -> Path:
    for name in ("x.png", "y.png"):
        Image.new("RGB", (100, 50)).save(tmp_path / name)
    coco = {
        "images": [{"id": 5, "file_name": "x.png", "width": 100, "height": 50},
                   {"id": 6, "file_name": "y.png", "width": 100, "height": 50}],
        "categories": [{"id": 1, "name": "yield_sign"}],
        "annotations": [{"image_id": 5, "category_id": 1, "bbox": [10, 5, 20, 10]},
                        {"image_id": 6, "category_id": 1, "bbox": [90, 5, 20, 10]}],  # past the right edge
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return tmp_path / "ann.json"


def test_coco_and_yolo_skip_broken_rows_write_the_rest_and_summarise(tmp_path, capsys):
    """Issue 26: both formats name the broken row, write the good ones and end with kept / skipped by reason."""
    ann = _coco_with_a_broken_row(tmp_path)
    out = tmp_path / "coco-out"
    assert main(["preprocess", "--format", "coco", "--input", str(ann), "--output", str(out), "--size", "64",
                 "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"skipped row: {ann}: annotations[1]: bbox:" in printed and "image 6 (y.png) left out" in printed
    assert "kept 1 of 2; skipped 1 (bbox 1)" in printed
    assert [s.id for s in load_jsonl(out / "ann.jsonl").samples] == ["5"]
    assert json.loads((out / "preprocess_report.json").read_text())["skipped_by_reason"] == {"bbox": 1}

    images, labels = tmp_path / "yolo" / "images", tmp_path / "yolo" / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for stem in ("a", "b"):
        Image.new("RGB", (64, 64)).save(images / f"{stem}.png")
    (labels / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (labels / "b.txt").write_text("0 0.5 0.5 0.5 0.5\n3 0.5 0.5 0.5 0.5\n")  # class 3 of 1
    (labels / "lost.txt").write_text("0 0.5 0.5 0.5 0.5\n")  # its image is missing
    (tmp_path / "classes.txt").write_text("stop_sign\n")
    out = tmp_path / "yolo-out"
    args = ["preprocess", "--format", "yolo", "--input", str(images), "--labels-dir", str(labels),
            "--classes", str(tmp_path / "classes.txt"), "--output", str(out), "--size", "64", "--workers", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"{labels / 'b.txt'}:2: class: 3 out of range" in printed
    assert f"{labels / 'lost.txt'}: image: no image for this label file" in printed
    assert "kept 1 of 3; skipped 2 (class 1, image 1)" in printed
    assert [s.id for s in load_jsonl(out / "data.jsonl").samples] == ["a"]

    # --strict (CI): the same input is a hard stop, every problem listed, nothing written
    strict_out = tmp_path / "strict"
    assert main([*args[:-6], "--output", str(strict_out), "--strict"]) == 2
    captured = capsys.readouterr()
    assert "b.txt:2: class" in captured.out and "lost.txt: image" in captured.out
    assert "--strict: 2 bad rows, nothing written" in captured.err and not strict_out.exists()
