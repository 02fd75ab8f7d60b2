"""vlm-rl: teach Qwen vision-language models to detect objects with GRPO on Ray.

Start with `vlm-rl demo` (CPU, no downloads, a few minutes), then `vlm-rl grpo --help` for the config
keys. Training commands take `--config FILE.yaml` and key=value overrides (`num_steps=10`); every
command accepts both `--key value` and `key=value`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vlm_rl.commands import COMMANDS
from vlm_rl.commands._common import normalise_tokens
from vlm_rl.config import ConfigError
from vlm_rl.learner.run_end import FatalRunError

EPILOG = """pipeline: vlm-rl sft -> vlm-rl grpo -> vlm-rl eval -> vlm-rl dpo-data -> vlm-rl dpo
on a Ray cluster: ray job submit ... -- python -m ray_jobs.grpo --config RECIPE.yaml (see cluster/README.md)
docs: README.md, cluster/README.md, docs/ARCHITECTURE.md"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-rl", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"vlm_rl.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"vlm_rl.commands.{name}":
                continue  # command not built yet
            raise
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def normalise_args(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Accept both flag styles everywhere (see ``vlm_rl.commands._common.normalise_tokens``).

    >>> normalise_args(build_parser(), ["grpo", "--num_generations", "8", "--beta=0"])
    ['grpo', 'num_generations=8', 'beta=0']
    >>> normalise_args(build_parser(), ["synth", "output=/tmp/x", "train=8"])
    ['synth', '--output', '/tmp/x', '--train', '8']
    """
    if not argv or argv[0].startswith("-"):
        return argv
    sub = _subparser(parser, argv[0])
    return argv if sub is None else [argv[0], *normalise_tokens(sub, argv[1:])]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(normalise_args(parser, list(sys.argv[1:] if argv is None else argv)))
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        print(f"vlm-rl: {exc}", file=sys.stderr)
        return 2
    except FatalRunError as exc:  # a full disk, a failed final export: the reason, no traceback
        print(f"vlm-rl: the run failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
