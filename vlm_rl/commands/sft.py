"""`vlm-rl sft`: LoRA supervised fine-tuning on detection answers (Ray Train + DeepSpeed learners)."""

from __future__ import annotations

import json

from vlm_rl.commands._common import add_config_arguments, config_from_args
from vlm_rl.config import SFTConfig

NAME = "sft"
HELP = "LoRA supervised fine-tuning on the detection data (the recommended first stage before GRPO)"


def add_arguments(parser) -> None:
    add_config_arguments(parser, SFTConfig)
    parser.add_argument("--no-eval", action="store_true", help="skip evaluating <output_dir>/final on val_data")


def run(args) -> int:
    config = config_from_args(SFTConfig, args)
    from vlm_rl.sft.job import run_sft

    summary = run_sft(config, evaluate=not args.no_eval)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2, default=str))
    return 0
