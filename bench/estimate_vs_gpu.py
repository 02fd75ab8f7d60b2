"""`vlm-rl estimate` against GPU runs: how far the analytic model is from the step times a lent GPU measured.

Reads the recipe runs of ``bench/gpu_recipes.py`` (each with its recipe file and size overrides) and re-estimates
every GRPO run of a known model with the same config, evaluation left out (``time/step`` excludes it), and prints
one row per run: measured s/step (median of steps 2-4), estimated s/step, their ratio, and the phases.

    python bench/estimate_vs_gpu.py --results bench/results/gpu_recipes_2026-12-07.json \
        --out bench/results/estimate_vs_gpu_2026-12-07.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlm_rl.config import GRPOConfig, load_config
from vlm_rl.tracking.estimator import estimate
from vlm_rl.tracking.model_specs import HUB_IDS

REPO = Path(__file__).resolve().parents[1]
SKIP_KEYS = ("output_dir", "model_path", "eval_on_start")


def config_of(run: dict) -> GRPOConfig:
    overrides = [o for o in run["overrides"] if not o.startswith(SKIP_KEYS)]
    overrides += [f"model_path={HUB_IDS[run['arch']]}", "eval_steps=0"]
    return load_config(GRPOConfig, REPO / "ray_jobs" / "configs" / "recipes" / run["recipe"], overrides, env={})


def compare(results: list[dict], hardware: str) -> list[dict]:
    rows = []
    for run in results:
        if run.get("entry") != "ray_jobs.grpo" or not run.get("ok") or run.get("fault") or not run.get("s_per_step"):
            continue
        if run.get("arch") not in HUB_IDS:  # gpu_recipes.py arch names; its layer cuts are not models
            rows.append({"run": run["name"], "skipped": f"{run.get('arch')}: not a model the estimator knows"})
            continue
        est = estimate(config_of(run), 8, hardware)
        rows.append({"run": run["name"], "measured_s": run["s_per_step"], "estimated_s": est.seconds_per_step,
                     "ratio": est.seconds_per_step / run["s_per_step"],
                     "phases": {k: round(v, 3) for k, v in est.phases.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(REPO / "bench/results/gpu_recipes_2026-12-07.json"))
    parser.add_argument("--hardware", default="h100")
    parser.add_argument("--out")
    args = parser.parse_args()
    rows = compare(json.loads(Path(args.results).read_text()), args.hardware)
    print("| run | measured s/step | estimated s/step | estimate / measured | estimated phases s |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        if "skipped" in r:
            print(f"| `{r['run']}` | | | | skipped: {r['skipped']} |")
            continue
        phases = ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items())
        print(f"| `{r['run']}` | {r['measured_s']:.2f} | {r['estimated_s']:.2f} | {r['ratio']:.2f} | {phases} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"results": args.results, "hardware": args.hardware, "rows": rows},
                                             indent=2))


if __name__ == "__main__":
    main()
