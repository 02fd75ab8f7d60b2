"""Box overlap and one-to-one matching of predicted to ground-truth boxes.

Boxes are ``[x1, y1, x2, y2]``. Objects are dicts ``{"label", "bbox_2d"}`` (``"bbox"`` accepted too) or
anything with ``.label`` and ``.bbox_2d`` attributes (``vlm_rl.data.schema.DetObject``). Labels are
compared after ``strip().lower()``, so "Stop_Sign " matches "stop_sign".

>>> box_iou([0, 0, 10, 10], [5, 0, 15, 10])
0.3333333333333333
>>> greedy_match([{"label": "a", "bbox_2d": [0, 0, 10, 10]}], [{"label": "a", "bbox_2d": [0, 0, 10, 9]}])
[(0, 0, 0.9)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes; 0.0 when either is degenerate (zero/negative area) or not finite."""
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    if not (ax2 > ax1 and ay2 > ay1 and bx2 > bx1 and by2 > by1):
        return 0.0
    if not (math.isfinite(area_a) and math.isfinite(area_b)):
        return 0.0
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def object_box(obj: Any) -> Sequence[float]:
    """The xyxy box of a detection dict or DetObject-like object."""
    if isinstance(obj, dict):
        return obj["bbox_2d"] if "bbox_2d" in obj else obj["bbox"]
    return obj.bbox_2d


def object_label(obj: Any) -> str:
    """The normalised label of a detection dict or DetObject-like object."""
    label = obj["label"] if isinstance(obj, dict) else obj.label
    return str(label).strip().lower()


def greedy_match(
    pred: Sequence[Any],
    gt: Sequence[Any],
    iou_threshold: float = 0.5,
    match_labels: bool = True,
) -> list[tuple[int, int, float]]:
    """One-to-one ``(pred_index, gt_index, iou)`` pairs, highest IoU first.

    A pair qualifies when its IoU is positive and at least ``iou_threshold`` (and, with ``match_labels``,
    its labels agree). Greedy by IoU rather than Hungarian: it is what COCO-style evaluation does, and
    it is cheap enough to run on every rollout.
    """
    pred_boxes = [object_box(p) for p in pred]
    gt_boxes = [object_box(g) for g in gt]
    pred_labels = [object_label(p) for p in pred] if match_labels else []
    gt_labels = [object_label(g) for g in gt] if match_labels else []
    candidates = []
    for i, pb in enumerate(pred_boxes):
        for j, gb in enumerate(gt_boxes):
            if match_labels and pred_labels[i] != gt_labels[j]:
                continue
            iou = box_iou(pb, gb)
            if iou > 0 and iou >= iou_threshold:
                candidates.append((-iou, i, j))
    candidates.sort()
    used_pred, used_gt, pairs = set(), set(), []
    for neg_iou, i, j in candidates:
        if i in used_pred or j in used_gt:
            continue
        used_pred.add(i)
        used_gt.add(j)
        pairs.append((i, j, -neg_iou))
    return pairs
