"""`vlm-rl dpo`: LoRA DPO on chosen/rejected pairs (from `vlm-rl dpo-data`; synthetic when none)."""

from __future__ import annotations

import json

from vlm_rl.commands._common import add_config_arguments, config_from_args
from vlm_rl.config import DPOConfig

NAME = "dpo"
HELP = "DPO training with LoRA on preference pairs (Ray Train + DeepSpeed learners)"


def add_arguments(parser) -> None:
    add_config_arguments(parser, DPOConfig)
    parser.add_argument("--pairs", help="pairs JSONL from `vlm-rl dpo-data` (same as pairs=PATH)")
    parser.add_argument("--eval", action="store_true", help="evaluate <output_dir>/final on val_data at the end")


def run(args) -> int:
    if args.pairs:
        args.overrides = [*(args.overrides or []), f"pairs={args.pairs}"]
    config = config_from_args(DPOConfig, args)
    from vlm_rl.dpo.job import run_dpo

    summary = run_dpo(config, evaluate=args.eval)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2, default=str))
    return 0
