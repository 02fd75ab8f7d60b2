"""vlm-rl: GRPO reinforcement learning for Qwen vision-language object detection, on Ray."""

__version__ = "0.1.0"
