"""IoU and greedy one-to-one matching."""

from __future__ import annotations

import math

import pytest

from vlm_rl.data.schema import DetObject
from vlm_rl.rewards.matching import box_iou, greedy_match


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
        ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
        ([0, 0, 0, 10], [0, 0, 0, 10], 0.0),  # zero width
        ([10, 10, 0, 0], [0, 0, 10, 10], 0.0),  # flipped corners
        ([0, 0, math.inf, 10], [0, 0, 10, 10], 0.0),
        ([0, 0, math.nan, 10], [0, 0, 10, 10], 0.0),
    ],
)
def test_box_iou(a, b, iou):
    assert box_iou(a, b) == pytest.approx(iou)
    assert box_iou(b, a) == pytest.approx(iou)


def test_iou_is_invariant_to_independent_axis_scaling():
    a, b = [10, 20, 60, 90], [30, 10, 80, 70]
    sx, sy = 1000 / 640, 1000 / 480
    scaled = [[x1 * sx, y1 * sy, x2 * sx, y2 * sy] for x1, y1, x2, y2 in (a, b)]
    assert box_iou(*scaled) == pytest.approx(box_iou(a, b))


def _o(label, box):
    return {"label": label, "bbox_2d": box}


def test_greedy_takes_highest_iou_first_and_is_one_to_one():
    gt = [_o("a", [0, 0, 10, 10])]
    pred = [_o("a", [0, 0, 10, 8]), _o("a", [0, 0, 10, 10]), _o("a", [0, 0, 10, 9])]
    assert greedy_match(pred, gt) == [(1, 0, 1.0)]


def test_greedy_assignment_over_several_boxes():
    gt = [_o("a", [0, 0, 10, 10]), _o("a", [20, 0, 30, 10])]
    pred = [_o("a", [21, 0, 30, 10]), _o("a", [0, 0, 10, 9])]
    pairs = greedy_match(pred, gt)
    assert [(p, g) for p, g, _ in pairs] == [(0, 1), (1, 0)]
    assert [iou for *_, iou in pairs] == pytest.approx([0.9, 0.9])


def test_labels_must_agree_unless_disabled():
    gt = [_o("Stop_Sign", [0, 0, 10, 10])]
    assert greedy_match([_o("yield_sign", [0, 0, 10, 10])], gt) == []
    assert greedy_match([_o("yield_sign", [0, 0, 10, 10])], gt, match_labels=False) == [(0, 0, 1.0)]
    assert greedy_match([_o(" stop_sign", [0, 0, 10, 10])], gt) == [(0, 0, 1.0)]


def test_threshold_and_zero_overlap():
    gt = [_o("a", [0, 0, 10, 10])]
    half = [_o("a", [5, 0, 15, 10])]  # IoU 1/3
    assert greedy_match(half, gt, iou_threshold=0.5) == []
    assert len(greedy_match(half, gt, iou_threshold=0.3)) == 1
    assert greedy_match([_o("a", [50, 50, 60, 60])], gt, iou_threshold=0.0) == []


def test_accepts_detobjects():
    gt = [DetObject("a", (0.0, 0.0, 10.0, 10.0))]
    assert greedy_match([_o("a", [0, 0, 10, 10])], gt) == [(0, 0, 1.0)]
