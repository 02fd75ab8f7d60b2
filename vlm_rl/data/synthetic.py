"""A synthetic traffic-sign dataset drawn with PIL: offline, deterministic, with exact boxes.

It exists so the demo and the tests can train and evaluate without downloads. Signs are drawn to look
like the real ones (shape + colour + a marking), on sky/road/grass backgrounds with noise, so that a
model has to look at shape and colour rather than at one constant pixel. Boxes are tight by
construction: each shape is drawn to touch all four sides of its box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlm_rl.data.schema import DetObject, Sample, write_jsonl

LABELS = ("stop_sign", "yield_sign", "speed_limit_sign", "no_entry_sign", "traffic_light")

RED = (200, 24, 32)
WHITE = (245, 245, 245)
BLACK = (20, 20, 20)
EMPTY_FRACTION = 0.1

_SPLIT_IDS = {"train": 0, "val": 1}


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=max(6, size))
    except TypeError:  # Pillow < 10.1 has no scalable default font
        return ImageFont.load_default()


def _text_centered(draw: ImageDraw.ImageDraw, cx: float, cy: float, text: str, size: int, fill) -> None:
    draw.text((cx, cy), text, fill=fill, font=_font(size), anchor="mm")


def _draw_stop(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1 - 1, y2 - y1 - 1
    a, b = w * 0.2929, h * 0.2929  # octagon corner cut: 1 - 1/sqrt(2)
    pts = [
        (x1 + a, y1), (x1 + w - a, y1), (x1 + w, y1 + b), (x1 + w, y1 + h - b),
        (x1 + w - a, y1 + h), (x1 + a, y1 + h), (x1, y1 + h - b), (x1, y1 + b),
    ]
    draw.polygon(pts, fill=RED, outline=WHITE, width=max(1, w // 16))
    cx, cy = x1 + w / 2, y1 + h / 2
    if w >= 28:
        _text_centered(draw, cx, cy, "STOP", int(w * 0.3), WHITE)
    else:
        draw.rectangle([x1 + w * 0.22, cy - h * 0.08, x1 + w * 0.78, cy + h * 0.08], fill=WHITE)


def _draw_yield(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1 - 1, y2 - y1 - 1
    draw.polygon([(x1, y1), (x1 + w, y1), (x1 + w / 2, y1 + h)], fill=RED)
    t = 0.2  # inner white triangle, shrunk towards the centroid
    gx, gy = x1 + w / 2, y1 + h / 3
    inner = [(gx + (px - gx) * (1 - 2 * t), gy + (py - gy) * (1 - 2 * t)) for px, py in
             [(x1, y1), (x1 + w, y1), (x1 + w / 2, y1 + h)]]
    draw.polygon(inner, fill=WHITE)


def _draw_speed(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1 - 1, y2 - y1 - 1
    ring = max(2, int(w * 0.12))
    draw.ellipse([x1, y1, x1 + w, y1 + h], fill=RED)
    draw.ellipse([x1 + ring, y1 + ring, x1 + w - ring, y1 + h - ring], fill=WHITE)
    number = str(int(rng.choice([20, 30, 50, 60, 70, 80, 90])))
    _text_centered(draw, x1 + w / 2, y1 + h / 2, number, int(w * 0.42), BLACK)


def _draw_no_entry(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1 - 1, y2 - y1 - 1
    draw.ellipse([x1, y1, x1 + w, y1 + h], fill=RED)
    cy = y1 + h / 2
    draw.rectangle([x1 + w * 0.18, cy - h * 0.1, x1 + w * 0.82, cy + h * 0.1], fill=WHITE)


def _draw_light(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1 - 1, y2 - y1 - 1
    draw.rectangle([x1, y1, x1 + w, y1 + h], fill=(30, 32, 30))
    lit = int(rng.integers(0, 3))
    on = [(255, 40, 30), (255, 190, 20), (40, 230, 90)]
    off = [(70, 20, 20), (70, 60, 15), (15, 60, 30)]
    cell = h / 3
    r = min(w * 0.36, cell * 0.38)
    for i in range(3):
        cx, cy = x1 + w / 2, y1 + cell * (i + 0.5)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=on[i] if i == lit else off[i])


_DRAWERS = {
    "stop_sign": _draw_stop,
    "yield_sign": _draw_yield,
    "speed_limit_sign": _draw_speed,
    "no_entry_sign": _draw_no_entry,
    "traffic_light": _draw_light,
}


def draw_object(image: Image.Image, label: str, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    """Draw ``label`` so that its painted pixels span exactly ``box`` = (x1, y1, x2, y2), x2/y2 exclusive."""
    _DRAWERS[label](ImageDraw.Draw(image), box, rng)


def _background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Sky over road, sky over grass, or a plain noisy wall: gradients + noise, never one flat colour."""
    kind = int(rng.integers(0, 3))
    ys = np.linspace(0.0, 1.0, height)[:, None, None]
    horizon = rng.uniform(0.35, 0.7)
    sky_top = np.array([rng.uniform(60, 120), rng.uniform(120, 170), rng.uniform(190, 250)])
    sky_bottom = np.array([rng.uniform(170, 230), rng.uniform(190, 235), rng.uniform(220, 255)])
    sky = sky_top + (sky_bottom - sky_top) * (ys / horizon)
    if kind == 0:  # road
        ground = np.array([1, 1, 1]) * (rng.uniform(70, 110) + 30 * (ys - horizon))
    elif kind == 1:  # grass
        ground = np.array([rng.uniform(40, 90), rng.uniform(110, 160), rng.uniform(30, 70)]) * (0.8 + 0.4 * ys)
    else:  # wall: one tinted gradient over the whole picture
        base = rng.uniform(90, 200, size=3)
        sky = ground = base * (0.75 + 0.5 * ys)
    pixels = np.where(ys < horizon, sky, ground) * np.ones((1, width, 1))
    pixels = pixels + rng.normal(0.0, rng.uniform(3, 14), size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if kind == 0:  # dashed lane marking
        draw = ImageDraw.Draw(image)
        y = int(height * (horizon + (1 - horizon) * 0.6))
        for x in range(int(rng.integers(0, 30)), width, 40):
            draw.rectangle([x, y, x + 18, y + 2], fill=(230, 230, 210))
    return image


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]], margin: int = 2) -> bool:
    return any(
        box[0] < o[2] + margin and o[0] < box[2] + margin and box[1] < o[3] + margin and o[1] < box[3] + margin
        for o in others
    )


