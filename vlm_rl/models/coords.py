"""The one conversion between pixels of the resized model input and the model's answer coordinates.

Qwen3-VL and Qwen2-VL answer in integers relative to the image, 0-1000 on both axes; Qwen2.5-VL answers
in absolute integer pixels of the (resized) image it was shown. Mixing the two up is the most common
silent failure of detection RL, so nothing else in vlm-rl converts boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

RELATIVE_FAMILIES = ("qwen3_vl", "qwen2_vl")
ABSOLUTE_FAMILIES = ("qwen2_5_vl",)
RELATIVE_SCALE = 1000


def _is_relative(family: str) -> bool:
    if family in RELATIVE_FAMILIES:
        return True
    if family in ABSOLUTE_FAMILIES:
        return False
    raise ValueError(f"family: unknown model family {family!r}; expected one of {RELATIVE_FAMILIES + ABSOLUTE_FAMILIES}")


def _check(bbox: Sequence[float], width: int, height: int) -> None:
    if len(bbox) != 4:
        raise ValueError(f"bbox_2d: expected [x1, y1, x2, y2], got {list(bbox)!r}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")


def _clamp(value: float, high: float) -> float:
    return float(min(max(value, 0.0), high))


def _round(value: float) -> int:
    """Half up, not Python's half-to-even: 12.5 -> 13 like the resize code, whatever the neighbours."""
    return int(math.floor(value + 0.5))


def to_model_coords(bbox_px: Sequence[float], width: int, height: int, family: str) -> list[int]:
    """Box in pixels of the ``width`` x ``height`` model input → the integers the model should answer.

    >>> to_model_coords([48, 24, 96, 72], 96, 64, "qwen3_vl")
    [500, 375, 1000, 1000]
    >>> to_model_coords([10.4, 20.6, 200, -3], 112, 84, "qwen2_5_vl")
    [10, 21, 112, 0]
    """
    _check(bbox_px, width, height)
    if _is_relative(family):
        sides = (width, height, width, height)
        return [_round(_clamp(v / s * RELATIVE_SCALE, RELATIVE_SCALE)) for v, s in zip(bbox_px, sides)]
    limits = (width, height, width, height)
    return [_round(_clamp(float(v), lim)) for v, lim in zip(bbox_px, limits)]


def from_model_coords(bbox: Sequence[float], width: int, height: int, family: str) -> list[float]:
    """The model's answer box → pixels of the ``width`` x ``height`` model input (clamped to the image).

    >>> from_model_coords([500, 375, 1000, 1000], 96, 64, "qwen3_vl")
    [48.0, 24.0, 96.0, 64.0]
    >>> from_model_coords([10, 21, 150, 0], 112, 84, "qwen2_5_vl")
    [10.0, 21.0, 112.0, 0.0]
    """
    _check(bbox, width, height)
    if _is_relative(family):
        sides = (width, height, width, height)
        return [_clamp(float(v), RELATIVE_SCALE) * s / RELATIVE_SCALE for v, s in zip(bbox, sides)]
    limits = (width, height, width, height)
    return [_clamp(float(v), lim) for v, lim in zip(bbox, limits)]
