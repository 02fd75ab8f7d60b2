"""TRL's side of the throughput bench: GRPOTrainer.train on the same model, data and settings."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from throughput_common import _free, _reset_peak, summarise


# -- TRL --------------------------------------------------------------------------------------------------
def run_trl(model_dir: Path, train: str, args) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from vlm_rl.data.schema import load_jsonl
    from vlm_rl.models.loading import load_model, load_processor
    from vlm_rl.models.lora import LANGUAGE_TARGETS
    from vlm_rl.models.prompts import build_messages, detection_instruction
    from vlm_rl.rewards.detection import combined_reward
    from vlm_rl.rollout.engine import prepare_prompt
    from vlm_rl.rollout.types import PromptItem

    gpu = args.device == "cuda"
    instruction = detection_instruction(None)
    records = []
    for s in load_jsonl(train).samples:
        image, solution = prepare_prompt(PromptItem.from_sample(s), args.image_size, "qwen3_vl")
        records.append({"prompt": build_messages(instruction), "image": image, "solution": solution})
    dataset = Dataset.from_list(records)

    def reward(completions, solution, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [r["total"] for r in combined_reward(texts, solution)]

    _reset_peak()
    t0 = time.perf_counter()
    model = load_model(model_dir, dtype=torch.bfloat16 if gpu else torch.float32, device=args.device)
    processor = load_processor(model_dir)
    n = args.prompts * args.generations
    trl_args = TRLConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=n,
        gradient_accumulation_steps=1, num_generations=args.generations, max_completion_length=args.new_tokens,
        generation_kwargs={"min_new_tokens": args.new_tokens}, beta=args.beta, loss_type="dapo",
        learning_rate=1e-5, gradient_checkpointing=True, bf16=gpu, use_cpu=not gpu,
        max_steps=args.warmup + args.steps, logging_steps=1, report_to="none", save_strategy="no",
        seed=0, dataloader_num_workers=0, remove_unused_columns=False,
    )
    peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                             target_modules=LANGUAGE_TARGETS, bias="none")
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=trl_args, train_dataset=dataset,
                          processing_class=processor, peft_config=peft_config)
    rows: list[dict] = []
    gen_time = {"s": 0.0, "tokens": 0}
    inner = trainer._generate_single_turn

    def timed_generate(*a, **kw):
        if gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        completion_ids, logprobs = inner(*a, **kw)
        if gpu:
            torch.cuda.synchronize()
        gen_time["s"] += time.perf_counter() - t
        gen_time["tokens"] += sum(len(c) for c in completion_ids)
        return completion_ids, logprobs

    trainer._generate_single_turn = timed_generate

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            if gpu:
                torch.cuda.synchronize()
            gen_time.update(s=0.0, tokens=0)
            self.t = time.perf_counter()

        def on_step_end(self, *a, **kw):
            if gpu:
                torch.cuda.synchronize()
            step = time.perf_counter() - self.t
            row = {"step": step, "generation": gen_time["s"], "training_and_rest": step - gen_time["s"],
                   "tokens": gen_time["tokens"]}
            rows.append(row)
            print(f"  trl step {len(rows)}: " + " ".join(f"{k}={v:.2f}" for k, v in row.items()), flush=True)

    trainer.add_callback(Timer())
    setup = time.perf_counter() - t0
    trainer.train()
    result = summarise("trl", rows, args)
    result["setup_seconds"] = setup
    del trainer, model
    _free()
    return result
