# Sourced by bench/device/make_*_wheels.sh: what every carried wheel folder needs.
# wheel_folder DIR: from the project's root, DIR created and ignored (.git/info/exclude); sets $work (a temp dir).
# deepspeed_wheel [VERSION]: DeepSpeed ships only an sdist; a pure-Python wheel into $work (its CUDA ops compile
# at run time on the GPU machine).
# $plat: pip's options for CPython 3.12 x86_64 binary wheels (the GPU image's Python).
plat="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
--platform manylinux1_x86_64"

wheel_folder() {
  cd "$(git rev-parse --show-toplevel)"
  grep -qx "/$1/" .git/info/exclude 2>/dev/null || echo "/$1/" >> .git/info/exclude
  mkdir -p "$1"
  work=$(mktemp -d)
}

deepspeed_wheel() {
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" -q install wheel setuptools
  "$work/venv/bin/pip" -q download --no-deps --no-binary=:all: "deepspeed${1:+==$1}" -d "$work/sdist"
  DS_BUILD_OPS=0 "$work/venv/bin/pip" -q wheel --no-deps --no-build-isolation -w "$work" "$work"/sdist/deepspeed-*.tar.gz
}
