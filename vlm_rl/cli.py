"""The `vlm-rl` command: a thin dispatcher over ``vlm_rl.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys

from vlm_rl.commands import COMMANDS
from vlm_rl.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-rl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"vlm_rl.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"vlm_rl.commands.{name}":
                continue  # command not built yet
            raise
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        print(f"vlm-rl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
