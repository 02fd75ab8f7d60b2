"""Rewards for detection answers, TRL-style callables: ``completions, **kwargs -> list[float]``.

A completion is a string or a chat list ``[{"role": "assistant", "content": str | [parts]}]``.
``solution[i]`` holds the ground truth of completion ``i``: a list of ``{"label", "bbox_2d"}`` dicts (or
``DetObject``s, or the JSON answer string) **in the model's answer space**, like the predictions.

>>> gt = [[{"label": "stop_sign", "bbox_2d": [10, 10, 50, 50]}]]
>>> detection_reward(['[{"bbox_2d": [10, 10, 50, 50], "label": "stop_sign"}]'], gt)
[1.0]
>>> format_reward(['[{"bbox_2d": [1, 2, 9, 9], "label": "a"}]', 'Sure! [{"bbox_2d": [1, 2, 9, 9], "label": "a"}]', 'no'])
[1.0, 0.5, 0.0]
>>> combined_reward(["[]"], [[]])
[{'format': 1.0, 'detection': 1.0, 'total': 1.5}]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlm_rl.rewards.matching import greedy_match
from vlm_rl.rewards.parse import parse_detections, parse_report

#: Format reward of an answer that parses but not cleanly (prose, truncation, invalid items, one object).
PARTIAL_FORMAT_CREDIT = 0.5


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the last assistant message's content (TRL chat form)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
        if not assistant:
            return ""
        content = assistant[-1].get("content", "")
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # multimodal parts: [{"type": "text", "text": ...}]
            return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        return ""
    raise TypeError(f"completion: expected str or chat list of messages, got {type(completion).__name__}")


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 for exactly one valid JSON list of valid objects; 0.5 for a usable but sloppy answer; else 0.0."""
    return [_format_score(completion_text(c)) for c in completions]


def _format_score(text: str) -> float:
    report = parse_report(text)
    if report.objects is None:
        return 0.0
    if report.clean and report.valid_json and not report.truncated and report.n_invalid_items == 0:
        return 1.0
    return PARTIAL_FORMAT_CREDIT


def detection_reward(
    completions: Sequence[Any], solution: Sequence[Any], iou_threshold: float = 0.5, **kwargs: Any
) -> list[float]:
    """Sum of IoUs of label-matched pairs / max(#pred, #gt), in [0, 1].

    Dividing by the larger count penalises both missed and extra boxes; a wrong label earns nothing.
    No objects predicted for an image without objects is perfect (1.0); an unusable answer is 0.0.
    """
    _check_lengths(completions, solution)
    return [
        _detection_score(parse_detections(completion_text(c)), _ground_truth(s, i), iou_threshold)
        for i, (c, s) in enumerate(zip(completions, solution))
    ]


def _detection_score(pred: list[dict] | None, gt: list[Any], iou_threshold: float) -> float:
    if pred is None:
        return 0.0
    if not pred and not gt:
        return 1.0
    matched = greedy_match(pred, gt, iou_threshold=iou_threshold, match_labels=True)
    score = sum(iou for _, _, iou in matched) / max(len(pred), len(gt))
    return min(1.0, max(0.0, score))


def combined_reward(
    completions: Sequence[Any],
    solution: Sequence[Any],
    format_weight: float = 0.5,
    iou_threshold: float = 0.5,
    **kwargs: Any,
) -> list[dict[str, float]]:
    """Per completion ``{"format", "detection", "total": detection + format_weight * format}``."""
    fmt = format_reward(completions)
    det = detection_reward(completions, solution, iou_threshold=iou_threshold)
    return [{"format": f, "detection": d, "total": d + format_weight * f} for f, d in zip(fmt, det)]


def _check_lengths(completions: Sequence[Any], solution: Sequence[Any]) -> None:
    if len(completions) != len(solution):
        raise ValueError(f"solution: {len(solution)} ground truths for {len(completions)} completions")


def _ground_truth(value: Any, index: int) -> list[Any]:
    """Ground truth of row ``index`` as a list of objects; a bad one is a data bug, so it raises."""
    if isinstance(value, str):
        parsed = parse_detections(value)
        if parsed is None:
            raise ValueError(f"solution[{index}]: not a JSON detection list: {value[:80]!r}")
        return parsed
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"solution[{index}]: expected a list of {{label, bbox_2d}}, got {type(value).__name__}")
    for j, obj in enumerate(value):
        has_dict_fields = isinstance(obj, dict) and "label" in obj and ("bbox_2d" in obj or "bbox" in obj)
        if not (has_dict_fields or (hasattr(obj, "label") and hasattr(obj, "bbox_2d"))):
            raise ValueError(f"solution[{index}][{j}]: expected {{label, bbox_2d}}, got {obj!r:.80}")
    return list(value)
