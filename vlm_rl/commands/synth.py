"""`vlm-rl synth`: write the synthetic traffic-sign dataset (images + train/val JSONL)."""

from __future__ import annotations

import argparse

NAME = "synth"
HELP = "write a synthetic traffic-sign detection dataset (PNG images + train.jsonl + val.jsonl)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--train", type=int, default=256, help="number of training images")
    parser.add_argument("--val", type=int, default=32, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=160, help="smallest image side, px")
    parser.add_argument("--max-size", type=int, default=320, help="largest image side, px")
    parser.add_argument("--max-objects", type=int, default=3, help="objects per image at most (1 = easy task)")


def run(args: argparse.Namespace) -> int:
    from vlm_rl.data.synthetic import make_synthetic_dataset

    try:
        train, val = make_synthetic_dataset(
            args.output, args.train, args.val, seed=args.seed, min_size=args.min_size,
            max_size=args.max_size, max_objects=args.max_objects,
        )
    except ValueError as exc:
        print(f"vlm-rl synth: {exc}")
        return 2
    print(f"train: {train} ({args.train} images)\nval:   {val} ({args.val} images)")
    return 0
