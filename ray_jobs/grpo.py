"""`ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python -m ray_jobs.grpo --config RECIPE [k=v ...]`"""

from __future__ import annotations

import argparse
import json
import sys

from vlm_rl.config import ConfigError, GRPOConfig, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="recipe YAML (ray_jobs/configs/recipes/...)")
    parser.add_argument("--resume", help="'auto' or a checkpoint path")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])
    from vlm_rl.learner.grpo_job import run_grpo

    try:  # bad config or data is rejected before Ray starts
        config = load_config(GRPOConfig, args.config, overrides)
        summary = run_grpo(config)
    except ConfigError as exc:
        print(f"ray_jobs.grpo: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
