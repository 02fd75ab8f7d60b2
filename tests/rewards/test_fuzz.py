"""Property tests: the parser never raises and every reward stays a finite float in its range."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlm_rl.rewards.detection import combined_reward, detection_reward, format_reward
from vlm_rl.rewards.matching import box_iou
from vlm_rl.rewards.parse import parse_detections, parse_report

FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

LABELS = st.sampled_from(["stop_sign", "yield_sign", "traffic_light"])
COORD = st.floats(min_value=0, max_value=1000, allow_nan=False)
BOX = st.tuples(COORD, COORD, COORD, COORD).map(list)
OBJECT = st.fixed_dictionaries({"bbox_2d": BOX, "label": LABELS})
OBJECTS = st.lists(OBJECT, max_size=6)

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
JSONISH = st.recursive(
    JSON_SCALARS | OBJECT,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["bbox_2d", "bbox", "label", "x"]) | st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)
WRAPPERS = st.sampled_from(["{}", "```json\n{}\n```", "Answer: {}", "```\n{}", "{}<|im_end|>", "[{}]"])


def check_result(text):
    report = parse_report(text)
    assert report.objects is None or isinstance(report.objects, list)
    for obj in report.objects or []:
        assert isinstance(obj["label"], str)
        assert len(obj["bbox_2d"]) == 4 and all(math.isfinite(v) for v in obj["bbox_2d"])
    assert report.n_invalid_items >= 0
    return report


def check_rewards(texts, solution):
    for value in format_reward(texts):
        assert isinstance(value, float) and value in (0.0, 0.5, 1.0)
    for value in detection_reward(texts, solution):
        assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0
    for row in combined_reward(texts, solution, format_weight=0.5):
        assert all(math.isfinite(v) for v in row.values()) and 0.0 <= row["total"] <= 1.5


@FAST
@given(st.text(max_size=300), OBJECTS)
def test_arbitrary_text(text, gt):
    check_result(text)
    check_rewards([text], [gt])


@FAST
@given(JSONISH, WRAPPERS, OBJECTS)
def test_arbitrary_json_structures(value, wrapper, gt):
    text = wrapper.replace("{}", json.dumps(value, allow_nan=True), 1)
    check_result(text)
    check_rewards([text], [gt])


@FAST
@given(OBJECTS, st.data())
def test_random_truncations_of_valid_answers(objects, data):
    text = f"```json\n{json.dumps(objects)}\n```"
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    report = check_result(text[:cut])
    if report.objects is not None:
        # whatever was recovered is a prefix of what was written
        assert report.objects == [{"label": o["label"], "bbox_2d": o["bbox_2d"]} for o in objects[: len(report.objects)]]
    check_rewards([text[:cut]], [objects])


def _area(box):
    x1, y1, x2, y2 = box
    return (x2 - x1) * (y2 - y1) if x2 > x1 and y2 > y1 else 0.0


@FAST
@given(OBJECTS)
def test_own_answer_is_perfect(objects):
    # degenerate as box_iou defines it: a box whose float area is 0 (sides under ~1e-160 underflow) cannot match
    nondegenerate = [o for o in objects if _area(o["bbox_2d"]) > 0]
    text = json.dumps(nondegenerate)
    assert format_reward([text]) == [1.0]
    assert detection_reward([text], [nondegenerate]) == [1.0]


def test_box_whose_area_underflows_is_degenerate():
    """The case hypothesis found: positive sides of 2e-257 px give a float area of 0, so the box matches nothing."""
    tiny = [0.0, 0.0, 2.1545696810195056e-257, 2.1545696810195056e-257]
    assert box_iou(tiny, tiny) == 0.0
    assert box_iou([0.0, 0.0, 1e-150, 1e-150], [0.0, 0.0, 1e-150, 1e-150]) == 1.0


@FAST
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=4, max_size=4),
       st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=4, max_size=4))
def test_box_iou_is_bounded(a, b):
    iou = box_iou(a, b)
    assert math.isfinite(iou) and 0.0 <= iou <= 1.0


@FAST
@given(st.one_of(st.none(), st.integers(), st.binary(), st.lists(st.text())))
def test_non_strings(value):
    assert parse_detections(value) is None
