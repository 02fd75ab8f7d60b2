"""Resize images to the model's input grid and rescale boxes with them.

Qwen vision encoders cut the image into ``patch_size * merge_size`` squares (32 px for Qwen3-VL, 28 for
Qwen2.5-VL). Resizing once, here, to a size that is already a multiple of that factor means the processor
leaves the image alone, so the boxes we rescale are exactly the pixels the model sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from PIL import Image

from vlm_rl.data.schema import DatasetError, DetObject, Sample


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def model_image_size(width: int, height: int, max_image_size: int, factor: int) -> tuple[int, int]:
    """Target (w, h): longest side <= max_image_size, both sides multiples of ``factor`` (>= factor).

    Images are never enlarged beyond their original size, except up to one ``factor`` for tiny ones.

    >>> model_image_size(640, 480, 448, 32)
    (448, 352)
    >>> model_image_size(100, 50, 448, 32)
    (96, 32)
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max_image_size <= 0 or factor <= 0:
        raise ValueError(f"max_image_size and factor must be positive, got {max_image_size}, {factor}")

    def side(original: int, scale: float) -> int:
        cap = max(1, min(original, max_image_size) // factor)
        return max(1, min(_round_half_up(original * scale / factor), cap)) * factor

    # The long side is fitted first and the short one scaled by what the long side really got: capping the
    # long side alone (e.g. 9.8 cells floored to 9) would otherwise distort the aspect by up to a cell.
    long_side, short_side = max(width, height), min(width, height)
    fitted_long = side(long_side, min(1.0, max_image_size / long_side))
    fitted_short = side(short_side, fitted_long / long_side)
    return (fitted_long, fitted_short) if width >= height else (fitted_short, fitted_long)


def rescale_objects(
    objects: Iterable[DetObject], src_wh: tuple[int, int], dst_wh: tuple[int, int]
) -> list[DetObject]:
    """Scale boxes from an image of ``src_wh`` to one of ``dst_wh`` (x and y independently)."""
    (sw, sh), (dw, dh) = src_wh, dst_wh
    # multiply before dividing: one rounding, so 48 px of 480 -> 352 is exactly 35.2
    return [
        DetObject(o.label, (o.bbox_2d[0] * dw / sw, o.bbox_2d[1] * dh / sh, o.bbox_2d[2] * dw / sw, o.bbox_2d[3] * dh / sh))
        for o in objects
    ]


def open_rgb(path: str) -> Image.Image:
    """Decode an image fully as RGB; DatasetError naming the file when it is missing or corrupt."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() decodes the whole file: truncated data fails here
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: image: file not found") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DatasetError(f"{path}: image: cannot decode image: {exc}") from exc


def load_resized(sample: Sample, max_image_size: int, factor: int) -> tuple[Image.Image, list[DetObject]]:
    """The sample's image at the model size (RGB) and its boxes in pixels of that image.

    Boxes are in the coordinates of ``sample.width x sample.height``; the decoded image is resized from
    whatever size it really has, so both end up on the same grid.
    """
    image = open_rgb(sample.image)
    dst = model_image_size(sample.width, sample.height, max_image_size, factor)
    if image.size != dst:
        image = image.resize(dst, Image.Resampling.BICUBIC)
    return image, rescale_objects(sample.objects, (sample.width, sample.height), dst)
