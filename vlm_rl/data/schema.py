"""The dataset row format, its validation, and JSONL reading/writing.

A row is ``{"image": path, "objects": [{"label": str, "bbox_2d": [x1, y1, x2, y2]}], "id"?, "width"?,
"height"?}`` with boxes in pixels of the original image. Everything is checked here, once, so that a bad
row is reported as ``file:line: field: problem`` before any GPU is taken, rather than as a shape error
deep inside a training step.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

#: Boxes that stick out of the image by at most this many pixels are clipped, not rejected
#: (annotation tools often write x2 == width + 0.5 or a -0.3 from rounding).
BORDER_TOLERANCE_PX = 1.0

OnError = Literal["raise", "skip"]


class DatasetError(ValueError):
    """Bad input data; the message names the file, line (or entry) and field."""


@dataclass(frozen=True)
class DetObject:
    """One labelled box, ``bbox_2d = (x1, y1, x2, y2)`` in pixels."""

    label: str
    bbox_2d: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "bbox_2d": [float(v) for v in self.bbox_2d]}


@dataclass(frozen=True)
class Sample:
    """One image and its ground truth; ``image`` is an absolute path."""

    id: str
    image: str
    width: int
    height: int
    objects: tuple[DetObject, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(o.label for o in self.objects)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (Ray Data items, JSON); the inverse of :func:`sample_from_dict`."""
        return {
            "id": self.id,
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "objects": [o.to_dict() for o in self.objects],
        }


def sample_from_dict(row: dict[str, Any]) -> Sample:
    """Rebuild a Sample from :meth:`Sample.to_dict` output (trusted input, no validation)."""
    return Sample(
        id=str(row["id"]),
        image=str(row["image"]),
        width=int(row["width"]),
        height=int(row["height"]),
        objects=tuple(DetObject(o["label"], tuple(float(v) for v in o["bbox_2d"])) for o in row["objects"]),
    )


@dataclass
class LoadResult:
    samples: list[Sample]
    skipped: list[str] = field(default_factory=list)


#: ``<where>: <field>: <message>``: the field after a line number (JSONL, YOLO), an entry index (COCO) or a path.
_FIELD_AFTER = (re.compile(r":\d+: ([A-Za-z_][\w.\[\]]*): "), re.compile(r"\]: ([A-Za-z_][\w.\[\]]*): "),
                re.compile(r"^\S*?: ([A-Za-z_][\w.\[\]]*): "))


def skip_reason(message: str) -> str:
    """The field a DatasetError message names, as a reason to count skipped rows by.

    >>> skip_reason("data/train.jsonl:6: objects[0].bbox_2d: degenerate box")
    'bbox'
    >>> skip_reason("ann.json: annotations[3]: category_id: unknown category id 4")
    'category_id'
    >>> skip_reason("labels/x.txt: image: no image for this label file")
    'image'
    """
    for pattern in _FIELD_AFTER:
        match = pattern.search(message)
        if match:
            field_name = re.sub(r"\[\d+\]", "", match.group(1)).split(".")[-1]
            return "bbox" if field_name == "bbox_2d" else field_name
    return "other"


def count_reasons(messages: Iterable[str]) -> dict[str, int]:
    """{reason: count}, most frequent first."""
    counts: dict[str, int] = {}
    for message in messages:
        reason = skip_reason(message)
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def dataset_labels(samples: Iterable[Sample]) -> list[str]:
    """Sorted distinct labels (used when the config gives no label list)."""
    return sorted({o.label for s in samples for o in s.objects})


