"""Detection metrics from parsed answers: COCO-style AP, precision/recall/F1, format validity.

Pure Python + numpy, so the same numbers come out of an eval run, a GRPO eval step and a test.

* **AP** (per class, per IoU threshold) follows COCO: all predictions of a class, over all images, are
  ranked by score; each is matched to the unmatched ground truth of its image and class with the highest
  IoU >= the threshold; precision is made monotone and read at 101 recall points (0, 0.01, ..., 1).
  ``mAP@0.5`` averages over classes at IoU 0.5, ``mAP@[.5:.95]`` also over IoU 0.50, 0.55, ..., 0.95.
  Only classes with ground truth enter the mean (as in COCO); a class only ever predicted still shows
  in ``per_class`` with AP 0 and its false positives count against precision.
* **Scores**: a model answer has no confidences, so a prediction without ``score`` gets
  ``1.0 - k * 1e-6`` for the k-th object of its answer: earlier objects rank first, ties across images
  keep image order.
* **Precision / recall / F1** (per class and micro over all classes) at IoU 0.5 use
  :func:`vlm_rl.rewards.matching.greedy_match` per image, one-to-one, labels must agree. An answer that
  did not parse has no predictions, so its ground truth counts as missed.

Labels are compared (and reported) normalised with ``strip().lower()``, as the rewards do.

>>> gt = [[{"label": "a", "bbox_2d": [0, 0, 10, 10]}]]
>>> m = evaluate_detections([[{"label": "a", "bbox_2d": [0, 0, 10, 10]}]], gt)
>>> m["mAP@0.5"], m["mAP@[.5:.95]"], m["f1"], m["format_valid_rate"]
(1.0, 1.0, 1.0, 1.0)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vlm_rl.rewards.matching import box_iou, greedy_match, object_box, object_label

#: COCO's IoU thresholds, rounded so that 0.6 is exactly 0.6 (np.linspace gives 0.6000000000000001).
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
#: COCO's recall sampling points.
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: Score step that keeps answer order for predictions without a score.
ORDER_STEP = 1e-6
#: IoU tolerance: a box whose IoU is 0.6 up to float error counts at threshold 0.6.
IOU_EPS = 1e-9


@dataclass(frozen=True)
class ClassMetrics:
    ap50: float
    ap: float
    precision: float
    recall: float
    f1: float
    n_gt: int
    n_pred: int
    tp: int


@dataclass(frozen=True)
class DetectionMetrics:
    """Everything :func:`evaluate_detections` reports; ``to_dict()`` is its JSON form."""

    map50: float
    map: float
    precision: float
    recall: float
    f1: float
    format_valid_rate: float
    n_images: int
    n_parsed: int
    n_gt: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    per_class: dict[str, ClassMetrics] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mAP@0.5": self.map50,
            "mAP@[.5:.95]": self.map,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "format_valid_rate": self.format_valid_rate,
            "n_images": self.n_images,
            "n_parsed": self.n_parsed,
            "n_gt": self.n_gt,
            "n_pred": self.n_pred,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "per_class": {label: asdict(c) for label, c in sorted(self.per_class.items())},
        }


@dataclass(frozen=True)
class _Det:
    image: int
    label: str
    box: tuple[float, ...]
    score: float


def evaluate_detections(
    predictions: Sequence[Sequence[Any] | None],
    ground_truths: Sequence[Sequence[Any]],
    parsed_flags: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """Metrics of per-image predictions against per-image ground truth, as a JSON-serialisable dict.

    ``predictions[i]``: list of ``{"label", "bbox_2d", "score"?}`` for image ``i`` (``None`` = the answer
    did not parse); ``ground_truths[i]``: its ``{"label", "bbox_2d"}`` dicts or DetObjects, in the same
    coordinate system. ``parsed_flags`` defaults to "prediction is not None".
    """
    return compute_metrics(predictions, ground_truths, parsed_flags).to_dict()


def compute_metrics(
    predictions: Sequence[Sequence[Any] | None],
    ground_truths: Sequence[Sequence[Any]],
    parsed_flags: Sequence[bool] | None = None,
) -> DetectionMetrics:
    """:func:`evaluate_detections` as a :class:`DetectionMetrics`."""
    if len(predictions) != len(ground_truths):
        raise ValueError(f"predictions: {len(predictions)} images but ground_truths has {len(ground_truths)}")
    if parsed_flags is None:
        parsed_flags = [p is not None for p in predictions]
    elif len(parsed_flags) != len(predictions):
        raise ValueError(f"parsed_flags: {len(parsed_flags)} flags for {len(predictions)} images")
    preds = [list(p) if p is not None else [] for p in predictions]
    gts = [list(g) for g in ground_truths]

    dets = _detections(preds)
    gt_by_key: dict[tuple[int, str], list[tuple[float, ...]]] = {}
    for i, image_gt in enumerate(gts):
        for obj in image_gt:
            gt_by_key.setdefault((i, object_label(obj)), []).append(_box(obj))

    n_gt_class: dict[str, int] = {}
    for (_, label), boxes in gt_by_key.items():
        n_gt_class[label] = n_gt_class.get(label, 0) + len(boxes)
    labels = sorted(set(n_gt_class) | {d.label for d in dets})

    tp_class = _greedy_true_positives(preds, gts)
    n_pred_class: dict[str, int] = {}
    for d in dets:
        n_pred_class[d.label] = n_pred_class.get(d.label, 0) + 1

    per_class: dict[str, ClassMetrics] = {}
    for label in labels:
        class_dets = [d for d in dets if d.label == label]
        aps = [_average_precision(class_dets, gt_by_key, label, n_gt_class.get(label, 0), t) for t in IOU_THRESHOLDS]
        n_gt, n_pred, tp = n_gt_class.get(label, 0), n_pred_class.get(label, 0), tp_class.get(label, 0)
        p, r, f = _prf(tp, n_pred, n_gt)
        per_class[label] = ClassMetrics(aps[0], float(np.mean(aps)), p, r, f, n_gt, n_pred, tp)

    with_gt = [per_class[label] for label in labels if n_gt_class.get(label, 0) > 0]
    tp, n_pred, n_gt = sum(tp_class.values()), len(dets), sum(n_gt_class.values())
    p, r, f = _prf(tp, n_pred, n_gt)
    n_parsed = sum(bool(flag) for flag in parsed_flags)
    return DetectionMetrics(
        map50=float(np.mean([c.ap50 for c in with_gt])) if with_gt else 0.0,
        map=float(np.mean([c.ap for c in with_gt])) if with_gt else 0.0,
        precision=p,
        recall=r,
        f1=f,
        format_valid_rate=n_parsed / len(predictions) if predictions else 0.0,
        n_images=len(predictions),
        n_parsed=n_parsed,
        n_gt=n_gt,
        n_pred=n_pred,
        tp=tp,
        fp=n_pred - tp,
        fn=n_gt - tp,
        per_class=per_class,
    )


def mlflow_metrics(metrics: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """MLflow-safe flat names for an :func:`evaluate_detections` dict.

    >>> mlflow_metrics({"mAP@0.5": 0.5, "mAP@[.5:.95]": 0.25, "f1": 1.0, "per_class": {"stop sign": {"ap50": 0.5}}})
    {'eval/mAP_50': 0.5, 'eval/mAP_50_95': 0.25, 'eval/f1': 1.0, 'eval/ap50/stop_sign': 0.5}
    """
    renames = {"mAP@0.5": "mAP_50", "mAP@[.5:.95]": "mAP_50_95"}
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "per_class":
            for label, values in value.items():
                for name in ("ap50", "ap", "f1"):
                    if name in values:
                        out[f"{prefix}/{name}/{_safe_name(label)}"] = float(values[name])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}/{renames.get(key, _safe_name(key))}"] = float(value)
    return out


def _safe_name(name: str) -> str:
    """MLflow allows letters, digits, ``_ - . /`` and spaces in metric names; keep it simpler still."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "unnamed"


