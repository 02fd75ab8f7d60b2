"""DPO pairs: built from ranked rollouts (``vlm-rl dpo-data``) and loaded for the learners (``vlm-rl dpo``).

The best answer to a prompt is "chosen", the worst "rejected".

GRPO already produces what DPO needs: several scored answers per prompt. Pairing the extremes of each
group, and only when their rewards differ by a clear margin, gives pairs whose preference is not noise.

**Rollouts JSONL** (written by the GRPO trainer to ``<output_dir>/rollouts.jsonl``, and by
:func:`sample_rollouts`): one JSON object per completion::

    {"step": 3,                        # GRPO step (0 for rollouts sampled outside training); optional
     "sample_id": "val-000012",        # dataset row id ("prompt_id" accepted too)
     "image": "/abs/path/img.png",     # the row's image (original file, not resized)
     "prompt": "Detect all ...",       # the instruction text given with the image
     "completion": "[{\\"bbox_2d\\": ...}]",  # the model's answer
     "reward": 1.37,                   # total reward (what the pairs are ranked by)
     "rewards": {"format": 1.0, "detection": 0.87, "total": 1.37},  # optional components
     "solution": [{"label": ..., "bbox_2d": ...}]}                   # optional, gt in model coordinates

**Pairs JSONL** (read by ``vlm-rl dpo``): one JSON object per pair::

    {"id": "val-000012/0", "sample_id": "val-000012", "image": ..., "prompt": ..., "chosen": ...,
     "rejected": ..., "chosen_reward": 1.37, "rejected_reward": 0.2, "margin": 1.17}

Rollouts are grouped by (sample_id, prompt): answers to the same image and instruction from different
GRPO steps are candidates of one group. Within a group, answers are ranked by reward (file order breaks
ties) and paired outside-in: best with worst, second best with second worst, ... — each answer is used
at most once, a pair needs ``chosen_reward - rejected_reward >= min_margin`` (and > 0: ties never pair)
and two different texts.

>>> group = [{"sample_id": "a", "image": "i.png", "prompt": "p", "completion": c, "reward": r}
...          for c, r in [("good", 1.5), ("bad", 0.0), ("ok", 1.0)]]
>>> [(p["chosen"], p["rejected"], p["margin"]) for p in build_pairs([group])]
[('good', 'bad', 1.5)]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm_rl.data.jsonl import iter_jsonl

#: Fields every rollout record must have (``prompt_id`` may stand in for ``sample_id``).
REQUIRED_FIELDS = ("sample_id", "image", "prompt", "completion", "reward")
#: Float slack on the margin test, so 1.0 - 0.9 (= 0.0999...98) passes a 0.1 margin.
MARGIN_EPS = 1e-9


def load_rollouts(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a rollouts JSONL (module docstring); ValueError naming ``file:line: field`` for a bad row."""
    return [validate_rollout(row, where) for where, row in iter_jsonl(path)]


def validate_rollout(row: Any, where: str) -> dict[str, Any]:
    """One rollout record, checked and normalised (``prompt_id`` → ``sample_id``, ``step`` defaults to 0)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    row = dict(row)
    if "sample_id" not in row and "prompt_id" in row:
        row["sample_id"] = row["prompt_id"]
    for name in REQUIRED_FIELDS:
        if name not in row:
            raise ValueError(f"{where}: {name}: missing")
    for name in ("image", "prompt", "completion"):
        if not isinstance(row[name], str):
            raise ValueError(f"{where}: {name}: expected a string, got {type(row[name]).__name__}")
    reward = row["reward"]
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        raise ValueError(f"{where}: reward: expected a finite number, got {reward!r}")
    row["sample_id"] = str(row["sample_id"])
    row["reward"] = float(reward)
    row.setdefault("step", 0)
    return row


def group_rollouts(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """Rollouts per (sample_id, prompt), in file order."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((str(r["sample_id"]), str(r["prompt"])), []).append(r)
    return groups


