"""Turn a model's detection answer into ``[{"label": str, "bbox_2d": [x1, y1, x2, y2]}]``.

Runs on every rollout, and a policy in training writes anything: prose, code fences, a single object
instead of a list, answers cut off by ``max_new_tokens``. So parsing is forgiving (it recovers what
can be recovered) but *reports* every liberty it took, so that the format reward can pay less for a
sloppy answer than for a clean one. It never raises on any input.

>>> parse_detections('[{"bbox_2d": [1, 2, 30, 40], "label": "stop_sign"}]')
[{'label': 'stop_sign', 'bbox_2d': [1.0, 2.0, 30.0, 40.0]}]
>>> parse_detections('```json\\n[{"bbox_2d": [0, 0, 5, 5], "label": "a"}, {"bbox_2d": [1, 2')
[{'label': 'a', 'bbox_2d': [0.0, 0.0, 5.0, 5.0]}]
>>> parse_detections("[]")
[]
>>> parse_detections("I see no JSON here") is None
True
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NamedTuple

#: How many ``[``/``{`` positions are tried as the start of the answer (bounds the work on long prose).
MAX_START_TRIES = 16
#: Longest text looked at; a completion longer than this is garbage for a detection answer anyway.
MAX_TEXT_CHARS = 200_000

_FENCE_OPEN = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?")
_SPECIAL_TOKENS = re.compile(r"<\|(?:im_end|endoftext|im_start)\|>")
_DECODER = json.JSONDecoder()


class ParseResult(NamedTuple):
    """What was parsed and how cleanly.

    * ``objects``: valid detections, ``[]`` for "no objects", ``None`` when nothing usable was found.
    * ``valid_json``: a complete JSON value was decoded (not objects salvaged from a broken list).
    * ``n_invalid_items``: items dropped for a missing/bad ``bbox_2d`` or ``label``.
    * ``truncated``: the JSON list was cut off and its complete objects were recovered (a list that closes
      but is malformed, e.g. a trailing comma, is salvaged too, with ``valid_json`` and ``truncated`` False).
    * ``clean``: the text is exactly one JSON list (optionally in one closed code fence), nothing else.
    """

    objects: list[dict[str, Any]] | None
    valid_json: bool
    n_invalid_items: int
    truncated: bool
    clean: bool = False


_NOTHING = ParseResult(None, False, 0, False, False)


def parse_detections(text: object) -> list[dict[str, Any]] | None:
    """The valid detections in ``text`` (see module docstring); ``None`` when there is no usable answer."""
    return parse_report(text).objects


def parse_report(text: object) -> ParseResult:
    """Parse ``text`` and say how cleanly it parsed; never raises."""
    if not isinstance(text, str):
        return _NOTHING
    try:
        return _parse(text[:MAX_TEXT_CHARS])
    except Exception:  # noqa: BLE001 - the contract is "never raises": a reward must not kill a rollout
        return _NOTHING


def _parse(text: str) -> ParseResult:
    body, fenced_cleanly = _strip_fence(_SPECIAL_TOKENS.sub("", text).strip())
    starts = [m.start() for m in re.finditer(r"[\[{]", body)][:MAX_START_TRIES]
    for start in starts:
        value, end = _decode_at(body, start)
        if isinstance(value, list) and (not value or any(isinstance(v, dict) for v in value)):
            objects, n_invalid = _validate(value)
            if value and not objects:
                return ParseResult(None, True, n_invalid, False, False)
            clean = fenced_cleanly and start == 0 and not body[end:].strip()
            return ParseResult(objects, True, n_invalid, False, clean)
        if isinstance(value, dict) and _looks_like_detection(value):
            objects, n_invalid = _validate([value])
            return ParseResult(objects or None, True, n_invalid, False, False)
        if value is None and body[start] == "[":
            recovered, closed = _recover_list(body, start)
            objects, n_invalid = _validate(recovered)
            if objects:
                return ParseResult(objects, False, n_invalid, not closed, False)
    return _NOTHING


def _strip_fence(text: str) -> tuple[str, bool]:
    """Inside of the first code fence (to the end if it never closes); flag: no text outside a closed fence."""
    match = _FENCE_OPEN.search(text)
    if match is None:
        return text, True
    inner = text[match.end():]
    close = inner.find("```")
    if close < 0:
        return inner.strip(), False
    clean = match.start() == 0 and not inner[close + 3:].strip()
    return inner[:close].strip(), clean


def _decode_at(text: str, start: int) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):
        return None, start


def _looks_like_detection(obj: dict) -> bool:
    return "bbox_2d" in obj or "bbox" in obj or "label" in obj


def _recover_list(text: str, start: int) -> tuple[list[Any], bool]:
    """Complete top-level objects of the broken list opening at ``text[start]``; flag: the list closed.

    A list that never closes was cut off (``max_new_tokens``); one that closes but does not decode is
    malformed (a trailing comma, a broken item) and its intact objects are kept all the same.
    """
    depth, in_string, escaped = 0, False, False
    complete_ends: list[tuple[int, int]] = []
    object_start = -1
    closed = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth == 2 and ch == "{":
                object_start = i
        elif ch in "]}":
            depth -= 1
            if depth == 1 and ch == "}" and object_start >= 0:
                complete_ends.append((object_start, i + 1))
                object_start = -1
            if depth <= 0:
                closed = True
                break
    items = []
    for a, b in complete_ends:
        value, _ = _decode_at(text[a:b], 0)
        items.append(value)
    return items, closed


def _validate(items: list[Any]) -> tuple[list[dict[str, Any]], int]:
    objects, invalid = [], 0
    for item in items:
        obj = _as_detection(item)
        if obj is None:
            invalid += 1
        else:
            objects.append(obj)
    return objects, invalid


def _as_detection(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    box = item.get("bbox_2d", item.get("bbox"))
    label = item.get("label")
    if not isinstance(label, str) or not isinstance(box, list) or len(box) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        return None
    try:
        coords = [float(v) for v in box]
    except OverflowError:  # a 400-digit integer
        return None
    if not all(math.isfinite(v) for v in coords):
        return None
    return {"label": label.strip(), "bbox_2d": coords}
