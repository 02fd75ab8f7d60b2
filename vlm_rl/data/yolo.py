"""Import a YOLO-format dataset (one ``<stem>.txt`` of ``class cx cy w h`` per image) as Samples.

YOLO stores normalised centre/size boxes; they become pixel ``[x1, y1, x2, y2]`` using the image size
read from each image's header (so every image is opened once, header only).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from vlm_rl.data.schema import DatasetError, DetObject, Sample, image_size, validate_box

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_class_names(source: Sequence[str] | str | os.PathLike) -> list[str]:
    """Class names from a list, a ``data.yaml`` (``names:`` list or {index: name}) or a ``classes.txt``."""
    if not isinstance(source, (str, os.PathLike)):
        return [str(name) for name in source]
    path = Path(source)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise DatasetError(f"{path}: names: malformed YAML: {exc}") from exc
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            try:
                return [str(names[k]) for k in sorted(names, key=int)]
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"{path}: names: keys must be class indices, got {list(names)}") from exc
        if not isinstance(names, list) or not names:
            raise DatasetError(f"{path}: names: expected a non-empty list or mapping of class names")
        return [str(n) for n in names]
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: names: no class names in file")
    return names


def _parse_label_file(path: Path, names: list[str], width: int, height: int) -> list[DetObject]:
    objects = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{lineno}"
        if len(parts) != 5:
            raise DatasetError(f"{where}: row: expected 'class cx cy w h', got {line.strip()!r}")
        try:
            cls = int(parts[0])
        except ValueError as exc:
            raise DatasetError(f"{where}: class: expected an integer, got {parts[0]!r}") from exc
        if not 0 <= cls < len(names):
            raise DatasetError(f"{where}: class: {cls} out of range ({len(names)} classes)")
        try:
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError as exc:
            raise DatasetError(f"{where}: bbox: expected 4 numbers, got {' '.join(parts[1:])!r}") from exc
        box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        objects.append(DetObject(names[cls], validate_box(box, width, height, where, "bbox")))
    return objects


def load_yolo(
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    class_names: Sequence[str] | str | os.PathLike,
    skipped: list[str] | None = None,
) -> list[Sample]:
    """One Sample per image in ``images_dir`` (sorted); an image without a label file has no objects.

    ``skipped`` None: the first bad label line, unreadable image or label file without an image raises
    :class:`DatasetError`; a list: each message is appended to it and that image (or label file) left out.
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: images directory not found")
    if not labels_dir.is_dir():
        raise DatasetError(f"{labels_dir}: labels directory not found")
    names = read_class_names(class_names)

    def bad(exc: DatasetError) -> None:
        if skipped is None:
            raise exc
        skipped.append(str(exc))

    samples = []
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for image in images:
        label_file = labels_dir / f"{image.stem}.txt"
        try:
            width, height = image_size(image, str(image), verify=False)
            objects = _parse_label_file(label_file, names, width, height) if label_file.is_file() else []
        except DatasetError as exc:
            bad(DatasetError(f"{exc}; image {image.name} left out") if label_file.is_file() and
                str(exc).startswith(str(label_file)) else exc)
            continue
        samples.append(Sample(image.stem, str(image.resolve()), width, height, tuple(objects)))

    stems = {p.stem for p in images}
    names_file = Path(class_names).resolve() if isinstance(class_names, (str, os.PathLike)) else None
    for label_file in sorted(labels_dir.glob("*.txt")):
        if label_file.stem not in stems and label_file.name != "classes.txt" and label_file.resolve() != names_file:
            bad(DatasetError(f"{label_file}: image: no image for this label file ({label_file.stem}.* with "
                             f"{', '.join(IMAGE_SUFFIXES)} in {images_dir}); its boxes are not used"))
    if not samples:
        raise DatasetError(f"{images_dir}: no usable images ({', '.join(IMAGE_SUFFIXES)})")
    return samples
