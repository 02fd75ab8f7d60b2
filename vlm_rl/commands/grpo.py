"""`vlm-rl grpo`: GRPO training on the local (or RAY_ADDRESS) Ray cluster."""

from __future__ import annotations

import json

from vlm_rl.commands._common import add_config_arguments, config_from_args
from vlm_rl.config import GRPOConfig

NAME = "grpo"
HELP = "GRPO reinforcement learning for detection (rollout actors + DeepSpeed learners on Ray Train)"


def add_arguments(parser) -> None:
    add_config_arguments(parser, GRPOConfig)


def run(args) -> int:
    config = config_from_args(GRPOConfig, args)
    from vlm_rl.grpo.job import run_grpo

    summary = run_grpo(config)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2, default=str))
    from vlm_rl.tracking.ui_links import browse_lines

    print("\n".join(browse_lines(config.resolved_tracking_uri, summary.get("run_id"))))
    return 0
