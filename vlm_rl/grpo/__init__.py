"""GRPO: the loop (phases, timed), its job driver, the Ray Train worker and rank-0 sinks."""
