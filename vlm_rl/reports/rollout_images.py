"""Rollouts drawn as boxes on their images, so a reward curve can be checked by eye in MLflow.

Ground truth is green (labelled "GT", "missed" when no prediction matched it); the model's predictions
are drawn in another colour with their label: orange with the IoU when matched to a ground-truth box
(IoU ≥ threshold, same label), red when not. A caption strip under the image carries the title, the
reward, a legend, and what the model wrote when no box could be parsed from it, wrapped to the image's
width (:func:`caption_lines`), so nothing is cut at the tile's edge. Boxes are expected in
pixels of the image passed in. :func:`layout_detections` is the drawing data (what goes where, in which
colour, with which text), so tests and other renderers can read it without looking at pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

GT_COLOR = (40, 200, 60)
MATCH_COLOR = (255, 150, 0)
MISS_COLOR = (230, 30, 30)
CAPTION_BG = (25, 25, 25)
#: Left and right margin of the caption text, in pixels.
CAPTION_MARGIN = 4
#: The model's unparsable answer is shown on at most this many caption lines.
ANSWER_LINES = 3


def _box(obj: Any) -> tuple[str, tuple[float, float, float, float]]:
    """(label, bbox) from a DetObject, a {"label", "bbox_2d"} dict or a (label, bbox) pair."""
    if isinstance(obj, Mapping):
        label, bbox = obj.get("label", "?"), obj.get("bbox_2d")
    elif isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str):
        label, bbox = obj
    else:
        label, bbox = getattr(obj, "label", "?"), getattr(obj, "bbox_2d", None)
    if bbox is None or len(bbox) != 4:
        raise ValueError(f"bbox_2d: expected [x1, y1, x2, y2], got {bbox!r} in {obj!r}")
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return str(label), (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(
    gt: Sequence[tuple[str, Sequence[float]]], pred: Sequence[tuple[str, Sequence[float]]], iou_threshold: float = 0.5
) -> dict[int, tuple[int, float]]:
    """Greedy one-to-one matching by IoU (labels must agree): ``{pred_index: (gt_index, iou)}``."""
    pairs = sorted(
        ((_iou(p[1], g[1]), pi, gi) for pi, p in enumerate(pred) for gi, g in enumerate(gt) if p[0] == g[0]),
        reverse=True,
    )
    matched: dict[int, tuple[int, float]] = {}
    used_gt: set[int] = set()
    for iou, pi, gi in pairs:
        if iou < iou_threshold:
            break
        if pi not in matched and gi not in used_gt:
            matched[pi] = (gi, iou)
            used_gt.add(gi)
    return matched


@dataclass(frozen=True)
class Mark:
    """One box to draw: ``kind`` "gt" or "pred", ``status`` matched / missed (gt) / wrong (pred)."""

    kind: str
    label: str
    box: tuple[float, float, float, float]
    status: str
    color: tuple[int, int, int]
    text: str


def layout_detections(gt_objects: Sequence[Any], pred_objects: Sequence[Any], iou_threshold: float = 0.5
                      ) -> list[Mark]:
    """The drawing data of one rollout: ground-truth marks first, then the model's predictions.

    >>> marks = layout_detections([("stop_sign", (0, 0, 10, 10))], [("stop_sign", (0, 0, 10, 9))])
    >>> [(m.kind, m.status, m.text) for m in marks]
    [('gt', 'matched', 'GT stop_sign'), ('pred', 'matched', 'stop_sign IoU 0.90')]
    """
    gt = [_box(o) for o in gt_objects]
    pred = [_box(o) for o in pred_objects]
    matched = match_boxes(gt, pred, iou_threshold)
    hit = {gi for gi, _ in matched.values()}
    marks = [Mark("gt", label, box, "matched" if i in hit else "missed", GT_COLOR,
                  f"GT {label}" if i in hit else f"GT {label} (missed)") for i, (label, box) in enumerate(gt)]
    for index, (label, box) in enumerate(pred):
        if index in matched:
            marks.append(Mark("pred", label, box, "matched", MATCH_COLOR, f"{label} IoU {matched[index][1]:.2f}"))
        else:
            marks.append(Mark("pred", label, box, "wrong", MISS_COLOR, f"{label} (no match)"))
    return marks


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def wrap_text(text: str, font: ImageFont.ImageFont, max_width: float) -> list[str]:
    """Greedy word wrap measured with ``font``: every line is at most ``max_width`` pixels wide; a word
    wider than a line is split between characters.

    >>> font = _font(12)
    >>> lines = wrap_text("reward 0.50 (det 0.00, fmt 1.00) " * 3, font, 120)
    >>> len(lines) > 1 and all(font.getlength(line) <= 120 for line in lines)
    True
    """
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while len(word) > 1 and font.getlength(word) > max_width:
            cut = max(1, next((n for n in range(len(word) - 1, 0, -1) if font.getlength(word[:n]) <= max_width), 1))
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def _shorten(lines: list[str], font: ImageFont.ImageFont, max_width: float, max_lines: int) -> list[str]:
    """The first ``max_lines`` lines, the last one ending in "…" when something was left out."""
    if len(lines) <= max_lines:
        return lines
    kept = lines[:max_lines]
    last = kept[-1]
    while last and font.getlength(last + "…") > max_width:
        last = last[:-1]
    kept[-1] = last.rstrip() + "…"
    return kept


def caption_lines(width: int, font: ImageFont.ImageFont, title: str | None,
                  reward: float | Mapping[str, float] | None, legend: str, answer: str | None = None) -> list[str]:
    """The caption strip's lines for a picture ``width`` pixels wide: title, reward, legend and the model's
    unparsable answer (at most :data:`ANSWER_LINES` lines), each wrapped to fit inside the margins."""
    room = max(1, width - 2 * CAPTION_MARGIN)
    lines: list[str] = []
    for text in (title, _format_reward(reward), legend):
        if text:
            lines += wrap_text(text, font, room)
    if answer is not None:
        wrapped = wrap_text("no boxes parsed from: " + " ".join(answer.split()), font, room)
        lines += _shorten(wrapped, font, room, ANSWER_LINES)
    return lines


def _format_reward(reward: float | Mapping[str, float] | None) -> str:
    if reward is None:
        return ""
    if isinstance(reward, Mapping):
        return "reward " + " ".join(f"{k}={float(v):.2f}" for k, v in reward.items())
    return f"reward {float(reward):.3f}"


def draw_detections(
    image: Image.Image,
    gt_objects: Sequence[Any],
    pred_objects: Sequence[Any],
    title: str | None = None,
    *,
    reward: float | Mapping[str, float] | None = None,
    iou_threshold: float = 0.5,
    answer: str | None = None,
) -> Image.Image:
    """A new RGB image: boxes drawn on ``image`` plus a caption strip (title, reward, legend).

    The caption is wrapped to the image's width (:func:`caption_lines`). ``answer``: the model's text when
    no box could be parsed from it, shown in the caption (at most :data:`ANSWER_LINES` lines).
    """
    marks = layout_detections(gt_objects, pred_objects, iou_threshold)
    n_gt = sum(m.kind == "gt" for m in marks)
    n_missed = sum(m.status == "missed" for m in marks)
    n_matched = sum(m.kind == "pred" and m.status == "matched" for m in marks)
    n_wrong = sum(m.status == "wrong" for m in marks)
    base = image.convert("RGB")
    width, height = base.size
    font_size = max(10, min(16, width // 28))
    font = _font(font_size)
    line_height = font_size + 4
    legend = f"GT {n_gt} (green, {n_missed} missed)  predicted: matched {n_matched} (orange)  wrong {n_wrong} (red)"
    lines = caption_lines(width, font, title, reward, legend, answer)
    canvas = Image.new("RGB", (width, height + line_height * len(lines) + 4), CAPTION_BG)
    canvas.paste(base, (0, 0))
    draw = ImageDraw.Draw(canvas)
    stroke = max(1, width // 200)

    def label_at(x: float, y: float, text: str, color: tuple[int, int, int]) -> None:
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        ty = y - (bottom - top) - 2 if y - (bottom - top) - 2 >= 0 else y + 1
        left, top, right, bottom = draw.textbbox((x, ty), text, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=color)
        draw.text((x, ty), text, fill=(0, 0, 0), font=font)

    for mark in marks:
        box = mark.box
        if mark.kind == "gt":
            draw.rectangle(box, outline=mark.color, width=stroke)
            label_at(box[0], box[3] + 1 if box[3] + line_height < height else box[1], mark.text, mark.color)
        else:
            draw.rectangle(box, outline=mark.color, width=stroke + 1)
            label_at(box[0], box[1], mark.text, mark.color)

    y = height + 2
    for line in lines:
        draw.text((CAPTION_MARGIN, y), line, fill=(235, 235, 235), font=font)
        y += line_height
    return canvas


def rollout_grid(items: Sequence[Image.Image], columns: int = 4, pad: int = 4) -> Image.Image:
    """Tile a step's rollout pictures into one image (cells sized to the largest, white background)."""
    if not items:
        raise ValueError("rollout_grid: no images")
    if columns < 1:
        raise ValueError(f"columns: must be >= 1, got {columns}")
    columns = min(columns, len(items))
    rows = -(-len(items) // columns)
    cell_w = max(im.width for im in items)
    cell_h = max(im.height for im in items)
    grid = Image.new("RGB", (columns * cell_w + (columns + 1) * pad, rows * cell_h + (rows + 1) * pad), "white")
    for index, im in enumerate(items):
        r, c = divmod(index, columns)
        grid.paste(im.convert("RGB"), (pad + c * (cell_w + pad), pad + r * (cell_h + pad)))
    return grid


def rollout_picture(image: Image.Image, solution: Sequence[Any], completion: str, family: str, *,
                    title: str | None = None, reward: float | Mapping[str, float] | None = None,
                    min_side: int = 320) -> tuple[Image.Image, list[Mark]]:
    """One rollout drawn on the model's input image: ground truth (``solution``) and the boxes parsed from
    ``completion``, both in the model's answer space, converted to pixels and enlarged to at least
    ``min_side``. Returns the picture and its drawing data."""
    from vlm_rl.models.coords import from_model_coords
    from vlm_rl.rewards.parse import parse_detections

    zoom = max(1.0, min_side / max(image.size))  # small model inputs: enlarge to be readable
    shown = image.resize((round(image.width * zoom), round(image.height * zoom)))

    def to_px(objects: Sequence[Any] | None) -> list[dict]:
        return [{"label": str(o.get("label", "")),
                 "bbox_2d": [v * zoom for v in from_model_coords(o["bbox_2d"], image.width, image.height, family)]}
                for o in objects or []]

    predicted = parse_detections(completion)
    gt, pred = to_px(solution), to_px(predicted)
    picture = draw_detections(shown, gt, pred, title=title, reward=reward,
                              answer=completion if predicted is None else None)
    return picture, layout_detections(gt, pred)
