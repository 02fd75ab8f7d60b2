"""The per-sample preprocessing step: bad images become results, good ones are resized and saved."""

from __future__ import annotations

import json

from PIL import Image

from vlm_rl.data.preprocess import make_item, output_name, preprocess_item, preprocess_json_row
from vlm_rl.data.schema import DetObject, Sample, sample_from_dict


def test_resizes_saves_and_rescales(tmp_path):
    Image.new("RGB", (320, 160), (9, 9, 9)).save(tmp_path / "a.jpg")
    sample = Sample("cam/01", str(tmp_path / "a.jpg"), 320, 160, (DetObject("t", (32.0, 16.0, 320.0, 160.0)),))
    result = preprocess_item(make_item(4, sample, tmp_path / "out", 128, 32))
    assert result["ok"] and result["index"] == 4
    out = sample_from_dict(result["sample"])
    assert out.image == str(tmp_path / "out" / "000004-cam_01.jpg")
    assert Image.open(out.image).size == (128, 64) == (out.width, out.height)
    assert out.objects == (DetObject("t", (12.8, 6.4, 128.0, 64.0)),)


def test_corrupt_image_is_a_result_not_an_exception(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    item = make_item(0, Sample("b", str(tmp_path / "bad.png"), 10, 10), tmp_path / "out", 128, 32)
    result = json.loads(preprocess_json_row({"item": json.dumps(item)})["result"])
    assert result["ok"] is False and result["id"] == "b"
    assert "bad.png: image: cannot decode" in result["error"]


def test_output_names_are_unique_and_safe():
    a = output_name(1, Sample("x y/../z", "/d/p.PNG", 1, 1))
    assert a == "000001-x_y_.._z.png" and "/" not in a
    assert output_name(2, Sample("x y/../z", "/d/p.jpeg", 1, 1)) == "000002-x_y_.._z.jpg"
