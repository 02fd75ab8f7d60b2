"""`vlm-rl estimate`: time and memory (per GPU, or the RAM of a CPU run) of a GRPO run before booking the cluster."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vlm_rl.commands._common import add_config_arguments, config_from_args
from vlm_rl.config import GRPOConfig
from vlm_rl.tracking.estimator import (
    HARDWARE_CHOICES,
    Calibration,
    Estimate,
    Hardware,
    calibrate,
    estimate,
    get_hardware,
)

NAME = "estimate"
HELP = "estimate GRPO time per step, total time and peak memory (GPU, or RAM on CPU) for a config and hardware"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, GRPOConfig)
    parser.add_argument("--samples", type=int, default=1000, help="training prompts to process (default 1000)")
    add_hardware_arguments(parser)
    parser.add_argument("--calibrate", action="store_true",
                        help="run a few real GRPO steps here first and scale the model to the measured phases "
                             "(the first step, a warm-up, is left out when there are more)")
    parser.add_argument("--calibration-steps", type=int, default=3)
    parser.add_argument("--output", help="also write the estimate as JSON to this file")


def add_hardware_arguments(parser: argparse.ArgumentParser) -> None:
    """--hardware (default auto: what the config runs on, read on this machine), --cores, --memory-gb."""
    parser.add_argument("--hardware", default="auto",
                        help=f"one of {', '.join(HARDWARE_CHOICES)}; auto (default): this machine's CPU for a "
                             "use_gpu=false config, else its GPU (an H100 when it has none); cpu: this machine's CPU "
                             "(cores, vector features, clock and RAM read here)")
    parser.add_argument("--cores", type=int, default=None,
                        help="CPU: cores to assume instead of the ones this process may use here")
    parser.add_argument("--memory-gb", type=float, default=None, help="CPU: RAM to assume instead of this machine's")


def hardware_from_args(args: argparse.Namespace, config: GRPOConfig) -> Hardware:
    return get_hardware(args.hardware, config, cores=args.cores, memory_gb=args.memory_gb)


def steady_phases(history: list[dict]) -> tuple[dict[str, float], dict]:
    """Mean seconds per step by phase over the run's steps, the first (warm-up: first sync, lazy initialisation)
    left out when there are more; ``other`` is the rest of the step's wall time (queueing, broadcast, advantages).
    Returns (phases, what was measured)."""
    rows = [r for r in history if r.get("time/step") is not None]
    steady = rows[1:] if len(rows) > 1 else rows
    if not steady:
        return {}, {}

    def mean(key: str) -> float:
        return sum(float(r.get(key) or 0.0) for r in steady) / len(steady)

    phases = {"generation": mean("time/generation"), "training": mean("time/training"),
              "weight_sync": mean("time/weight_sync")}
    phases["other"] = max(0.0, mean("time/step") - sum(phases.values()))
    return phases, {"steps_measured": len(steady), "step_seconds": mean("time/step"),
                    "first_step_seconds": float(rows[0]["time/step"]) if len(rows) > 1 else None}


def measure_calibration(
    config: GRPOConfig, steps: int, hardware: str | Hardware, console: Console
) -> tuple[Calibration | None, dict]:
    """Run ``run_grpo`` for ``steps`` steps; (calibration, raw result), or (None, {reason}) on failure."""
    try:
        from vlm_rl.grpo.job import run_grpo
    except ImportError as exc:
        return None, {"error": f"vlm_rl.grpo.job unavailable: {exc}"}
    short = GRPOConfig.model_validate(
        {**config.model_dump(), "num_steps": steps, "output_dir": str(Path(config.output_dir) / "estimate-calibration"),
         "eval_steps": 0, "save_every_samples": 0, "log_images_every": 0}
    )
    console.print(f"calibrating: {steps} real GRPO steps of {config.model_path} on this machine ...")
    try:
        result = run_grpo(short)
        phases, measured = steady_phases(result.get("history") or [])
    except Exception as exc:  # a failed measurement must not hide the analytic estimate
        return None, {"error": f"calibration run failed: {type(exc).__name__}: {exc}"}
    if not phases:
        return None, {"error": "calibration run returned no step times"}
    return calibrate(phases, config, hardware), {"phase_times": phases, **measured,
                                                  "samples_per_hour": result.get("samples_per_hour")}


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def render(result: Estimate, samples: int, console: Console) -> None:
    table = Table(title=f"GRPO estimate: {samples} prompts on {result.hardware}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("total time", _hours(result.total_seconds))
    table.add_row("steps", str(result.steps))
    table.add_row("seconds per step", f"{result.seconds_per_step:.2f}")
    for phase, seconds in result.phases.items():
        share = seconds / result.seconds_per_step if result.seconds_per_step else 0.0
        table.add_row(f"  {phase}", f"{seconds:.2f} s ({share:.0%})")
    fit = "[green]fits[/green]" if result.fits else "[red]does NOT fit[/red]"
    table.add_row(f"peak memory {result.memory_scope}", f"{result.peak_memory_gb:.1f} GB ({fit})")
    for part, gb in result.memory.items():
        table.add_row(f"  {part}", f"{gb:.2f} GB")
    console.print(table)
    for line in result.assumptions:
        console.print(f"  [dim]- {line}[/dim]")


def checkpoint_disk(config: GRPOConfig) -> dict:
    """One checkpoint's size, how many are on disk at once, and the free space at output_dir
    (vlm_rl.learner.disk: what the run itself checks before it starts)."""
    from vlm_rl.learner.disk import GB, checkpoint_size, checkpoints_written, free_bytes, run_need

    size = checkpoint_size(config)
    count = checkpoints_written(config)
    return {**size.to_dict(), "checkpoints_on_disk": count, "disk_need_gb": run_need(size, count) / GB,
            "free_gb": free_bytes(config.output_dir) / GB, "output_dir": str(Path(config.output_dir).resolve())}


def render_disk(disk: dict, console: Console) -> None:
    table = Table(title="checkpoints on disk")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("checkpoint size", f"{disk['checkpoint_gb']:.2f} GB")
    table.add_row("  weights + optimizer state", f"{disk['optimizer_and_weights_gb']:.2f} GB")
    table.add_row("  exported weights", f"{disk['export_gb']:.2f} GB")
    if disk["reference_gb"]:
        table.add_row("KL reference (once)", f"{disk['reference_gb']:.2f} GB")
    table.add_row("checkpoints on disk at once", str(disk["checkpoints_on_disk"]))
    fit = "[green]fits[/green]" if disk["disk_need_gb"] <= disk["free_gb"] else "[red]does NOT fit[/red]"
    table.add_row("disk needed", f"{disk['disk_need_gb']:.2f} GB ({fit})")
    table.add_row(f"free at {disk['output_dir']}", f"{disk['free_gb']:.1f} GB")
    console.print(table)


def run(args: argparse.Namespace) -> int:
    console = Console()
    config = config_from_args(GRPOConfig, args)
    try:
        hardware = hardware_from_args(args, config)
    except ValueError as exc:
        console.print(f"[red]vlm-rl estimate: {exc}[/red]")
        return 2
    calibration, measured = None, {}
    if args.calibrate:
        calibration, measured = measure_calibration(config, args.calibration_steps, hardware, console)
        if calibration is None:
            console.print(f"[yellow]{measured['error']}; using the documented analytic model[/yellow]")
    try:
        result = estimate(config, args.samples, hardware, calibration)
    except ValueError as exc:
        console.print(f"[red]vlm-rl estimate: {exc}[/red]")
        return 2
    render(result, args.samples, console)
    disk = checkpoint_disk(config)
    render_disk(disk, console)
    if args.output:
        payload = {**result.to_dict(), "samples": args.samples, "calibration": measured or None, "checkpoint": disk}
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {args.output}")
    return 0
