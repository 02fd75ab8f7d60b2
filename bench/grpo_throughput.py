"""GRPO throughput, vlm-rl vs TRL's GRPOTrainer: same model, data and algorithm, one process, one GPU.

Both sides get the same random-weight Qwen3-VL architecture (Qwen's real vocabulary), the same pre-resized
synthetic images, 8 prompts x 4 generations per step, exactly ``--new-tokens`` completion tokens (EOS is
suppressed until then on both sides: random weights rarely stop), LoRA r=64 on the language model,
gradient checkpointing, beta=0, loss dapo, bf16. vlm-rl runs its real loop (``grpo_train`` with
``PolicyLearner`` on a DeepSpeed engine and the colocated rollout source); TRL runs ``GRPOTrainer.train``.

``--rollout-mode pool`` (or ``colocated pool`` for both) runs vlm-rl's distributed shape on the same GPU: the
learner in this process as above, plus one ``RolloutWorker`` Ray actor holding its own policy copy on a
fraction of the same GPU (``--rollout-gpus``), sampling with the same engine and synced after every step
(CUDA IPC when both sit on one GPU). Its results are keyed ``vlm-rl-pool``. ``--max-staleness N`` is passed
to ``GRPOConfig.max_staleness`` (asynchronous GRPO: the pool samples up to N steps ahead).

  python bench/grpo_throughput.py --arch 2b 8b --steps 3 --out results.json        # GPU
  python bench/grpo_throughput.py --arch 8b --rollout-mode colocated pool --max-staleness 1   # + pool mode
  python bench/grpo_throughput.py --arch tiny --device cpu --steps 1                 # CPU smoke run

Prints one table row per (arch, framework) and the vlm-rl / TRL ratio; writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The two sides and the floor live beside this script (bench/throughput_*.py); this file runs and reports.
from throughput_common import ARCHS, _free, build_model_dir, make_data  # noqa: E402
from throughput_floor import measure_ceilings, physical_floor  # noqa: E402
from throughput_trl import run_trl  # noqa: E402
from throughput_vlmrl import MODE_KEYS, run_vlmrl  # noqa: E402


def run_isolated(framework: str, arch: str, argv: list[str], mode: str | None = None,
                 cache: str | None = None) -> dict:
    """``framework`` on ``arch`` (vlm-rl: in rollout ``mode``) in a fresh Python process (same arguments
    otherwise); its result dict. ``cache``: the child's VLM_RL_CACHE (compile caches, models/compile_cache.py)."""
    import subprocess

    env = dict(os.environ, **({"VLM_RL_CACHE": cache} if cache else {}))
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        out = Path(tmp) / "child.json"
        child = _without_options(argv, {"--arch": True, "--frameworks": True, "--out": True, "--isolate": False,
                                        "--rollout-mode": True})
        modes = ["--rollout-mode", mode] if mode else []
        cmd = [sys.executable, str(Path(__file__).resolve()), *child, "--arch", arch, "--frameworks", framework,
               *modes, "--out", str(out), "--skip-ceilings"]
        subprocess.run(cmd, check=True, env=env)
        key = MODE_KEYS[mode] if mode else framework
        return json.loads(out.read_text())["results"][arch][key]


def run_cold_warm(arch: str, argv: list[str], mode: str) -> dict:
    """A vlm-rl arm twice in fresh processes sharing one new VLM_RL_CACHE: the first compiles from nothing
    (cold), the second loads what the first stored (warm, as a second run on the node does). The warm run's
    result, with both runs' set-up and first-step seconds."""
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
        cold = run_isolated("vlm-rl", arch, argv, mode, cache=cache)
        warm = run_isolated("vlm-rl", arch, argv, mode, cache=cache)
    for name, run in (("cold", cold), ("warm", warm)):
        warm[f"first_step_{name}_seconds"] = run.get("first_step_seconds")
        warm[f"setup_{name}_seconds"] = run.get("setup_seconds")
    return warm


