"""Arguments shared by the training commands: --config, --resume and key=value overrides."""

from __future__ import annotations

import argparse

from vlm_rl.config import C, load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--resume", help="'auto' or a checkpoint path")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. num_steps=10)")


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    overrides = list(args.overrides or [])
    if getattr(args, "resume", None):
        overrides.append(f"resume={args.resume}")
    return load_config(cls, args.config, overrides)
