"""`vlm-rl dpo-data`: chosen/rejected pairs from GRPO rollouts, or from answers sampled from a model."""

from __future__ import annotations

import argparse

NAME = "dpo-data"
HELP = "build DPO pairs (JSONL) from ranked GRPO rollouts or from answers sampled from a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("source (one of)")
    source.add_argument("--rollouts", action="append", default=[], help="rollouts JSONL (repeatable)")
    source.add_argument("--model_path", "--model-path", help="sample answers from this model instead")
    sampling = parser.add_argument_group("sampling (with --model_path)")
    sampling.add_argument("--data", help="JSONL of {image, objects} to sample answers for")
    sampling.add_argument("--num_samples", "--num-samples", type=int, default=4, help="answers per image")
    sampling.add_argument("--temperature", type=float, default=1.0)
    sampling.add_argument("--max_image_size", "--max-image-size", type=int, default=448)
    sampling.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=128)
    sampling.add_argument("--batch_size", "--batch-size", type=int, default=8)
    sampling.add_argument("--limit", type=int, default=None, help="first N rows of --data only")
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--save_rollouts", "--save-rollouts", help="also write the sampled rollouts JSONL here")
    parser.add_argument("--min_margin", "--min-margin", type=float, default=0.1,
                        help="least reward gap between chosen and rejected")
    parser.add_argument("--max_pairs_per_prompt", "--max-pairs-per-prompt", type=int, default=2)
    parser.add_argument("--output", default="pairs.jsonl", help="pairs JSONL path")


def run(args: argparse.Namespace) -> int:
    from vlm_rl.dpo.pairs import build_pairs, group_rollouts, load_rollouts, sample_rollouts, write_jsonl

    if bool(args.rollouts) == bool(args.model_path):
        print("vlm-rl dpo-data: give either --rollouts FILE (repeatable) or --model_path with --data")
        return 2
    if args.model_path and not args.data:
        print("vlm-rl dpo-data: --model_path needs --data (a JSONL of images with ground truth)")
        return 2
    try:
        if args.rollouts:
            records = [r for path in args.rollouts for r in load_rollouts(path)]
        else:
            records = sample_rollouts(
                args.model_path, args.data, args.num_samples, args.temperature, max_image_size=args.max_image_size,
                max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, limit=args.limit, seed=args.seed,
            )
            if args.save_rollouts:
                write_jsonl(records, args.save_rollouts)
        groups = group_rollouts(records)
        pairs = build_pairs(groups, min_margin=args.min_margin, max_pairs_per_prompt=args.max_pairs_per_prompt)
    except (OSError, ValueError) as exc:
        print(f"vlm-rl dpo-data: {exc}")
        return 2
    write_jsonl(pairs, args.output)
    with_pairs = {(p["sample_id"], p["prompt"]) for p in pairs}
    skipped = sum(1 for key in groups if key not in with_pairs)
    print(
        f"rollouts: {len(records)} in {len(groups)} prompts\n"
        f"pairs built: {len(pairs)} (from {len(with_pairs)} prompts)\n"
        f"prompts skipped for no margin >= {args.min_margin}: {skipped}\n"
        f"output: {args.output}"
    )
    return 0
