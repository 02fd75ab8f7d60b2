"""SFT: LoRA supervised fine-tuning on ground-truth answers (job driver, targets, export)."""
