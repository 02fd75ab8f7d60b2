"""`vlm-rl demo`: the whole loop on a laptop — synthetic traffic signs, a tiny Qwen3-VL, local Ray, MLflow."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from vlm_rl.config import GRPOConfig, load_config

NAME = "demo"
HELP = "GRPO on synthetic traffic signs with a tiny Qwen3-VL on local Ray (CPU, no downloads, a few minutes)"

#: A random tiny model cannot find the answer format by sampling alone: a short supervised warm-up
#: teaches it partly, then GRPO makes it reliable. tests/learner/test_grpo_e2e.py runs exactly these
#: settings and asserts the reward rise (measured: 0.03 over the first 4 steps → 0.20 over the last 4).
DEMO_SETTINGS = dict(
    model_path="tiny-qwen3-vl", lora_r=0, learning_rate=3e-3, num_learners=2, num_rollout_workers=2,
    prompts_per_step=4, num_generations=4, num_steps=14, sft_warmup_steps=50, max_new_tokens=40,
    max_image_size=96, beta=0.0, temperature=1.0, zero_stage=2, log_images_every=5, eval_steps=7,
    synthetic_train_size=48, synthetic_val_size=8, synthetic_max_objects=1, disable_gradient_checkpointing=True,
    seed=0,
)


def add_arguments(parser) -> None:
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("--steps", type=int, default=DEMO_SETTINGS["num_steps"])
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")


def run(args) -> int:
    """Each demo run gets its own folder; all share one MLflow store so the UI shows them side by side."""
    root = Path(args.output_dir).resolve()
    run_dir = root / time.strftime("run-%Y%m%d-%H%M%S")
    settings = {**DEMO_SETTINGS, "num_steps": args.steps, "output_dir": str(run_dir), "run_name": "demo",
                "tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}
    settings.update(_kv(item) for item in args.overrides)
    config = load_config(GRPOConfig, None, settings, env={})
    from vlm_rl.grpo.job import run_grpo

    summary = run_grpo(config)
    print(
        f"\nDemo finished: reward {summary['reward_first']:.3f} → {summary['reward_last']:.3f} over "
        f"{summary['steps']} GRPO steps; checkpoint {summary['checkpoint']}\n"
        f"Browse it:  mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}  (then open http://127.0.0.1:5000)"
    )
    return 0


def _kv(item: str) -> tuple[str, object]:
    key, _, value = item.partition("=")
    return key.strip().replace("-", "_"), yaml.safe_load(value)
