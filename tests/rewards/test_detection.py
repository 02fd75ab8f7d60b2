"""Format, detection and combined rewards on hand-computed cases."""

from __future__ import annotations

import json

import pytest

from vlm_rl.rewards.detection import (
    PARTIAL_FORMAT_CREDIT,
    combined_reward,
    completion_text,
    detection_reward,
    format_reward,
)

GT = [{"label": "stop_sign", "bbox_2d": [0, 0, 10, 10]}, {"label": "traffic_light", "bbox_2d": [20, 0, 30, 10]}]


def answer(objs):
    return json.dumps([{"bbox_2d": o["bbox_2d"], "label": o["label"]} for o in objs])


def test_perfect_answer_scores_one():
    assert detection_reward([answer(GT)], [GT]) == [1.0]


def test_missed_box_is_penalised():
    assert detection_reward([answer(GT[:1])], [GT]) == [pytest.approx(0.5)]


def test_extra_box_is_penalised():
    extra = GT + [{"label": "stop_sign", "bbox_2d": [50, 50, 60, 60]}]
    assert detection_reward([answer(extra)], [GT]) == [pytest.approx(2 / 3)]


def test_duplicate_box_is_penalised():
    assert detection_reward([answer(GT + GT[:1])], [GT]) == [pytest.approx(2 / 3)]


def test_partial_overlap_is_paid_by_iou():
    pred = [{"label": "stop_sign", "bbox_2d": [0, 0, 10, 8]}, GT[1]]  # IoU 0.8 and 1.0
    assert detection_reward([answer(pred)], [GT]) == [pytest.approx((0.8 + 1.0) / 2)]


def test_wrong_label_and_below_threshold_earn_nothing():
    wrong = [{"label": "yield_sign", "bbox_2d": [0, 0, 10, 10]}]
    far = [{"label": "stop_sign", "bbox_2d": [0, 0, 10, 4]}]  # IoU 0.4
    assert detection_reward([answer(wrong), answer(far)], [GT[:1], GT[:1]]) == [0.0, 0.0]
    assert detection_reward([answer(far)], [GT[:1]], iou_threshold=0.3) == [pytest.approx(0.4)]


def test_empty_cases():
    assert detection_reward(["[]", "[]", answer(GT)], [[], GT, []]) == [1.0, 0.0, 0.0]


def test_unparseable_scores_zero_even_without_objects():
    assert detection_reward(["I don't know", ""], [[], GT]) == [0.0, 0.0]


def test_chat_completions_and_string_solution():
    chat = [{"role": "assistant", "content": answer(GT)}]
    parts = [{"role": "assistant", "content": [{"type": "text", "text": answer(GT)}]}]
    assert detection_reward([chat, parts], [answer(GT), GT]) == [1.0, 1.0]
    assert completion_text([{"role": "user", "content": "x"}]) == ""


def test_bad_inputs_raise_with_the_row():
    with pytest.raises(ValueError, match="solution"):
        detection_reward(["[]", "[]"], [[]])
    with pytest.raises(ValueError, match=r"solution\[1\]\[0\]"):
        detection_reward(["[]", "[]"], [[], [{"bbox_2d": [0, 0, 1, 1]}]])
    with pytest.raises(ValueError, match=r"solution\[0\]"):
        detection_reward(["[]"], ["not json"])
    with pytest.raises(TypeError, match="completion"):
        format_reward([42])


def test_format_reward_levels():
    clean = answer(GT)
    fenced = f"```json\n{clean}\n```"
    sloppy = [
        f"Objects: {clean}",
        clean[:-5],  # truncated after the first object
        json.dumps({"bbox_2d": [0, 0, 1, 1], "label": "a"}),  # one object, not a list
        '[{"bbox_2d": [0, 0, 1, 1], "label": "a"}, {"bbox_2d": [1]}]',  # an invalid item
    ]
    assert format_reward([clean, fenced, "[]"]) == [1.0, 1.0, 1.0]
    assert format_reward(sloppy) == [PARTIAL_FORMAT_CREDIT] * len(sloppy)
    assert format_reward(["nothing", '[{"x": 1}]']) == [0.0, 0.0]


def test_combined_reward():
    out = combined_reward([answer(GT), f"see {answer(GT[:1])}", "?"], [GT, GT, GT], format_weight=0.5)
    assert out[0] == {"format": 1.0, "detection": 1.0, "total": 1.5}
    assert out[1] == {"format": 0.5, "detection": pytest.approx(0.5), "total": pytest.approx(0.75)}
    assert out[2] == {"format": 0.0, "detection": 0.0, "total": 0.0}


def test_doctests_run():
    import doctest

    import vlm_rl.rewards.detection
    import vlm_rl.rewards.matching
    import vlm_rl.rewards.parse

    for module in (vlm_rl.rewards.parse, vlm_rl.rewards.matching, vlm_rl.rewards.detection):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
