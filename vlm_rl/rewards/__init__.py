"""Rewards for detection answers: parsing, box matching, format and detection scores (plain Python)."""

from vlm_rl.rewards.detection import combined_reward, completion_text, detection_reward, format_reward
from vlm_rl.rewards.matching import box_iou, greedy_match
from vlm_rl.rewards.parse import ParseResult, parse_detections, parse_report

__all__ = [
    "ParseResult",
    "box_iou",
    "combined_reward",
    "completion_text",
    "detection_reward",
    "format_reward",
    "greedy_match",
    "parse_detections",
    "parse_report",
]