def build_pairs(
    groups: Iterable[Sequence[Mapping[str, Any]]] | Mapping[Any, Sequence[Mapping[str, Any]]],
    min_margin: float = 0.1,
    max_pairs_per_prompt: int = 2,
) -> list[dict[str, Any]]:
    """Chosen/rejected pairs, outside-in per group (module docstring); groups without a margin give none."""
    if max_pairs_per_prompt < 1:
        raise ValueError(f"max_pairs_per_prompt: must be >= 1, got {max_pairs_per_prompt}")
    if isinstance(groups, Mapping):
        groups = groups.values()
    pairs = []
    for group in groups:
        ranked = sorted(group, key=lambda r: -float(r["reward"]))  # stable: file order breaks ties
        lo, hi, made = 0, len(ranked) - 1, 0
        while lo < hi and made < max_pairs_per_prompt:
            chosen, rejected = ranked[lo], ranked[hi]
            margin = float(chosen["reward"]) - float(rejected["reward"])
            if margin <= 0 or margin < min_margin - MARGIN_EPS:
                break  # inner pairs are closer still
            lo, hi = lo + 1, hi - 1
            if chosen["completion"] == rejected["completion"]:
                continue
            pairs.append(_pair_row(chosen, rejected, margin, made))
            made += 1
    return pairs


def _pair_row(chosen: Mapping[str, Any], rejected: Mapping[str, Any], margin: float, index: int) -> dict[str, Any]:
    sample_id = str(chosen.get("sample_id", chosen.get("prompt_id", "")))
    return {
        "id": f"{sample_id}/{index}",
        "sample_id": sample_id,
        "image": chosen["image"],
        "prompt": chosen["prompt"],
        "chosen": chosen["completion"],
        "rejected": rejected["completion"],
        "chosen_reward": float(chosen["reward"]),
        "rejected_reward": float(rejected["reward"]),
        "margin": margin,
    }


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows as JSONL via a temporary file + rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return path


def sample_rollouts(
    model_path: str,
    data: str | os.PathLike,
    num_samples: int,
    temperature: float = 1.0,
    *,
    max_image_size: int = 448,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    limit: int | None = None,
    labels: Sequence[str] | None = None,
    format_weight: float = 0.5,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sample ``num_samples`` answers per row of ``data`` from a model and score them like GRPO does.

    Returns rollout records in the module's format (``step`` 0), ready for :func:`build_pairs`.
    """
    import torch

    from vlm_rl.data.schema import load_jsonl
    from vlm_rl.eval.runner import (
        generate_answers,
        ground_truth_in_model_coords,
        instruction_for,
        load_for_eval,
    )
    from vlm_rl.rewards.detection import combined_reward

    if num_samples < 2:
        raise ValueError(f"num_samples: need at least 2 answers per prompt to rank, got {num_samples}")
    samples = load_jsonl(data, labels=labels).samples[:limit]
    model, processor, family = load_for_eval(model_path)
    instruction = instruction_for(samples, labels)
    torch.manual_seed(seed)
    repeated = [s for s in samples for _ in range(num_samples)]
    texts = generate_answers(
        model, processor, repeated, max_image_size=max_image_size, family=family, max_new_tokens=max_new_tokens,
        batch_size=batch_size, greedy=False, temperature=temperature, instruction=instruction, progress=progress,
    )
    records = []
    for sample, text in zip(repeated, texts):
        solution = ground_truth_in_model_coords(sample, max_image_size, family)
        scores = combined_reward([text], [solution], format_weight=format_weight)[0]
        records.append({
            "step": 0, "sample_id": sample.id, "image": sample.image, "prompt": instruction, "completion": text,
            "reward": scores["total"], "rewards": scores, "solution": solution,
        })
    return records


# --- pairs as the learners read them -------------------------------------------------------------
#: Fields of a pair row the learners need; extra fields (rewards, margin) are ignored.
PAIR_FIELDS = ("image", "prompt", "chosen", "rejected")


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
        for name in PAIR_FIELDS:
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
