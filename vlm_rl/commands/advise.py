"""`vlm-rl advise`: which knob buys the most speed, each estimated by re-running the time model."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from vlm_rl.commands._common import add_config_arguments, config_from_args
from vlm_rl.commands.estimate import add_hardware_arguments, hardware_from_args
from vlm_rl.config import GRPOConfig
from vlm_rl.tracking.advice import advise
from vlm_rl.tracking.estimator import Hardware, estimate

NAME = "advise"
HELP = "rank config changes that would make GRPO faster, with their estimated speedup"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, GRPOConfig)
    add_hardware_arguments(parser)


def assumptions(config: GRPOConfig, hardware: Hardware) -> str:
    """What the estimate is of: model (and its size), images, batch shape, GPU or CPU; and how to change each."""
    from vlm_rl.tracking.model_specs import model_spec

    spec, gpu = model_spec(config.model_path), hardware
    return (
        f"assuming: model {config.model_path} ({spec.params / 1e9:.2f} B parameters), images up to "
        f"{config.max_image_size} px, {config.prompts_per_step} prompts x {config.num_generations} completions "
        f"per step ({config.num_iterations} pass(es) x {config.steps_per_generation} update(s) per batch), up to "
        f"{config.max_new_tokens} new tokens, LoRA r={config.lora_r}, {config.num_learners} "
        f"learner(s) + {config.num_rollout_workers} rollout actor(s) ({config.rollout_mode}), on {gpu.name}\n"
        "  change with --config FILE.yaml, key=value overrides (model_path=..., max_image_size=...) and --hardware"
        + (" (a CPU run: no GPU advice; more processes only onto idle cores)" if hardware.is_cpu else "")
    )


def run(args: argparse.Namespace) -> int:
    console = Console()
    config = config_from_args(GRPOConfig, args)
    try:
        hardware = hardware_from_args(args, config)
        base = estimate(config, 1000, hardware)
        advice = advise(config, hardware)
    except ValueError as exc:
        console.print(f"[red]vlm-rl advise: {exc}[/red]")
        return 2
    console.print(assumptions(config, hardware))
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in base.phases.items())
    console.print(f"now: {base.seconds_per_step:.1f} s per step ({phases}), {base.peak_memory_gb:.1f} GB "
                  f"{base.memory_scope}")
    if not advice:
        console.print("no single change is estimated to speed this config up by more than 1%")
        return 0
    table = Table(title=f"Speed advice on {base.hardware}")
    table.add_column("#", justify="right")
    table.add_column("change")
    table.add_column("speedup", justify="right")
    table.add_column("detail")
    for rank, item in enumerate(advice, start=1):
        table.add_row(str(rank), item.title, f"{item.estimated_speedup:.2f}x", item.detail)
    console.print(table)
    return 0
