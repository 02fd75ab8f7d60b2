"""Evaluate a model (full checkpoint or LoRA adapter) on a detection JSONL: answers → parsed boxes → metrics.

Ground truth goes through the same path as in training: resize to the model's grid
(``vlm_rl.data.resize``), then ``vlm_rl.models.coords.to_model_coords``; predictions are compared in the
model's answer space, so a Qwen2.5-VL (pixels) and a Qwen3-VL (0–1000) are scored alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm_rl.data.resize import load_resized, model_image_size, rescale_objects
from vlm_rl.data.schema import Sample, dataset_labels, load_jsonl
from vlm_rl.eval.metrics import evaluate_detections
from vlm_rl.rewards.parse import parse_detections


@dataclass
class EvalResult:
    """Metrics (``evaluate_detections`` dict) and one record per image (for a predictions JSONL)."""

    metrics: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    def write_records(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as fh:
            for record in self.records:
                fh.write(json.dumps(record) + "\n")
        return path


def ground_truth_in_model_coords(sample: Sample, max_image_size: int, family: str) -> list[dict[str, Any]]:
    """The sample's boxes as the model should answer them, without decoding the image."""
    from vlm_rl.models.coords import to_model_coords
    from vlm_rl.models.families import image_factor

    w, h = model_image_size(sample.width, sample.height, max_image_size, image_factor(family))
    return [
        {"label": o.label, "bbox_2d": list(to_model_coords(o.bbox_2d, w, h, family))}
        for o in rescale_objects(sample.objects, (sample.width, sample.height), (w, h))
    ]


def instruction_for(samples: Sequence[Sample], labels: Sequence[str] | None = None) -> str:
    """The detection instruction, naming ``labels`` or else the labels found in the data (as GRPO does)."""
    from vlm_rl.models.prompts import detection_instruction

    return detection_instruction(list(labels) if labels else dataset_labels(samples))


def load_for_eval(model_path: str | os.PathLike, device: str | None = None) -> tuple[Any, Any, str]:
    """(model in eval mode, processor, family) for a model dir, a TINY_MODELS name or a LoRA adapter dir.

    Any checkpoint vlm-rl writes is accepted: an adapter dir or LoRA checkpoint is merged into its base model
    (``vlm_rl.models.checkpoints``), so generation runs at full speed; its processor is taken from the adapter
    dir when saved there, else from the base.
    ``device`` None = CUDA in bfloat16 when available, else CPU in float32.
    """
    import torch

    from vlm_rl.models.families import model_family
    from vlm_rl.models.loading import load_model, load_processor, resolve_model_path

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    placement = {"device": device, "dtype": torch.bfloat16 if str(device).startswith("cuda") else torch.float32}

    resolved = resolve_model_path(model_path)  # a LoRA adapter/checkpoint: merged with its base, once
    model, processor = load_model(resolved, **placement), load_processor(resolved)
    return model.eval(), processor, model_family(model.config)


def generate_answers(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    *,
    max_image_size: int,
    family: str,
    max_new_tokens: int,
    batch_size: int,
    greedy: bool = True,
    temperature: float = 1.0,
    instruction: str | None = None,
    progress: bool = True,
) -> list[str]:
    """One decoded answer per sample (greedy, or sampled at ``temperature``), in sample order."""
    import torch

    from vlm_rl.models.families import image_factor
    from vlm_rl.models.lora_merge import merged_lora
    from vlm_rl.models.prompts import encode_prompts, end_token_ids

    instruction = instruction if instruction is not None else instruction_for(samples)
    factor = image_factor(family)
    device = next(model.parameters()).device
    tokenizer = getattr(processor, "tokenizer", processor)
    sampling = {} if greedy else {"temperature": temperature, "top_p": 1.0}
    answers: list[str] = []
    with _progress(progress, len(samples), "generating") as advance, torch.no_grad(), merged_lora(model):
        for start in range(0, len(samples), max(1, batch_size)):
            batch = samples[start : start + max(1, batch_size)]
            images = [load_resized(s, max_image_size, factor)[0] for s in batch]
            enc = encode_prompts(processor, images, instruction).to(device)
            out = model.generate(
                **enc, do_sample=not greedy, max_new_tokens=max_new_tokens, eos_token_id=end_token_ids(model, tokenizer),
                pad_token_id=tokenizer.pad_token_id, **sampling,
            )
            answers.extend(tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
            advance(len(batch))
    return answers


def run_evaluation(
    model_path: str | os.PathLike,
    val_data: str | os.PathLike,
    *,
    max_image_size: int = 448,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    limit: int | None = None,
    labels: Sequence[str] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Greedy answers of the model for (the first ``limit``) rows of ``val_data``, scored."""
    samples = load_jsonl(val_data, labels=labels).samples
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise ValueError(f"{val_data}: no samples to evaluate")
    model, processor, family = load_for_eval(model_path)
    result = evaluate_loaded(
        model, processor, family, samples, max_image_size=max_image_size, max_new_tokens=max_new_tokens,
        batch_size=batch_size, instruction=instruction_for(samples, labels), progress=progress,
    )
    result.metrics.update({"model_path": str(model_path), "model_family": family})
    return result


def evaluate_loaded(
    model: Any,
    processor: Any,
    family: str,
    samples: Sequence[Sample],
    *,
    max_image_size: int,
    max_new_tokens: int,
    batch_size: int,
    instruction: str,
    progress: bool = False,
) -> EvalResult:
    """Greedy answers of an already loaded model (e.g. a rollout actor's), parsed and scored."""
    answers = generate_answers(
        model, processor, samples, max_image_size=max_image_size, family=family, max_new_tokens=max_new_tokens,
        batch_size=batch_size, instruction=instruction, progress=progress,
    )
    gts = [ground_truth_in_model_coords(s, max_image_size, family) for s in samples]
    parsed = [parse_detections(a) for a in answers]
    metrics = evaluate_detections(parsed, gts)
    records = [
        {"id": s.id, "image": s.image, "answer": a, "parsed": p, "gt": g}
        for s, a, p, g in zip(samples, answers, parsed, gts)
    ]
    return EvalResult(metrics, records)


def evaluate_model(
    model_path: str | os.PathLike,
    val_data: str | os.PathLike,
    *,
    max_image_size: int = 448,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    limit: int | None = None,
) -> dict[str, Any]:
    """The metrics dict of :func:`run_evaluation` (use that one to keep per-sample records)."""
    return run_evaluation(
        model_path, val_data, max_image_size=max_image_size, max_new_tokens=max_new_tokens,
        batch_size=batch_size, limit=limit,
    ).metrics


class _progress:
    """A rich progress bar (or nothing) as a context manager yielding ``advance(n)``."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.enabled, self.total, self.description = enabled, total, description
        self._bar: Any = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import Progress

        self._bar = Progress(transient=True)
        self._bar.start()
        task = self._bar.add_task(self.description, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
