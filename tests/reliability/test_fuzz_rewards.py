"""Rewards fuzzed with arbitrary completions *and* arbitrary (well-formed) ground truth — degenerate,
inverted, huge or non-finite boxes, any label text, empty images — and chat-form completions.
tests/rewards/test_fuzz.py covers the parser and rewards against sane ground truth."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlm_rl.rewards.detection import combined_reward, detection_reward, format_reward

FAST = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**12, 10**12)
GT_OBJECT = st.fixed_dictionaries({"label": st.text(max_size=8), "bbox_2d": st.lists(ANY_FLOAT, min_size=4, max_size=4)})
GT = st.lists(GT_OBJECT, max_size=5)
TEXT = st.text(max_size=200) | st.builds(json.dumps, GT)
CHAT = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["assistant", "user"]),
                                       "content": st.text(max_size=80)}), max_size=3)


@FAST
@given(st.lists(TEXT | CHAT, min_size=1, max_size=4), st.data(), st.floats(0, 10))
def test_rewards_in_range_for_any_completion_and_ground_truth(completions, data, weight):
    solution = data.draw(st.lists(GT, min_size=len(completions), max_size=len(completions)))
    fmt = format_reward(completions)
    det = detection_reward(completions, solution)
    rows = combined_reward(completions, solution, format_weight=weight)
    assert len(fmt) == len(det) == len(rows) == len(completions)
    for f, d, row in zip(fmt, det, rows):
        assert f in (0.0, 0.5, 1.0)
        assert isinstance(d, float) and math.isfinite(d) and 0.0 <= d <= 1.0
        assert all(isinstance(v, float) and math.isfinite(v) for v in row.values())
        assert 0.0 <= row["total"] <= 1.0 + weight + 1e-9
