"""Per-sample work of `vlm-rl preprocess`: resize one image to the model size and rescale its boxes.

Kept free of process pools and Ray so it runs the same way in a ``ProcessPoolExecutor``, in a Ray Data
``map`` and in a test. Items and results are plain dicts because both executors pickle them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vlm_rl.data.resize import load_resized
from vlm_rl.data.schema import DatasetError, Sample, sample_from_dict

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def output_name(index: int, sample: Sample) -> str:
    """A unique, filesystem-safe file name; JPEG sources stay JPEG (smaller), everything else PNG."""
    suffix = ".jpg" if Path(sample.image).suffix.lower() in (".jpg", ".jpeg") else ".png"
    return f"{index:06d}-{_UNSAFE.sub('_', sample.id)[:80]}{suffix}"


def make_item(index: int, sample: Sample, images_dir: Path, max_image_size: int, factor: int) -> dict[str, Any]:
    return {
        "index": index,
        "sample": sample.to_dict(),
        "output": str(Path(images_dir) / output_name(index, sample)),
        "max_image_size": max_image_size,
        "factor": factor,
    }


def preprocess_item(item: dict[str, Any]) -> dict[str, Any]:
    """Resize and save one image; ``{"index", "ok": True, "sample": dict}`` or ``{"index", "ok": False, "error"}``.

    A missing or corrupt image is a result, not an exception: one bad file must not stop a million-image job.
    """
    sample = sample_from_dict(item["sample"])
    try:
        image, objects = load_resized(sample, item["max_image_size"], item["factor"])
        output = Path(item["output"])
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix == ".jpg":
            image.save(output, quality=95)
        else:
            image.save(output)
    except (DatasetError, OSError) as exc:
        return {"index": item["index"], "ok": False, "id": sample.id, "image": sample.image, "error": str(exc)}
    resized = Sample(sample.id, str(output.resolve()), image.width, image.height, tuple(objects))
    return {"index": item["index"], "ok": True, "sample": resized.to_dict()}


def preprocess_json_row(row: dict[str, str]) -> dict[str, str]:
    """:func:`preprocess_item` over ``{"item": json}`` rows: Ray Data stores rows as Arrow tables, and
    nested, sometimes-empty object lists do not unify across blocks; a JSON string always does."""
    return {"result": json.dumps(preprocess_item(json.loads(row["item"])))}
