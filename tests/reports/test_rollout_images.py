"""Rollout pictures: colours where the boxes are, matching by IoU and label, grid layout."""

from __future__ import annotations

import pytest
from PIL import Image

from vlm_rl.data.schema import DetObject
from vlm_rl.reports.rollout_images import (
    CAPTION_BG,
    CAPTION_MARGIN,
    GT_COLOR,
    MATCH_COLOR,
    MISS_COLOR,
    _font,
    caption_lines,
    draw_detections,
    match_boxes,
    rollout_grid,
    rollout_picture,
)


def test_match_boxes_requires_iou_and_label():
    gt = [("stop_sign", (0, 0, 10, 10)), ("traffic_light", (50, 50, 60, 70))]
    pred = [("stop_sign", (1, 1, 10, 10)), ("stop_sign", (50, 50, 60, 70)), ("stop_sign", (0, 0, 10, 10))]
    matched = match_boxes(gt, pred)
    assert matched == {2: (0, 1.0)}  # the exact box wins; the wrong-label box never matches


def test_draw_detections_colours_and_caption():
    image = Image.new("RGB", (200, 120), (128, 128, 128))
    gt = [DetObject("stop_sign", (20.0, 20.0, 80.0, 80.0))]
    pred = [{"label": "stop_sign", "bbox_2d": [22, 22, 80, 80]}, ("yield_sign", (120, 30, 180, 100))]
    out = draw_detections(image, gt, pred, title="step 5 / sample 3", reward={"total": 0.8, "format": 1.0})
    assert out.width == 200 and out.height > 120  # caption strip below
    # box edges: matched prediction (orange) on its left edge mid-height, wrong one (red), GT (green) bottom
    assert out.getpixel((22, 50)) == MATCH_COLOR
    assert out.getpixel((180, 60)) == MISS_COLOR
    assert out.getpixel((50, 20)) in (GT_COLOR, MATCH_COLOR)
    assert out.getpixel((60, 80)) in (GT_COLOR, MATCH_COLOR)
    assert out.getpixel((100, 60)) == (128, 128, 128)  # untouched background
    assert image.getpixel((22, 50)) == (128, 128, 128)  # input not modified


def test_bad_box_names_the_field():
    with pytest.raises(ValueError, match="bbox_2d"):
        draw_detections(Image.new("RGB", (10, 10)), [{"label": "a", "bbox_2d": [1, 2, 3]}], [])


def test_rollout_grid_layout():
    items = [Image.new("RGB", (30, 20), (255, 0, 0)), Image.new("RGB", (40, 25), (0, 0, 255))] * 3
    grid = rollout_grid(items, columns=4, pad=2)
    assert grid.size == (4 * 40 + 5 * 2, 2 * 25 + 3 * 2)
    assert grid.getpixel((2, 2)) == (255, 0, 0)
    assert grid.getpixel((2 + 40 + 2, 2)) == (0, 0, 255)
    assert grid.getpixel((2, 2 + 25 + 2)) == (255, 0, 0)  # second row starts with item 4
    with pytest.raises(ValueError):
        rollout_grid([])


def test_rollout_picture_draws_the_models_boxes_labelled_in_another_colour():
    """What the sinks log: a Qwen3-VL answer (0-1000 coords) on a 64x64 input, enlarged to 320 px."""
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    solution = [{"label": "stop_sign", "bbox_2d": [100, 100, 500, 500]}]
    answer = ('[{"bbox_2d": [110, 100, 500, 500], "label": "stop_sign"}, '
              '{"bbox_2d": [600, 600, 900, 900], "label": "yield_sign"}]')
    picture, marks = rollout_picture(image, solution, answer, "qwen3_vl", title="step 1", reward=1.2)
    preds = [m for m in marks if m.kind == "pred"]
    assert [(m.label, m.status) for m in preds] == [("stop_sign", "matched"), ("yield_sign", "wrong")]
    assert all(m.color != GT_COLOR for m in preds) and "IoU" in preds[0].text
    assert preds[1].box == pytest.approx((192.0, 192.0, 288.0, 288.0))  # 600/1000 * 64 px * zoom 5
    assert picture.width == 320 and picture.getpixel((192, 240)) == MISS_COLOR  # drawn where the data says
    assert [m.status for m in marks if m.kind == "gt"] == ["matched"]

    # a garbled answer: ground truth marked missed, no predicted boxes, the text shown in the caption
    _, marks = rollout_picture(image, solution, '[{"bbox_2d": [1_sign"}]', "qwen3_vl")
    assert [(m.kind, m.status) for m in marks] == [("gt", "missed")]


def test_long_caption_wraps_to_the_picture_width():
    """The sinks' title and the legend are wider than a 320 px tile: wrapped onto more lines, none cut off."""
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    solution = [{"label": "stop_sign", "bbox_2d": [100, 100, 500, 500]}]
    title = "step 12 · reward 0.50 (det 0.00, fmt 1.00) · sample 123456 of a long caption_without_any_breaks_at_all"
    garbled = "I see a stop sign near the top-left corner of the picture and " * 6
    picture, _ = rollout_picture(image, solution, garbled, "qwen3_vl", title=title, reward=0.5)
    width = picture.width
    font = _font(max(10, min(16, width // 28)))  # the size draw_detections picks for this width
    legend = "GT 1 (green, 1 missed)  predicted: matched 0 (orange)  wrong 0 (red)"
    lines = caption_lines(width, font, title, 0.5, legend, garbled)
    assert font.getlength(legend) > width and font.getlength(title) > width  # one line each would be cut
    assert all(font.getlength(line) <= width - 2 * CAPTION_MARGIN for line in lines), lines
    assert " ".join(lines).startswith(title.split(" of ")[0]) and any(line.startswith("GT 1") for line in lines)
    answer_lines = lines[next(i for i, line in enumerate(lines) if line.startswith("no boxes parsed")):]
    assert len(answer_lines) == 3 and answer_lines[-1].endswith("…")  # a long answer: three lines, then cut
    # drawn: the strip is tall enough for every line, and no text reaches the right edge of the tile
    assert picture.height >= width + len(lines) * (font.size + 4)
    strip = picture.crop((width - CAPTION_MARGIN + 1, width, width, picture.height))
    assert [color for _, color in strip.getcolors()] == [CAPTION_BG]
