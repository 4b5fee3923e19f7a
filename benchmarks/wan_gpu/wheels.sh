#!/usr/bin/env bash
# Fills .whl/ (ignored by git) with the wheels a GPU machine without network needs besides what its image
# holds (torch with CUDA, transformers, huggingface-hub, accelerate, peft, typer, rich, pluggy, tensorboard,
# numpy, scipy, pillow, ...): diffusers, DeepSpeed and DeepSpeed's pydantic, hjson, tomli-w and
# importlib-metadata, each at the version installed here (the one the test suite ran with), for the
# machine's Python (3.12 on x86-64 Linux unless DEVICE_PYTHON says another). DeepSpeed publishes only a
# source archive; it is built here into a pure-Python wheel (its CUDA ops compile just in time there).
#
#     bash benchmarks/wan_gpu/wheels.sh        # then device.sh on the GPU machine, with .whl carried
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
TARGET=${DEVICE_PYTHON:-3.12}
PACKAGES=(diffusers deepspeed pydantic pydantic_core annotated-types typing-inspection hjson tomli_w importlib_metadata)

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
pins=()
for name in "${PACKAGES[@]}"; do
    pins+=("$name==$(version "$name")")
done
rm -rf .whl
mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
binary=()
for pin in "${pins[@]}"; do
    [[ $pin == deepspeed==* ]] || binary+=("$pin")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$TARGET" --implementation cp \
    "${platforms[@]}" -d .whl "${binary[@]}"
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w .whl "$(printf '%s\n' "${pins[@]}" | grep '^deepspeed==')"
ls .whl
du -sh .whl
