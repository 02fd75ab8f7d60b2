"""`vlm-rl preprocess`: resize a dataset's images once to the model size, boxes rescaled with them.

Training then reads small images of exactly the size the model sees, instead of decoding and resizing
full-size photos every epoch. Bad images are reported (console + ``preprocess_report.json``), not fatal.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

NAME = "preprocess"
HELP = "resize images to MAX_IMAGE_SIZE (multiples of the model factor) and rescale boxes; writes a new JSONL"
REPORT_NAME = "preprocess_report.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="JSONL file, COCO json, or YOLO images directory")
    parser.add_argument("--output", required=True, help="output directory (images/ + <name>.jsonl + report)")
    parser.add_argument("--size", type=int, default=448, help="longest side after resizing (MAX_IMAGE_SIZE)")
    parser.add_argument("--factor", type=int, default=32, help="sides become multiples of this (32 Qwen3-VL, 28 Qwen2.5-VL)")
    parser.add_argument("--format", choices=("jsonl", "coco", "yolo"), default="jsonl")
    parser.add_argument("--images-dir", help="COCO: folder of the images (default: the json's folder)")
    parser.add_argument("--labels-dir", help="YOLO: folder of the label .txt files")
    parser.add_argument("--classes", help="YOLO: data.yaml or classes.txt with the class names")
    parser.add_argument("--name", help="output JSONL name (default: the input's name)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes (1 = in-process)")
    parser.add_argument("--ray", action="store_true", help="use Ray Data (connects to RAY_ADDRESS or starts local Ray)")


def _load(args: argparse.Namespace):
    """(samples, skipped-row messages) from the chosen input format."""
    from vlm_rl.data.schema import load_jsonl

    if args.format == "coco":
        from vlm_rl.data.coco import load_coco

        return load_coco(args.input, args.images_dir), []
    if args.format == "yolo":
        from vlm_rl.data.yolo import load_yolo

        if not args.labels_dir or not args.classes:
            raise ValueError("--format yolo needs --labels-dir and --classes")
        return load_yolo(args.input, args.labels_dir, args.classes), []
    # Images are opened (and checked) by the workers, in parallel; rows are checked here.
    result = load_jsonl(args.input, on_error="skip", check_images=False)
    return result.samples, result.skipped


def _run_local(items: list[dict[str, Any]], workers: int) -> Iterator[dict[str, Any]]:
    from vlm_rl.data.preprocess import preprocess_item

    if workers <= 1:
        yield from map(preprocess_item, items)
        return
    # spawn, not fork: the caller may hold Ray/torch threads, and forking those can deadlock a child
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(preprocess_item, items, chunksize=max(1, min(64, len(items) // (4 * workers))))


def _run_ray(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    import ray

    from vlm_rl.data.preprocess import preprocess_json_row

    if not ray.is_initialized():
        ray.init(logging_level="WARNING")
    ds = ray.data.from_items([{"item": json.dumps(item)} for item in items]).map(preprocess_json_row)
    for row in ds.iter_rows():
        yield json.loads(row["result"])


def _progress(results: Iterator[dict[str, Any]], total: int) -> Iterator[dict[str, Any]]:
    from rich.progress import track

    yield from track(results, total=total, description="resizing", transient=True, disable=not sys.stdout.isatty())


def run(args: argparse.Namespace) -> int:
    from vlm_rl.data.preprocess import make_item
    from vlm_rl.data.schema import DatasetError, sample_from_dict, write_jsonl

    try:
        samples, skipped = _load(args)
    except (DatasetError, ValueError) as exc:
        print(f"vlm-rl preprocess: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.output).resolve()
    images_dir = out_dir / "images"
    items = [make_item(i, s, images_dir, args.size, args.factor) for i, s in enumerate(samples)]
    results = _run_ray(items) if args.ray else _run_local(items, args.workers)
    done = sorted(_progress(results, len(items)), key=lambda r: r["index"])

    failed = [{"id": r["id"], "image": r["image"], "error": r["error"]} for r in done if not r["ok"]]
    written = [sample_from_dict(r["sample"]) for r in done if r["ok"]]
    name = args.name or f"{Path(args.input).stem if args.format != 'yolo' else 'data'}.jsonl"
    jsonl = out_dir / name
    if written:
        write_jsonl(written, jsonl)
    report = {
        "input": str(Path(args.input).resolve()),
        "format": args.format,
        "output": str(jsonl) if written else None,
        "max_image_size": args.size,
        "factor": args.factor,
        "total": len(samples) + len(skipped),
        "written": len(written),
        "failed_images": len(failed),
        "skipped_rows": len(skipped),
        "failures": failed,
        "skipped": skipped,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    for message in skipped:
        print(f"skipped row: {message}")
    for failure in failed:
        print(f"bad image: {failure['error']}")
    print(
        f"wrote {len(written)} samples to {jsonl if written else '(nothing)'}; "
        f"{len(failed)} bad images, {len(skipped)} bad rows; report: {out_dir / REPORT_NAME}"
    )
    return 0 if written else 1
