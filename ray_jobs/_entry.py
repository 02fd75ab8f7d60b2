"""The shape every `ray job submit` entry point shares: parse → validate (before Ray) → run → print summary and
the run's MLflow links (what `ray job logs` shows the user at the end)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from vlm_rl.commands._common import load_config_with_hints, normalise_tokens
from vlm_rl.config import ConfigError
from vlm_rl.learner.run_end import FatalRunError
from vlm_rl.tracking.ui_links import browse_lines


def run_entry(name: str, config_cls, run: Callable, argv: list[str] | None, *,
              add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
              run_kwargs: Callable[[argparse.Namespace], dict] | None = None, description: str = "") -> int:
    """Exit code 2 with a message naming the field for a bad config or dataset; 0 after a finished run."""
    parser = argparse.ArgumentParser(prog=f"python -m ray_jobs.{name}", description=description)
    parser.add_argument("--config", help="recipe YAML (ray_jobs/configs/recipes/...)")
    parser.add_argument("--resume", help="'auto' or a checkpoint path")
    if add_arguments:
        add_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(normalise_tokens(parser, list(sys.argv[1:] if argv is None else argv)))
    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])
    try:  # a bad config or dataset is rejected here, before any cluster resources are taken
        config = load_config_with_hints(config_cls, args.config, overrides)
        summary = run(config, **(run_kwargs(args) if run_kwargs else {}))
    except ConfigError as exc:
        print(f"ray_jobs.{name}: {exc}", file=sys.stderr)
        return 2
    except FatalRunError as exc:  # a full disk, a failed final export: the reason, no traceback, no restart loop
        print(f"ray_jobs.{name}: the run failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2, default=str))
    print("\n".join(browse_lines(config.resolved_tracking_uri, summary.get("run_id"))))
    return 0
