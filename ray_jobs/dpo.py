"""`ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python -m ray_jobs.dpo --config RECIPE [k=v ...]`"""

from __future__ import annotations

import argparse
import json
import sys

from vlm_rl.config import ConfigError, DPOConfig, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="recipe YAML")
    parser.add_argument("--resume", help="'auto' or a checkpoint path")
    parser.add_argument("--eval", action="store_true", help="evaluate <output_dir>/final on val_data at the end")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (pairs=PATH, beta=0.1, ...)")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])
    try:
        config = load_config(DPOConfig, args.config, overrides)  # rejected here, before Ray starts
    except ConfigError as exc:
        print(f"ray_jobs.dpo: {exc}", file=sys.stderr)
        return 2
    from vlm_rl.learner.dpo_job import run_dpo

    summary = run_dpo(config, evaluate=args.eval)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
