"""One module per `vlm-rl` subcommand.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
``vlm_rl.cli`` finds them here, so adding a command never touches the CLI file.
"""

COMMANDS = (
    "demo",
    "grpo",
    "sft",
    "dpo_data",
    "dpo",
    "eval",
    "preprocess",
    "synth",
    "estimate",
    "advise",
    "compare",
)
