"""DPO pairs as the learners read them: validated rows of ``vlm-rl dpo-data`` output, or synthetic ones.

A pair row (JSONL) is ``{"id", "image", "prompt", "chosen", "rejected", ...}``; the prompt is the instruction
text shown with the image, chosen/rejected are answer texts. Extra fields (rewards, margin) are ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vlm_rl.data.jsonl import iter_jsonl

REQUIRED = ("image", "prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PairItem:
    """One preference pair; ``image`` is an absolute path to the original (not resized) image."""

    id: str
    image: str
    prompt: str
    chosen: str
    rejected: str


def load_pairs(path: str | os.PathLike) -> list[PairItem]:
    """Read and check a pairs JSONL; ValueError naming ``file:line: field``. Relative images: from the file's folder."""
    path = Path(path)
    pairs = []
    for where, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for name in REQUIRED:
            if not isinstance(row.get(name), str):
                problem = "missing" if name not in row else f"expected a string, got {type(row[name]).__name__}"
                raise ValueError(f"{where}: {name}: {problem}")
        if row["chosen"] == row["rejected"]:
            raise ValueError(f"{where}: chosen: identical to rejected (the pair prefers nothing)")
        image = Path(row["image"])
        image = image if image.is_absolute() else (path.parent / image).resolve()
        if not image.is_file():
            raise ValueError(f"{where}: image: file not found: {image}")
        pairs.append(PairItem(str(row.get("id", where.rsplit("/", 1)[-1])), str(image), row["prompt"],
                              row["chosen"], row["rejected"]))
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return pairs


def synthetic_pairs(samples: Sequence, labels: Sequence[str], family: str, max_image_size: int) -> list[dict]:
    """Pairs for a run without ``pairs``: chosen = the ground-truth answer, rejected = a wrong one
    (no boxes when there are objects, a made-up box when there are none). Makes ``vlm-rl dpo`` runnable
    out of the box; real pairs come from ``vlm-rl dpo-data``."""
    from vlm_rl.eval.runner import ground_truth_in_model_coords
    from vlm_rl.models.prompts import answer_text, detection_instruction

    prompt = detection_instruction(list(labels))
    rows = []
    for s in samples:
        truth = ground_truth_in_model_coords(s, max_image_size, family)
        wrong = [] if truth else [{"label": labels[0], "bbox_2d": [0, 0, 10, 10]}]
        rows.append({"id": s.id, "image": s.image, "prompt": prompt, "chosen": answer_text(truth),
                     "rejected": answer_text(wrong), "chosen_reward": 1.0, "rejected_reward": 0.0, "margin": 1.0})
    return rows


def write_pairs(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """JSONL via a temporary file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return path