def _without_options(argv: list[str], options: dict[str, bool]) -> list[str]:
    """``argv`` minus the named options (``True``: the option takes values, dropped up to the next ``--``)."""
    kept, skipping = [], False
    for token in argv:
        name = token.split("=", 1)[0]
        if name in options:
            skipping = options[name] and "=" not in token
            continue
        if skipping and not token.startswith("--"):
            continue
        skipping = False
        kept.append(token)
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=["2b"], choices=sorted(ARCHS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frameworks", nargs="+", default=["trl", "vlm-rl"], choices=["trl", "vlm-rl"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--hf-generate", action="store_true", help="vlm-rl samples with HF generate (ablation)")
    parser.add_argument("--rollout-mode", nargs="+", default=["colocated"], choices=sorted(MODE_KEYS),
                        help="vlm-rl rollout source(s): colocated (the learner's own model samples) and/or pool "
                             "(a Ray rollout actor with its own copy on the same GPU, synced every step; "
                             "results keyed vlm-rl-pool)")
    parser.add_argument("--rollout-gpus", type=float, default=0.5,
                        help="pool mode: the rollout actor's share of the GPU (the learner has the rest)")
    parser.add_argument("--max-staleness", type=int, default=0,
                        help="pool mode: GRPOConfig.max_staleness (0 = on-policy; k = sample up to k steps ahead)")
    parser.add_argument("--compile-decode", action="store_true", help="torch.compile the decode step (vlm-rl)")
    parser.add_argument("--compile-learner", action="store_true",
                        help="torch.compile each decoder layer for the learner's forward/backward (vlm-rl)")
    parser.add_argument("--engine", default="deepspeed", choices=["deepspeed", "local"],
                        help="vlm-rl learner engine: DeepSpeed ZeRO-0 or LocalEngine (plain AdamW, fp32 masters)")
    parser.add_argument("--micro-batch", type=int, default=0,
                        help="vlm-rl sequences per forward/backward (0 = the whole step's batch)")
    parser.add_argument("--model-root", default=os.environ.get("BENCH_MODEL_ROOT", "/tmp/vlmrl-bench-models"))
    parser.add_argument("--skip-ceilings", action="store_true", help=argparse.SUPPRESS)  # children of --isolate
    parser.add_argument("--isolate", action="store_true",
                        help="run each framework in its own child process: every peak-memory figure is then that "
                             "framework's alone (in one process the second one's set-up still sees the first's "
                             "leftovers)")
    parser.add_argument("--cold-warm", action="store_true",
                        help="with --isolate: run each vlm-rl arm twice on one fresh compile cache and record the "
                             "cold and warm set-up and first-step seconds (issue 24's first-step targets)")
    parser.add_argument("--out", default=None, help="JSON file for all results")
    parser.add_argument("--profile", default=None, help="folder: torch.profiler kernel tables of vlm-rl's last "
                        "step (learner and rollout); that step is excluded from nothing, so use --steps >= 3")
    args = parser.parse_args(argv)

    root = Path(args.model_root)
    root.mkdir(parents=True, exist_ok=True)
    train = make_data(root, max(2 * args.prompts, 16), args.image_size)
    report: dict = {"args": vars(args), "device": _device_name(args.device), "results": {}}
    if args.device == "cuda" and not args.skip_ceilings:
        bw, flops = measure_ceilings()
        report["measured"] = {"copy_bandwidth_tbs": bw, "bf16_matmul_tflops": flops}
        print(f"{report['device']}: copy {bw:.2f} TB/s, bf16 matmul {flops:.0f} TFLOP/s", flush=True)
    for arch in args.arch:
        model_dir = build_model_dir(arch, root, args.device)
        args.arch_now = arch
        res: dict = {}
        runs = []  # (result key, framework, vlm-rl rollout mode), in the order asked for
        for fw in args.frameworks:
            runs += [("trl", fw, None)] if fw == "trl" else [(MODE_KEYS[m], fw, m) for m in args.rollout_mode]
        for key, fw, mode in runs:
            print(f"== {arch} {key}", flush=True)
            try:
                child_argv = argv if argv is not None else sys.argv[1:]
                if args.isolate and args.cold_warm and fw == "vlm-rl":
                    res[key] = run_cold_warm(arch, _without_options(child_argv, {"--cold-warm": False}), mode)
                elif args.isolate:
                    res[key] = run_isolated(fw, arch, child_argv, mode)
                elif fw == "trl":
                    res[key] = run_trl(model_dir, train, args)
                else:
                    res[key] = run_vlmrl(model_dir, train, args, mode)
            except Exception as exc:  # keep the other measurements of this (expensive) run
                import traceback

                traceback.print_exc()
                res[key] = {"error": f"{type(exc).__name__}: {exc}"}
                _free()
            report["results"][arch] = res
            if args.out:  # keep what is measured if a later framework runs out of time
                Path(args.out).write_text(json.dumps(report, indent=2, default=str))
        if "measured" in report:
            res["floor"] = physical_floor(model_dir, args, report["measured"]["copy_bandwidth_tbs"],
                                          report["measured"]["bf16_matmul_tflops"])
        if all("prompts_per_hour" in res.get(fw, {}) for fw in ("trl", "vlm-rl")):
            res["ratio_prompts_per_hour"] = res["vlm-rl"]["prompts_per_hour"] / res["trl"]["prompts_per_hour"]
            res["ratio_peak_memory"] = res["vlm-rl"]["peak_memory_gb"] / res["trl"]["peak_memory_gb"]
        for arm, name in (("vlm-rl-unshared", "shared_prompt_forward"), ("vlm-rl-flex", "flex_vs_dense"),
                          ("vlm-rl-fp8", "fp8_vs_bf16")):  # vlm-rl against itself, one change each
            base, other = res.get("vlm-rl", {}), res.get(arm, {})
            if "prompts_per_hour" in base and "prompts_per_hour" in other:
                ratio = base["prompts_per_hour"] / other["prompts_per_hour"]
                res[f"ratio_{name}"] = ratio if arm == "vlm-rl-unshared" else 1.0 / ratio
        if "floor" in res:  # the headline: each arm's step over the floor of the same call
            for run in res.values():
                if isinstance(run, dict) and "phase_seconds" in run:
                    run["floor_ratio"] = run["phase_seconds"]["step"] / res["floor"]["step_floor_s"]
        for pool_key, name in (("vlm-rl-pool", "pool"), ("vlm-rl-pool-async", "pool_async")):
            pool = res.get(pool_key, {})
            for other in ("trl", "vlm-rl", "vlm-rl-pool"):
                if other != pool_key and "prompts_per_hour" in pool and "prompts_per_hour" in res.get(other, {}):
                    res[f"ratio_{name}_vs_{other}_prompts_per_hour"] = \
                        pool["prompts_per_hour"] / res[other]["prompts_per_hour"]
        report["results"][arch] = res
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print_table(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    return 0


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def print_table(report: dict) -> None:
    print(f"\n{report['device']}  (prompts x gens = {report['args']['prompts']} x {report['args']['generations']}, "
          f"{report['args']['new_tokens']} new tokens, {report['args']['image_size']} px, "
          f"LoRA r={report['args']['lora_r']})")
    head = f"{'arch':5} {'framework':17} {'s/step':>7} {'gen s':>7} {'train s':>7} {'prompts/h':>10} " \
           f"{'s/prompt':>8} {'tok/s':>8} {'peak GB':>8}"
    print(head)
    for arch, res in report["results"].items():
        for fw in ("trl", *MODE_KEYS.values()):
            r = res.get(fw)
            if not r:
                continue
            if "error" in r:
                print(f"{arch:5} {fw:17} ERROR {r['error'][:90]}")
                continue
            ph = r["phase_seconds"]
            train = ph.get("training", ph.get("training_and_rest", 0.0))
            print(f"{arch:5} {fw:17} {ph['step']:7.2f} {ph.get('generation', 0):7.2f} {train:7.2f} "
                  f"{r['prompts_per_hour']:10.0f} {r['seconds_per_prompt']:8.3f} "
                  f"{r['completion_tokens_per_s']:8.0f} {r['peak_memory_gb']:8.2f}")
        if "ratio_prompts_per_hour" in res:
            print(f"{arch:5} ratio vlm-rl/TRL: prompts/h x{res['ratio_prompts_per_hour']:.2f}, "
                  f"peak memory x{res['ratio_peak_memory']:.2f}")
        for key in sorted(k for k in res if k.startswith(("ratio_pool", "ratio_shared", "ratio_flex", "ratio_fp8"))):
            print(f"{arch:5} {key.removesuffix('_prompts_per_hour')}: prompts/h x{res[key]:.2f}")
        for fw in MODE_KEYS.values():
            r = res.get(fw, {})
            if "floor_ratio" in r or "first_step_seconds" in r:
                parts = [f"{r['floor_ratio']:.2f}x the floor" if "floor_ratio" in r else None,
                         f"first step {r['first_step_seconds']:.1f}s" if r.get("first_step_seconds") else None,
                         f"cold {r['first_step_cold_seconds']:.1f}s / warm {r['first_step_warm_seconds']:.1f}s"
                         if r.get("first_step_cold_seconds") else None]
                print(f"{arch:5} {fw}: " + ", ".join(p for p in parts if p))
        if "floor" in res:
            f = res["floor"]
            print(f"{arch:5} floor: decode {f['decode_floor_s']:.2f}s + prefill {f['prefill_floor_s']:.2f}s + "
                  f"train {f['train_floor_s']:.2f}s = {f['step_floor_s']:.2f}s/step "
                  f"({f['prompts_per_hour_floor']:.0f} prompts/h)")


if __name__ == "__main__":
    raise SystemExit(main())