def validate_box(
    bbox: Any, width: int, height: int, where: str, field_name: str = "bbox_2d"
) -> tuple[float, float, float, float]:
    """Check a pixel ``[x1, y1, x2, y2]`` against the image size; clip within BORDER_TOLERANCE_PX.

    >>> validate_box([-0.5, 0, 10, 10.4], 10, 10, "f:1")
    (0.0, 0.0, 10.0, 10.0)
    """
    prefix = f"{where}: {field_name}"
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise DatasetError(f"{prefix}: expected 4 numbers [x1, y1, x2, y2], got {bbox!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        raise DatasetError(f"{prefix}: expected 4 numbers [x1, y1, x2, y2], got {bbox!r}")
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise DatasetError(f"{prefix}: non-finite coordinate in {bbox!r}")
    if x2 <= x1 or y2 <= y1:
        raise DatasetError(f"{prefix}: degenerate box {bbox!r} (needs x2 > x1 and y2 > y1)")
    tol = BORDER_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        raise DatasetError(f"{prefix}: box {bbox!r} is outside the {width}x{height} image")
    x1, x2 = min(max(x1, 0.0), float(width)), min(max(x2, 0.0), float(width))
    y1, y2 = min(max(y1, 0.0), float(height)), min(max(y2, 0.0), float(height))
    if x2 <= x1 or y2 <= y1:
        raise DatasetError(f"{prefix}: box {bbox!r} is empty once clipped to the {width}x{height} image")
    return (x1, y1, x2, y2)


def validate_label(label: Any, labels: Sequence[str] | None, where: str, field_name: str = "label") -> str:
    if not isinstance(label, str) or not label.strip():
        raise DatasetError(f"{where}: {field_name}: expected a non-empty string, got {label!r}")
    if labels is not None and label not in labels:
        raise DatasetError(f"{where}: {field_name}: unknown label {label!r} (allowed: {', '.join(labels)})")
    return label


def image_size(path: str | os.PathLike, where: str, *, verify: bool = True) -> tuple[int, int]:
    """(width, height) from the image header; with ``verify``, PIL's integrity check too."""
    if not Path(path).is_file():
        raise DatasetError(f"{where}: image: file not found: {path}")
    try:
        with Image.open(path) as img:
            size = img.size
            if verify:
                img.verify()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        raise DatasetError(f"{where}: image: cannot read image {path}: {exc}") from exc
    return int(size[0]), int(size[1])


def _positive_int(value: Any, where: str, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise DatasetError(f"{where}: {field_name}: expected a positive integer, got {value!r}")
    return int(value)


def parse_row(
    row: Any,
    *,
    base_dir: Path,
    where: str,
    default_id: str,
    labels: Sequence[str] | None = None,
    check_images: bool = True,
) -> Sample:
    """Validate one decoded JSONL row into a Sample; raise DatasetError naming ``where`` and the field."""
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: row: expected a JSON object, got {type(row).__name__}")
    image = row.get("image", row.get("image_path"))
    if not isinstance(image, str) or not image:
        raise DatasetError(f"{where}: image: missing or not a string")
    image_path = Path(image).expanduser()
    if not image_path.is_absolute():
        image_path = base_dir / image_path
    image_path = Path(os.path.normpath(image_path))

    width, height = row.get("width"), row.get("height")
    if width is not None:
        width = _positive_int(width, where, "width")
    if height is not None:
        height = _positive_int(height, where, "height")
    if check_images or width is None or height is None:
        real_w, real_h = image_size(image_path, where, verify=check_images)
        if width is not None and width != real_w:
            raise DatasetError(f"{where}: width: {width} but the image is {real_w} px wide")
        if height is not None and height != real_h:
            raise DatasetError(f"{where}: height: {height} but the image is {real_h} px high")
        width, height = real_w, real_h

    key = next((k for k in ("objects", "boxes", "annotations") if k in row), "objects")
    raw_objects = row.get(key, [])
    if raw_objects is None:
        raw_objects = []
    if not isinstance(raw_objects, list):
        raise DatasetError(f"{where}: {key}: expected a list, got {type(raw_objects).__name__}")
    objects = []
    for i, obj in enumerate(raw_objects):
        obj_field = f"{key}[{i}]"
        if not isinstance(obj, dict):
            raise DatasetError(f"{where}: {obj_field}: expected an object with label and bbox_2d")
        label = validate_label(obj.get("label"), labels, where, f"{obj_field}.label")
        box_key = "bbox_2d" if "bbox_2d" in obj or "bbox" not in obj else "bbox"
        box = validate_box(obj.get(box_key), width, height, where, f"{obj_field}.{box_key}")
        objects.append(DetObject(label, box))

    sample_id = row.get("id", default_id)
    if not isinstance(sample_id, (str, int)) or isinstance(sample_id, bool):
        raise DatasetError(f"{where}: id: expected a string or integer, got {sample_id!r}")
    return Sample(str(sample_id), str(image_path), width, height, tuple(objects))


def load_jsonl(
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    on_error: OnError = "raise",
    check_images: bool = True,
) -> LoadResult:
    """Read and validate a detection JSONL.

    ``on_error="raise"`` stops at the first bad row; ``"skip"`` drops bad rows and lists their messages in
    ``LoadResult.skipped``. An empty result is always an error (training on nothing fails much later and
    much less clearly). ``check_images=False`` skips the existence/integrity check of images whose width
    and height are given (fast loading of trusted, pre-processed data).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error: expected 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    base_dir = path.resolve().parent
    result = LoadResult(samples=[])
    seen_ids: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                try:
                    row = json.loads(line.rstrip("\r\n"))  # with the newline, an error at the line's end
                    # is reported at "line 2 column 1"
                except json.JSONDecodeError as exc:
                    # json's msg may end in "at" itself ("Unterminated string starting at")
                    at = " " if exc.msg.endswith(" at") else " at "
                    raise DatasetError(f"{where}: json: malformed JSON ({exc.msg}{at}column {exc.colno})") from exc
                sample = parse_row(
                    row,
                    base_dir=base_dir,
                    where=where,
                    default_id=f"{path.stem}-{lineno}",
                    labels=labels,
                    check_images=check_images,
                )
                if sample.id in seen_ids:
                    raise DatasetError(f"{where}: id: duplicate id {sample.id!r} (first on line {seen_ids[sample.id]})")
            except DatasetError as exc:
                if on_error == "raise":
                    raise
                result.skipped.append(str(exc))
                continue
            seen_ids[sample.id] = lineno
            result.samples.append(sample)
    if not result.samples:
        detail = f" ({len(result.skipped)} bad rows skipped; first: {result.skipped[0]})" if result.skipped else ""
        raise DatasetError(f"{path}: dataset is empty: no valid samples{detail}")
    return result


def sample_to_row(sample: Sample, base_dir: Path) -> dict[str, Any]:
    """JSON row for ``sample``; the image path is made relative to ``base_dir`` when it lies inside it."""
    row = sample.to_dict()
    image = Path(sample.image)
    try:
        row["image"] = image.resolve().relative_to(base_dir.resolve()).as_posix()
    except ValueError:
        row["image"] = str(image.resolve())
    return row


def write_jsonl(samples: Iterable[Sample], path: str | os.PathLike) -> Path:
    """Write samples atomically (temp file + rename): a crash never leaves a half-written dataset."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base_dir = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=base_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for sample in samples:
                fh.write(json.dumps(sample_to_row(sample, base_dir)) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
