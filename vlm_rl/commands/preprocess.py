"""`vlm-rl preprocess`: resize a dataset's images once to the model size, boxes rescaled with them.

Training then reads small images of exactly the size the model sees, instead of decoding and resizing
full-size photos every epoch. All three input formats (JSONL, COCO, YOLO) skip bad rows and unreadable images,
name each (``file:line`` or ``file: section[index]``, and the field), write the good ones and end with a summary
(kept, skipped by reason; console + ``preprocess_report.json``). ``--strict`` (CI pipelines) makes any of them
a hard stop: exit 2, no dataset written.
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
    parser.add_argument("--strict", action="store_true",
                        help="a bad row or image is a hard stop (exit 2, nothing written) instead of skipped")


def _load(args: argparse.Namespace):
    """(samples, skipped-row messages) from the chosen input format; every bad row is listed, none raises."""
    from vlm_rl.data.schema import load_jsonl

    skipped: list[str] = []
    if args.format == "coco":
        from vlm_rl.data.coco import load_coco

        return load_coco(args.input, args.images_dir, skipped=skipped), skipped
    if args.format == "yolo":
        from vlm_rl.data.yolo import load_yolo

        if not args.labels_dir or not args.classes:
            raise ValueError("--format yolo needs --labels-dir and --classes")
        return load_yolo(args.input, args.labels_dir, args.classes, skipped=skipped), skipped
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


def _summary(kept: int, skipped: list[str], failed: list[dict]) -> tuple[str, dict[str, int]]:
    from vlm_rl.data.schema import count_reasons

    reasons = count_reasons(skipped)
    if failed:
        reasons["unreadable image"] = len(failed)
    total = kept + len(skipped) + len(failed)
    detail = ", ".join(f"{reason} {count}" for reason, count in reasons.items())
    return f"kept {kept} of {total}; skipped {total - kept}" + (f" ({detail})" if detail else ""), reasons


def run(args: argparse.Namespace) -> int:
    from vlm_rl.data.preprocess import make_item
    from vlm_rl.data.schema import DatasetError, sample_from_dict, write_jsonl

    try:
        samples, skipped = _load(args)
    except (DatasetError, ValueError) as exc:
        print(f"vlm-rl preprocess: {exc}", file=sys.stderr)
        return 2
    for message in skipped:
        print(f"skipped row: {message}")
    if args.strict and skipped:
        line, _ = _summary(len(samples), skipped, [])
        print(f"vlm-rl preprocess: --strict: {len(skipped)} bad rows, nothing written; {line}", file=sys.stderr)
        return 2
    out_dir = Path(args.output).resolve()
    images_dir = out_dir / "images"
    items = [make_item(i, s, images_dir, args.size, args.factor) for i, s in enumerate(samples)]
    results = _run_ray(items) if args.ray else _run_local(items, args.workers)
    done = sorted(_progress(results, len(items)), key=lambda r: r["index"])

    failed = [{"id": r["id"], "image": r["image"], "error": r["error"]} for r in done if not r["ok"]]
    written = [sample_from_dict(r["sample"]) for r in done if r["ok"]]
    strict_stop = args.strict and bool(failed)
    name = args.name or f"{Path(args.input).stem if args.format != 'yolo' else 'data'}.jsonl"
    jsonl = out_dir / name
    if written and not strict_stop:
        write_jsonl(written, jsonl)
    line, reasons = _summary(len(written), skipped, failed)
    report = {
        "input": str(Path(args.input).resolve()),
        "format": args.format,
        "output": str(jsonl) if written and not strict_stop else None,
        "max_image_size": args.size,
        "factor": args.factor,
        "total": len(samples) + len(skipped),
        "written": 0 if strict_stop else len(written),
        "failed_images": len(failed),
        "skipped_rows": len(skipped),
        "skipped_by_reason": reasons,
        "failures": failed,
        "skipped": skipped,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    for failure in failed:
        print(f"bad image: {failure['error']}")
    if strict_stop:
        print(f"vlm-rl preprocess: --strict: {len(failed)} unreadable images, no dataset written; {line}; "
              f"report: {out_dir / REPORT_NAME}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} samples to {jsonl if written else '(nothing)'}; {line}; "
          f"{len(failed)} bad images, {len(skipped)} bad rows; report: {out_dir / REPORT_NAME}")
    return 0 if written else 1
