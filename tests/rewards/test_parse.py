"""Parsing of detection answers: every shape a policy in training actually writes."""

from __future__ import annotations

import pytest

from vlm_rl.rewards.parse import parse_detections, parse_report

A = '{"bbox_2d": [10, 20, 30, 40], "label": "stop_sign"}'
B = '{"bbox_2d": [50, 60, 70, 80], "label": "traffic_light"}'
OBJ_A = {"label": "stop_sign", "bbox_2d": [10.0, 20.0, 30.0, 40.0]}
OBJ_B = {"label": "traffic_light", "bbox_2d": [50.0, 60.0, 70.0, 80.0]}


@pytest.mark.parametrize(
    "text",
    [
        f"[{A}, {B}]",
        f"```json\n[{A}, {B}]\n```",
        f"  ```\n[{A}, {B}]\n```  ",
        f"[{A}, {B}]<|im_end|>",
    ],
)
def test_clean_answers(text):
    report = parse_report(text)
    assert report.objects == [OBJ_A, OBJ_B]
    assert report.valid_json and report.clean and not report.truncated and report.n_invalid_items == 0


@pytest.mark.parametrize(
    "text",
    [
        f"Here are the objects: [{A}, {B}] Hope this helps.",
        f"```json\n[{A}, {B}]\n``` trailing words",
        f"Sure [see below]: {{\"objects\": [{A}, {B}]}}",
    ],
)
def test_prose_around_the_answer_parses_but_is_not_clean(text):
    report = parse_report(text)
    assert report.objects == [OBJ_A, OBJ_B]
    assert report.valid_json and not report.clean


def test_single_object_instead_of_a_list():
    report = parse_report(A)
    assert report.objects == [OBJ_A]
    assert report.valid_json and not report.clean


def test_bbox_key_is_accepted_and_label_stripped():
    assert parse_detections('[{"bbox": [1, 2, 3, 4.5], "label": " a "}]') == [
        {"label": "a", "bbox_2d": [1.0, 2.0, 3.0, 4.5]}
    ]


@pytest.mark.parametrize("cut", [1, 5, 17, len(B) - 1])
def test_truncated_list_keeps_complete_objects(cut):
    text = f"```json\n[{A}, {B}]\n```"
    truncated = text[: text.index(B) + cut]
    report = parse_report(truncated)
    assert report.objects == [OBJ_A]
    assert report.truncated and not report.valid_json and not report.clean


def test_truncated_before_any_complete_object_is_nothing():
    assert parse_detections(f"[{A[:-3]}") is None
    assert parse_detections("[") is None


def test_trailing_comma_is_salvaged_but_not_valid_json():
    report = parse_report(f"[{A}, {B},]")
    assert report.objects == [OBJ_A, OBJ_B]
    assert not report.valid_json and not report.truncated and not report.clean


def test_empty_list_means_no_objects():
    report = parse_report("```json\n[]\n```")
    assert report.objects == [] and report.clean


@pytest.mark.parametrize(
    ("item", "why"),
    [
        ('{"bbox_2d": [1, 2, 3], "label": "a"}', "3 numbers"),
        ('{"bbox_2d": [1, 2, 3, "4"], "label": "a"}', "a string coordinate"),
        ('{"bbox_2d": [1, 2, 3, NaN], "label": "a"}', "NaN"),
        ('{"bbox_2d": [1, 2, 3, Infinity], "label": "a"}', "infinity"),
        ('{"bbox_2d": [1, 2, 3, true], "label": "a"}', "a boolean"),
        ('{"bbox_2d": [1, 2, 3, 4], "label": 7}', "a numeric label"),
        ('{"bbox_2d": [1, 2, 3, 4]}', "no label"),
        ('{"label": "a"}', "no box"),
        ('"stop_sign"', "not an object"),
        ('{"bbox_2d": [1, 2, 3, 1' + "0" * 400 + '], "label": "a"}', "a number too large for a float"),
    ],
)
def test_invalid_items_are_dropped_and_counted(item, why):
    report = parse_report(f"[{A}, {item}]")
    assert report.objects == [OBJ_A], why
    assert report.n_invalid_items == 1 and report.valid_json


def test_list_of_only_invalid_items_is_not_an_answer():
    report = parse_report('[{"box": [1, 2, 3, 4]}]')
    assert report.objects is None and report.valid_json and report.n_invalid_items == 1


@pytest.mark.parametrize(
    "text", ["", "   ", "no objects", "[1, 2, 3]", "{", "]]]", "{}", "[" * 50_000, "```json\n```", "null"]
)
def test_garbage_is_none(text):
    assert parse_detections(text) is None


@pytest.mark.parametrize("value", [None, 3, b"[]", ["[]"], {"bbox_2d": [1, 2, 3, 4], "label": "a"}])
def test_non_strings_are_none(value):
    assert parse_detections(value) is None
    assert parse_report(value).objects is None
