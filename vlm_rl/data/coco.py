"""Import COCO detection annotations (``instances_*.json``) as Samples.

COCO boxes are ``[x, y, width, height]``; they become ``[x1, y1, x2, y2]`` here, the one box format the
rest of vlm-rl knows. Crowd regions (``iscrowd=1``) are not objects a model should name, so they are dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlm_rl.data.schema import DatasetError, DetObject, Sample, validate_box, validate_label


def _entry(container: Any, key: str, path: Path) -> list:
    value = container.get(key) if isinstance(container, dict) else None
    if not isinstance(value, list):
        raise DatasetError(f"{path}: {key}: expected a list")
    return value


def _number_or_error(value: Any, where: str, field_name: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DatasetError(f"{where}: {field_name}: expected an id, got {value!r}")
    return value


def load_coco(json_path: str | os.PathLike, images_dir: str | os.PathLike | None = None,
              skipped: list[str] | None = None) -> list[Sample]:
    """Samples for every image in a COCO file (images without annotations keep empty ``objects``).

    ``images_dir`` defaults to the JSON's folder; ``file_name`` is resolved against it.
    Errors name ``file: section[index].field``. ``skipped`` None: the first bad entry raises
    :class:`DatasetError`; a list: every bad entry's message is appended to it and the entry left out, and an
    image with a bad annotation is left out too (its boxes would be incomplete). A file that is missing, not
    JSON or without its sections always raises.
    """
    path = Path(json_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: json: malformed JSON ({exc.msg} at column {exc.colno})") from exc
    root = Path(images_dir) if images_dir is not None else path.resolve().parent

    def bad(exc: DatasetError) -> None:
        if skipped is None:
            raise exc
        skipped.append(str(exc))

    categories: dict[Any, str] = {}
    for i, cat in enumerate(_entry(data, "categories", path)):
        where = f"{path}: categories[{i}]"
        try:
            if not isinstance(cat, dict):
                raise DatasetError(f"{where}: category: expected an object")
            cat_id = _number_or_error(cat.get("id"), where, "id")
            categories[cat_id] = validate_label(cat.get("name"), None, where, "name")
        except DatasetError as exc:
            bad(exc)

    images: dict[Any, dict] = {}
    broken: set = set()  # ids of images left out: their annotations are not reported again
    for i, img in enumerate(_entry(data, "images", path)):
        where = f"{path}: images[{i}]"
        try:
            if not isinstance(img, dict):
                raise DatasetError(f"{where}: image: expected an object")
            image_id = _number_or_error(img.get("id"), where, "id")
            if image_id in images:
                raise DatasetError(f"{where}: id: duplicate image id {image_id!r}")
            name = img.get("file_name")
            if not isinstance(name, str) or not name:
                broken.add(image_id)
                raise DatasetError(f"{where}: file_name: missing or not a string")
            for key in ("width", "height"):
                value = img.get(key)
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    broken.add(image_id)
                    raise DatasetError(f"{where}: {key}: expected a positive integer, got {value!r}")
        except DatasetError as exc:
            bad(exc)
            continue
        images[image_id] = {"info": img, "objects": [], "index": i}

    for i, ann in enumerate(_entry(data, "annotations", path) if "annotations" in data else []):
        where = f"{path}: annotations[{i}]"
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        try:
            if not isinstance(ann, dict):
                raise DatasetError(f"{where}: annotation: expected an object")
            if ann.get("iscrowd", 0) or image_id in broken:
                continue
            entry = images.get(image_id)
            if entry is None:
                raise DatasetError(f"{where}: image_id: unknown image id {image_id!r}")
            label = categories.get(ann.get("category_id"))
            if label is None:
                raise DatasetError(f"{where}: category_id: unknown category id {ann.get('category_id')!r}")
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox
            ):
                raise DatasetError(f"{where}: bbox: expected 4 numbers [x, y, width, height], got {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            info = entry["info"]
            box = validate_box([x, y, x + w, y + h], info["width"], info["height"], where, "bbox")
        except DatasetError as exc:
            entry = images.pop(image_id, None) if isinstance(ann, dict) else None
            if entry is not None:  # an image with a bad box would teach the model to miss that object
                broken.add(image_id)
                exc = DatasetError(f"{exc}; image {image_id!r} ({entry['info']['file_name']}) left out")
            bad(exc)
            continue
        entry["objects"].append(DetObject(label, box))

    return [
        Sample(
            id=str(image_id),
            image=os.path.normpath((root / entry["info"]["file_name"]).resolve()),
            width=entry["info"]["width"],
            height=entry["info"]["height"],
            objects=tuple(entry["objects"]),
        )
        for image_id, entry in images.items()
    ]
