"""The synthetic traffic-sign set: deterministic, valid, tight boxes, some empty images."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from vlm_rl.data.schema import load_jsonl
from vlm_rl.data.synthetic import LABELS, draw_object, make_synthetic_dataset


def digest(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(open(p, "rb").read())
    return h.hexdigest()


def test_deterministic_for_a_seed(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", 6, 2, seed=3)
    b = make_synthetic_dataset(tmp_path / "b", 6, 2, seed=3)
    c = make_synthetic_dataset(tmp_path / "c", 6, 2, seed=4)
    assert [p.read_text() for p in a] == [p.read_text() for p in b]
    assert a[0].read_text() != c[0].read_text()
    images = lambda root: sorted((root / "images").iterdir())  # noqa: E731
    assert digest(images(tmp_path / "a")) == digest(images(tmp_path / "b"))
    assert digest(images(tmp_path / "a")) != digest(images(tmp_path / "c"))


def test_dataset_is_valid_and_varied(synthetic_dataset):
    train, val = synthetic_dataset
    samples = load_jsonl(train, labels=LABELS).samples  # validates every box is inside its image
    val_samples = load_jsonl(val, labels=LABELS).samples
    assert (len(samples), len(val_samples)) == (48, 16)
    assert {s.id for s in samples}.isdisjoint({s.id for s in val_samples})
    counts = [len(s.objects) for s in samples]
    assert 0 in counts and max(counts) <= 3 and sum(counts) >= 48
    assert len({o.label for s in samples for o in s.objects}) == len(LABELS)
    assert len({(s.width, s.height) for s in samples}) > 10
    assert all(160 <= min(s.width, s.height) and max(s.width, s.height) <= 320 for s in samples)
    sides = [o.bbox_2d[2] - o.bbox_2d[0] for s in samples for o in s.objects]
    assert min(sides) < 30 and max(sides) > 50


def test_objects_do_not_overlap(synthetic_dataset):
    for s in load_jsonl(synthetic_dataset[0]).samples:
        boxes = [o.bbox_2d for o in s.objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_empty_images_exist_at_roughly_ten_percent(tmp_path):
    samples = load_jsonl(make_synthetic_dataset(tmp_path, 100, 0, min_size=64, max_size=96)[0]).samples
    empty = sum(not s.objects for s in samples)
    assert 3 <= empty <= 20


def test_max_objects_one(tmp_path):
    samples = load_jsonl(make_synthetic_dataset(tmp_path, 20, 1, max_objects=1)[0]).samples
    assert max(len(s.objects) for s in samples) == 1


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("size", [16, 33, 90])
def test_drawn_pixels_span_exactly_the_box(label, size):
    """On a flat background the painted pixels' bounding box is the object's box (within 1 px)."""
    image = Image.new("RGB", (200, 160), (0, 0, 255))
    w, h = (max(8, int(size * 0.42)), size) if label == "traffic_light" else (size, size)
    box = (37, 21, 37 + w, 21 + h)
    draw_object(image, label, box, np.random.default_rng(0))
    ys, xs = np.nonzero(np.any(np.asarray(image) != (0, 0, 255), axis=2))
    drawn = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert np.abs(np.subtract(drawn, box)).max() <= 1, (drawn, box)


def test_signs_have_their_colours(synthetic_dataset):
    """A stop sign's box is mostly red; a traffic light's mostly dark: the label is visible."""
    for s in load_jsonl(synthetic_dataset[0]).samples:
        pixels = np.asarray(Image.open(s.image).convert("RGB")).astype(int)
        for o in s.objects:
            x1, y1, x2, y2 = (int(v) for v in o.bbox_2d)
            patch = pixels[y1:y2, x1:x2]
            red = np.mean((patch[..., 0] > 150) & (patch[..., 1] < 80))
            dark = np.mean(patch.max(axis=2) < 80)
            if o.label in ("stop_sign", "no_entry_sign"):
                assert red > 0.4, (s.id, o)
            if o.label == "traffic_light":
                assert dark > 0.5, (s.id, o)
