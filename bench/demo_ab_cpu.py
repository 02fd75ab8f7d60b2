"""Does a setting learn as well as the default? Two arms of config overrides on the demo's task, several seeds, CPU.

Each seed runs the demo's settings (`vlm_rl.commands.demo.DEMO_SETTINGS`: 2 DeepSpeed learners on Ray Train,
2 rollout actors, the SFT warm-up, then GRPO with val mAP@0.5 every few steps) once per arm, with the same data,
warm-up and seed, so step 1 samples from the same weights. Per-step rewards, the sampler/learner mismatch
(``tis/*``) and evaluations go to a JSON file (appended after every run, so a cut-short study keeps its runs) and a
plot; the summary is the paired per-seed gap (arm B minus arm A) in second-half reward and final val mAP@0.5,
mean ± std over seeds. docs/PERFORMANCE.md records the studies. One run is ~3-5 min on 2 cores.

    # FP8 rollouts (issue 24): the pool samples with e4m3 projections, the learner stays in float32
    python bench/demo_ab_cpu.py --a model: --b fp8:rollout_dtype=fp8 --seeds 0 1 2 \
        --out bench/results/cpu_fp8_rollouts.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def parse_arm(text: str) -> tuple[str, dict]:
    """``name:key=value,key=value`` (values parsed like `vlm-rl demo --set`)."""
    from vlm_rl.commands.demo import _kv

    name, _, rest = text.partition(":")
    return name, dict(_kv(item) for item in rest.split(",") if item)


def run_arm(seed: int, name: str, overrides: dict, root: Path) -> list[dict]:
    from vlm_rl.commands.demo import DEMO_SETTINGS, make_demo_dataset
    from vlm_rl.config import GRPOConfig
    from vlm_rl.grpo.job import run_grpo

    out = root / f"seed{seed}-{name}-{len(list(root.glob('seed*')))}"
    base = {**DEMO_SETTINGS, "seed": seed}
    train, val = make_demo_dataset(root / f"data-{seed}", base)  # the demo's data for this seed, as `vlm-rl demo`
    config = GRPOConfig(**{**base, **overrides, "output_dir": str(out), "train_data": str(train),
                           "val_data": str(val), "log_images_every": 0})
    return run_grpo(config)["history"]


def record(seed: int, name: str, overrides: dict, history: list[dict]) -> dict:
    return {
        "seed": seed, "arm": name, "overrides": overrides,
        "reward": [h["reward/total"] for h in history],
        "detection": [h.get("reward/detection", 0.0) for h in history],
        "eval_map50": {str(h["step"]): h["eval/mAP_50"] for h in history if "eval/mAP_50" in h},
        "tis_logp_diff_abs": [h.get("tis/logp_diff_abs", 0.0) for h in history],
        "tis_clipped_fraction": [h.get("tis/clipped_fraction", 0.0) for h in history],
        "step_seconds": [h.get("time/step", 0.0) for h in history],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", default="model:", help="arm A, name:key=value,... (default: the demo as it is)")
    parser.add_argument("--b", required=True, help="arm B, name:key=value,...")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="cpu_ab.json")
    args = parser.parse_args(argv)
    arms = [parse_arm(args.a), parse_arm(args.b)]
    root = Path(tempfile.mkdtemp(prefix="demo-ab-"))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": []}
    done = {(r["seed"], r["arm"]) for r in results["runs"]}
    for seed in args.seeds:
        for name, overrides in arms:
            if (seed, name) in done:
                continue
            results["runs"].append(record(seed, name, overrides, run_arm(seed, name, overrides, root)))
            out.write_text(json.dumps(results, indent=1))
    summarize(results["runs"], arms[0][0], arms[1][0], out.with_suffix(".png"))


def paired_gaps(runs: list[dict], a: str, b: str) -> dict[str, list[float]]:
    """Per seed with both arms: second-half reward gap (b - a) and final val mAP@0.5 gap (b - a)."""
    by = {(r["seed"], r["arm"]): r for r in runs}
    out: dict[str, list[float]] = {"seeds": [], "reward": [], "map50": []}
    for seed in sorted({s for s, arm in by if arm == a} & {s for s, arm in by if arm == b}):
        ra, rb = by[seed, a], by[seed, b]
        half = len(ra["reward"]) // 2
        out["seeds"].append(seed)
        out["reward"].append(statistics.mean(rb["reward"][half:]) - statistics.mean(ra["reward"][half:]))
        last = max(ra["eval_map50"], key=int) if ra["eval_map50"] else None
        if last is not None and last in rb["eval_map50"]:
            out["map50"].append(rb["eval_map50"][last] - ra["eval_map50"][last])
    return out


def summarize(runs: list[dict], a: str, b: str, plot: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, colour in ((a, "tab:blue"), (b, "tab:orange")):
        mine = [r for r in runs if r["arm"] == arm]
        for run in mine:
            ax.plot(range(1, len(run["reward"]) + 1), run["reward"], color=colour, alpha=0.25)
        if mine:
            mean = [statistics.mean(v) for v in zip(*(r["reward"] for r in mine))]
            ax.plot(range(1, len(mean) + 1), mean, color=colour, lw=2.5, label=f"{arm} (mean of {len(mine)} seeds)")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    for r in sorted(runs, key=lambda r: (r["seed"], r["arm"])):
        maps = " -> ".join(f"{v:.3f}" for _, v in sorted(r["eval_map50"].items(), key=lambda kv: int(kv[0])))
        print(f"seed {r['seed']} {r['arm']:>8}: reward mean {statistics.mean(r['reward']):.3f}; val mAP@0.5 {maps}; "
              f"|sampler-learner log-prob| {statistics.mean(r['tis_logp_diff_abs']):.4f}/token, IS clipped "
              f"{statistics.mean(r['tis_clipped_fraction']):.4f}; {statistics.mean(r['step_seconds']):.2f} s/step")
    gaps = paired_gaps(runs, a, b)
    for key, label in (("reward", "second-half reward"), ("map50", "final val mAP@0.5")):
        values = gaps[key]
        if len(values) > 1:
            print(f"{label} gap ({b} - {a}) over {len(values)} seeds: {statistics.mean(values):+.3f} ± "
                  f"{statistics.stdev(values):.3f} (std)")
    print(f"plot {plot}")


if __name__ == "__main__":
    main()