def _box(obj: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in object_box(obj))


def _detections(preds: list[list[Any]]) -> list[_Det]:
    """All predictions, ranked by score (answer order breaks ties, then image order)."""
    dets = []
    for i, image_preds in enumerate(preds):
        for k, obj in enumerate(image_preds):
            score = obj.get("score") if isinstance(obj, dict) else getattr(obj, "score", None)
            score = 1.0 - k * ORDER_STEP if score is None else float(score)
            dets.append(_Det(i, object_label(obj), _box(obj), score))
    # sorted() is stable: equal scores keep image order
    return sorted(dets, key=lambda d: -d.score)


def _average_precision(
    dets: list[_Det], gt_by_key: dict[tuple[int, str], list[tuple[float, ...]]], label: str, n_gt: int, thr: float
) -> float:
    """COCO 101-point interpolated AP of one class at one IoU threshold (``dets`` ranked by score)."""
    if n_gt == 0 or not dets:
        return 0.0
    used: dict[int, set[int]] = {}
    hits = np.zeros(len(dets))
    for n, d in enumerate(dets):
        taken = used.setdefault(d.image, set())
        best, best_iou = -1, 0.0
        for j, gbox in enumerate(gt_by_key.get((d.image, label), [])):
            iou = box_iou(d.box, gbox) if j not in taken else 0.0
            if iou > best_iou and iou >= thr - IOU_EPS:
                best, best_iou = j, iou
        if best >= 0:
            taken.add(best)
            hits[n] = 1.0
    tp = np.cumsum(hits)
    recall = tp / n_gt
    precision = tp / np.arange(1, len(dets) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(np.mean(sampled))


def _greedy_true_positives(preds: list[list[Any]], gts: list[list[Any]]) -> dict[str, int]:
    """Matched pairs per class at IoU 0.5, one-to-one per image, labels must agree."""
    counts: dict[str, int] = {}
    for image_preds, image_gt in zip(preds, gts):
        for _, j, _ in greedy_match(image_preds, image_gt, iou_threshold=0.5 - IOU_EPS, match_labels=True):
            label = object_label(image_gt[j])
            counts[label] = counts.get(label, 0) + 1
    return counts


def _prf(tp: int, n_pred: int, n_gt: int) -> tuple[float, float, float]:
    """Precision, recall, F1; 0.0 where a denominator is 0."""
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gt if n_gt else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f