def _place(label: str, width: int, height: int, taken: list, rng: np.random.Generator,
           size_range: tuple[float, float] = (0.0, 0.45)):
    """A free box for ``label`` (16 px up to ``size_range`` of the short side), or None after a few tries."""
    short = min(width, height)
    low = max(16, int(short * size_range[0]))
    for _ in range(20):
        size = int(rng.integers(low, max(low + 1, int(short * size_range[1]))))
        if label == "traffic_light":
            w, h = max(8, int(size * 0.42)), size
        elif label == "yield_sign":
            w, h = size, max(12, int(size * 0.87))
        else:
            w = h = size
        if w >= width or h >= height:
            continue
        x1, y1 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = (x1, y1, x1 + w, y1 + h)
        if not _overlaps(box, taken):
            return box
    return None


def make_image(rng: np.random.Generator, width: int, height: int, max_objects: int = 3, *,
               empty_fraction: float = EMPTY_FRACTION, size_range: tuple[float, float] = (0.0, 0.45),
               labels: tuple[str, ...] = LABELS):
    """One picture and its objects (boxes in pixels, tight)."""
    image = _background(width, height, rng)
    count = 0 if rng.random() < empty_fraction or max_objects == 0 else int(rng.integers(1, max_objects + 1))
    taken: list[tuple[int, int, int, int]] = []
    objects = []
    for _ in range(count):
        label = labels[int(rng.integers(0, len(labels)))]
        box = _place(label, width, height, taken, rng, size_range)
        if box is None:
            continue
        draw_object(image, label, box, rng)
        taken.append(box)
        objects.append(DetObject(label, tuple(float(v) for v in box)))
    return image, objects


def _make_split(out_dir: Path, split: str, n: int, seed: int, min_size: int, max_size: int, max_objects: int,
                **image_kwargs):
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
        width, height = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        image, objects = make_image(rng, width, height, max_objects, **image_kwargs)
        path = images_dir / f"{split}_{i:05d}.png"
        image.save(path)
        samples.append(Sample(f"{split}_{i:05d}", str(path.resolve()), width, height, tuple(objects)))
    return write_jsonl(samples, out_dir / f"{split}.jsonl")


def make_synthetic_dataset(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    seed: int = 0,
    min_size: int = 160,
    max_size: int = 320,
    max_objects: int = 3,
    *,
    empty_fraction: float = EMPTY_FRACTION,
    object_size: tuple[float, float] = (0.0, 0.45),
    labels: tuple[str, ...] = LABELS,
) -> tuple[Path, Path]:
    """Write ``images/*.png`` + ``train.jsonl`` + ``val.jsonl`` under ``out_dir``; same seed, same bytes.

    ``max_objects=1``, ``empty_fraction=0``, large objects (``object_size``: smallest and largest side as
    fractions of the image's short side) and few ``labels`` make an easy task a tiny model learns in
    minutes (the demo). Images without objects are answered by ``[]``, which a tiny model learns first and then
    says everywhere: an easy task has none.
    """
    if min_size < 48 or max_size < min_size:
        raise ValueError(f"need 48 <= min_size <= max_size, got {min_size}, {max_size}")
    if n_train < 0 or n_val < 0 or max_objects < 0:
        raise ValueError("n_train, n_val and max_objects must be >= 0")
    if not 0 <= empty_fraction <= 1:
        raise ValueError(f"empty_fraction: must be in [0, 1], got {empty_fraction}")
    if not 0 <= object_size[0] < object_size[1] <= 0.95:
        raise ValueError(f"object_size: need 0 <= smallest < largest <= 0.95, got {object_size}")
    unknown = sorted(set(labels) - set(LABELS))
    if not labels or unknown:
        raise ValueError(f"labels: need a non-empty subset of {', '.join(LABELS)}; unknown: {unknown}")
    out_dir = Path(out_dir)
    kwargs = dict(empty_fraction=empty_fraction, size_range=tuple(object_size), labels=tuple(labels))
    train = _make_split(out_dir, "train", n_train, seed, min_size, max_size, max_objects, **kwargs)
    val = _make_split(out_dir, "val", n_val, seed, min_size, max_size, max_objects, **kwargs)
    return train, val
