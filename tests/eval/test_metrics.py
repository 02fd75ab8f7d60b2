"""Detection metrics on hand-built cases whose AP / P / R / F1 are worked out by hand."""

from __future__ import annotations

import json

import pytest

from vlm_rl.data.schema import DetObject
from vlm_rl.eval.metrics import IOU_THRESHOLDS, evaluate_detections, mlflow_metrics


def obj(label, box, score=None):
    d = {"label": label, "bbox_2d": list(box)}
    if score is not None:
        d["score"] = score
    return d


GT = [
    [obj("stop_sign", [10, 10, 50, 50]), obj("traffic_light", [60, 10, 80, 60])],
    [obj("stop_sign", [100, 100, 140, 150])],
]


def test_perfect_predictions_score_one():
    m = evaluate_detections([list(g) for g in GT], GT)
    assert m["mAP@0.5"] == 1.0 and m["mAP@[.5:.95]"] == 1.0
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0)
    assert m["format_valid_rate"] == 1.0
    assert (m["n_gt"], m["n_pred"], m["tp"], m["fp"], m["fn"]) == (3, 3, 3, 0, 0)
    assert m["per_class"]["stop_sign"]["n_gt"] == 2
    json.dumps(m)  # JSON-serialisable


def test_ground_truth_as_detobjects_is_accepted():
    gt = [[DetObject("stop_sign", (10.0, 10.0, 50.0, 50.0))]]
    assert evaluate_detections([[obj("stop_sign", [10, 10, 50, 50])]], gt)["mAP@0.5"] == 1.0


@pytest.mark.parametrize(
    ("tp_score", "fp_score", "expected_ap"),
    [
        # ranked TP, FP: precision 1.0 up to recall 0.5 -> 51 of 101 recall points at 1.0
        (0.9, 0.8, 51 / 101),
        # ranked FP, TP: the TP comes at precision 0.5 -> 51 points at 0.5
        (0.8, 0.9, 51 * 0.5 / 101),
    ],
)
def test_one_of_two_found_with_one_false_positive(tp_score, fp_score, expected_ap):
    gt = [[obj("a", [0, 0, 10, 10])], [obj("a", [20, 20, 40, 40])]]
    preds = [[obj("a", [0, 0, 10, 10], tp_score)], [obj("a", [100, 100, 120, 120], fp_score)]]
    m = evaluate_detections(preds, gt)
    assert m["mAP@0.5"] == pytest.approx(expected_ap, abs=1e-12)
    assert m["mAP@[.5:.95]"] == pytest.approx(expected_ap, abs=1e-12)  # exact box: same at every IoU
    assert (m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1)


def test_answer_order_ranks_predictions_without_score():
    # Same image: the false positive is written first, so it ranks first -> AP as for (FP, TP).
    gt = [[obj("a", [0, 0, 10, 10]), obj("a", [20, 20, 40, 40])]]
    fp_first = [[obj("a", [100, 100, 120, 120]), obj("a", [0, 0, 10, 10])]]
    tp_first = [[obj("a", [0, 0, 10, 10]), obj("a", [100, 100, 120, 120])]]
    assert evaluate_detections(fp_first, gt)["mAP@0.5"] == pytest.approx(51 * 0.5 / 101)
    assert evaluate_detections(tp_first, gt)["mAP@0.5"] == pytest.approx(51 / 101)


def test_wrong_labels_score_zero():
    preds = [[obj("yield_sign", g["bbox_2d"]) for g in image] for image in GT]
    m = evaluate_detections(preds, GT)
    assert m["mAP@0.5"] == 0.0 and m["mAP@[.5:.95]"] == 0.0
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    # the predicted-only class is reported, but does not enter the mean
    assert m["per_class"]["yield_sign"]["n_gt"] == 0 and m["per_class"]["yield_sign"]["precision"] == 0.0


def test_iou_06_counts_only_up_to_threshold_06():
    gt = [[obj("a", [0, 0, 10, 10])]]
    preds = [[obj("a", [0, 0, 10, 6])]]  # intersection 60 / union 100 = IoU 0.6 exactly
    m = evaluate_detections(preds, gt)
    assert m["mAP@0.5"] == 1.0
    # hit at 0.50, 0.55, 0.60; miss at 0.65 ... 0.95 -> 3 / 10
    assert len(IOU_THRESHOLDS) == 10
    assert m["mAP@[.5:.95]"] == pytest.approx(0.3, abs=1e-12)
    assert m["per_class"]["a"]["ap"] == pytest.approx(0.3, abs=1e-12)


def test_per_class_precision_recall_f1():
    gt = [
        [obj("a", [0, 0, 10, 10]), obj("a", [20, 0, 30, 10]), obj("b", [40, 0, 50, 10])],
        [obj("a", [0, 20, 10, 30])],
    ]
    preds = [
        # a: one hit, one duplicate of the same box (false positive: one-to-one matching)
        [obj("a", [0, 0, 10, 10]), obj("a", [0, 0, 10, 10]), obj("b", [40, 0, 50, 10]), obj("b", [60, 0, 70, 10])],
        [obj("a", [0, 20, 10, 30])],
    ]
    m = evaluate_detections(preds, gt)
    a, b = m["per_class"]["a"], m["per_class"]["b"]
    # a: TP 2, preds 3, gt 3
    assert (a["precision"], a["recall"]) == pytest.approx((2 / 3, 2 / 3))
    assert a["f1"] == pytest.approx(2 / 3) and a["n_gt"] == 3
    # b: TP 1, preds 2, gt 1
    assert (b["precision"], b["recall"]) == pytest.approx((0.5, 1.0))
    assert b["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    # micro: TP 3, preds 5, gt 4
    assert (m["precision"], m["recall"]) == pytest.approx((3 / 5, 3 / 4))
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)


def test_unparsed_answers_lower_format_rate_and_count_as_missed():
    preds = [[obj("stop_sign", [10, 10, 50, 50]), obj("traffic_light", [60, 10, 80, 60])], None]
    m = evaluate_detections(preds, GT)
    assert m["format_valid_rate"] == 0.5 and m["n_parsed"] == 1
    assert (m["precision"], m["recall"]) == (1.0, pytest.approx(2 / 3))
    explicit = evaluate_detections([[], []], [[], []], parsed_flags=[True, False])
    assert explicit["format_valid_rate"] == 0.5


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="ground_truths"):
        evaluate_detections([[]], [[], []])
    with pytest.raises(ValueError, match="parsed_flags"):
        evaluate_detections([[]], [[]], parsed_flags=[True, True])


def test_mlflow_names_are_safe():
    names = mlflow_metrics(evaluate_detections([list(g) for g in GT], GT))
    assert names["eval/mAP_50"] == 1.0 and names["eval/mAP_50_95"] == 1.0 and names["eval/f1"] == 1.0
    assert "eval/ap50/stop_sign" in names
    assert all(set(k) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./") for k in names)
