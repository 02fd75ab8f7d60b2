"""`ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python -m ray_jobs.sft --config RECIPE [k=v ...]`"""

from __future__ import annotations

import argparse
import json
import sys

from vlm_rl.config import ConfigError, SFTConfig, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="recipe YAML")
    parser.add_argument("--resume", help="'auto' or a checkpoint path")
    parser.add_argument("--no-eval", action="store_true", help="skip evaluating <output_dir>/final on val_data")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])
    try:
        config = load_config(SFTConfig, args.config, overrides)  # rejected here, before Ray starts
    except ConfigError as exc:
        print(f"ray_jobs.sft: {exc}", file=sys.stderr)
        return 2
    from vlm_rl.learner.sft_job import run_sft

    summary = run_sft(config, evaluate=not args.no_eval)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
