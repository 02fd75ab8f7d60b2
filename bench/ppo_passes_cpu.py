"""Does a second pass over each rollout batch (num_iterations=2) learn at least as well per rollout as one? CPU demo.

Each seed runs the demo's settings (`vlm_rl.commands.demo.DEMO_SETTINGS`: 2 DeepSpeed learners on Ray Train, 2
rollout actors, 150 warm-up steps, 30 GRPO steps of 4 prompts x 4, val mAP@0.5 every 5 steps) once per arm, with
the same data, warm-up and seed, so step 1 samples the same policy: ``num_iterations`` 1 (the default) and 2
(decoupled PPO: the second pass is clipped against the learner before the batch, docs/ARCHITECTURE.md). Both arms
see the same number of rollouts; the second arm takes twice the optimizer steps. Per-step rewards, clip fractions
and evaluations go to a JSON file (appended after every run) and a plot; docs/PERFORMANCE.md records the result.
One run is ~3 min on 2 idle cores.

    python bench/ppo_passes_cpu.py --seeds 0 1 2 --out bench/results/cpu_ppo_passes.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ARMS = (1, 2)  # num_iterations


def run_arm(seed: int, passes: int, root: Path, overrides: dict) -> list[dict]:
    """One demo run with ``num_iterations=passes`` (bench/demo_ab_cpu.py runs it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from demo_ab_cpu import run_arm as run_demo_arm

    return run_demo_arm(seed, f"passes{passes}", {**overrides, "num_iterations": passes}, root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="cpu_ppo_passes.json")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for both arms (e.g. epsilon=0.1), recorded with each run")
    args = parser.parse_args()
    from vlm_rl.commands.demo import _kv

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from demo_ab_cpu import record

    overrides = dict(_kv(item) for item in args.set)
    root = Path(tempfile.mkdtemp(prefix="ppo-passes-"))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": []}
    key = json.dumps(overrides, sort_keys=True)
    done = {(r["seed"], r["num_iterations"], json.dumps(r.get("overrides", {}), sort_keys=True))
            for r in results["runs"]}
    for seed in args.seeds:
        for passes in ARMS:
            if (seed, passes, key) in done:
                continue
            history = run_arm(seed, passes, root, overrides)
            row = record(seed, f"passes{passes}", overrides, history)  # (bench/demo_ab_cpu.py's fields)
            row.update(num_iterations=passes, clip_ratio=[h.get("clip_ratio", 0.0) for h in history],
                       training_seconds=[h.get("time/training", 0.0) for h in history])
            results["runs"].append(row)
            out.write_text(json.dumps(results, indent=1))  # after every run: a long sweep loses nothing
    runs = [r for r in results["runs"] if json.dumps(r.get("overrides", {}), sort_keys=True) == key]
    print(f"settings: demo + {key}")
    summarize(runs, out.with_suffix(".png"))


def summarize(runs: list[dict], plot: Path) -> None:
    """Per seed: second-half minus first-half reward of each arm, the paired second-half gap (2 passes minus 1),
    val mAP@0.5 at the end and its best, mean clip fraction and training seconds per step; and a plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = {p: sorted((r for r in runs if r["num_iterations"] == p), key=lambda r: r["seed"]) for p in ARMS}
    fig, ax = plt.subplots(figsize=(7, 4))
    for passes, colour in zip(ARMS, ("tab:blue", "tab:green")):
        for run in arms[passes]:
            ax.plot(range(1, len(run["reward"]) + 1), run["reward"], color=colour, alpha=0.25)
        if arms[passes]:
            mean = [statistics.mean(v) for v in zip(*(r["reward"] for r in arms[passes]))]
            ax.plot(range(1, len(mean) + 1), mean, color=colour, lw=2.5,
                    label=f"num_iterations={passes} (mean of {len(arms[passes])} seeds)")
    ax.set_xlabel("GRPO step (one rollout batch each)")
    ax.set_ylabel("mean reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    seeds = sorted({r["seed"] for r in arms[1]} & {r["seed"] for r in arms[2]})
    gaps, map_gaps = [], []
    for seed in seeds:
        one, two = (next(r for r in arms[p] if r["seed"] == seed) for p in ARMS)
        half = len(one["reward"]) // 2
        rise = {p: statistics.mean(r["reward"][half:]) - statistics.mean(r["reward"][:half])
                for p, r in ((1, one), (2, two))}
        gaps.append(statistics.mean(two["reward"][half:]) - statistics.mean(one["reward"][half:]))
        last = max(one["eval_map50"], key=int) if one["eval_map50"] else None
        if last is not None and last in two["eval_map50"]:
            map_gaps.append(two["eval_map50"][last] - one["eval_map50"][last])
        print(f"seed {seed}: reward second-half minus first-half: 1 pass {rise[1]:+.3f}, 2 passes {rise[2]:+.3f}; "
              f"second-half gap (2 - 1) {gaps[-1]:+.3f}")
        for p, r in ((1, one), (2, two)):
            maps = " -> ".join(f"{v:.3f}" for _, v in sorted(r["eval_map50"].items(), key=lambda kv: int(kv[0])))
            print(f"    {p} pass(es): val mAP@0.5 {maps}; clip_ratio mean {statistics.mean(r['clip_ratio']):.4f}; "
                  f"training {statistics.mean(r['training_seconds']):.2f} s/step, step "
                  f"{statistics.mean(r['step_seconds']):.2f} s")
    if len(gaps) > 1:
        print(f"second-half reward gap over {len(gaps)} seeds: {statistics.mean(gaps):+.3f} ± "
              f"{statistics.stdev(gaps):.3f} (std); final val mAP@0.5 gap "
              f"{statistics.mean(map_gaps):+.3f} ± {statistics.stdev(map_gaps):.3f}; plot {plot}")


if __name__ == "__main__":
    main()
