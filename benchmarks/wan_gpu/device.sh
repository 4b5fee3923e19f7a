#!/usr/bin/env bash
# On a GPU machine with no network, from the repository's root, with .whl/ (wheels.sh) beside it:
# installs the carried wheels and this tree's grpo into /tmp/site, then runs the checks, the benchmark or
# both, each under a time limit, with every log and result file written to $OUT as it is produced.
#
#     bash benchmarks/wan_gpu/device.sh checks          # gpu_checks.py: the recipe families, DeepSpeed and torch
#     bash benchmarks/wan_gpu/device.sh bench           # run.py: the Wan2.1-1.3B-sized benchmark
#     bash benchmarks/wan_gpu/device.sh all             # both, checks first
#     bash benchmarks/wan_gpu/device.sh all --smoke     # the same on a CPU with tiny sizes (a dry run)
#
# Limits (seconds) come from CHECKS_SECONDS (default 300) and BENCH_SECONDS (default 420); BENCH_ARGS adds
# options of run.py (e.g. "--only BranchGRPO DiffusionNFT" or "--frames 9").
set -uo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-all}
smoke=${2:-}
OUT=${OUT:-$PWD/device-out}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"
case $mode in checks | bench | all) ;; *) echo "device.sh: mode must be checks, bench or all, not '$mode'" >&2; exit 2 ;; esac
case $smoke in "" | --smoke) ;; *) echo "device.sh: the second argument can only be --smoke, not '$smoke'" >&2; exit 2 ;; esac
if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "device.sh: no wheels in .whl/: run benchmarks/wan_gpu/wheels.sh here and carry .whl" >&2
    exit 2
fi

export PYTHONUNBUFFERED=1 PYTHONPATH=$SITE
PY=${PYTHON:-python3}
{
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl &&
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .
} >"$OUT/install.log" 2>&1 || { tail -n 30 "$OUT/install.log"; exit 3; }
"$PY" - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import importlib.metadata as m, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)")
for name in ("grpo", "diffusers", "deepspeed", "transformers", "huggingface-hub", "peft", "accelerate", "pydantic"):
    print(name, m.version(name))
EOF
command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1

status=0
if [ "$mode" != bench ]; then
    args=(--out "$OUT")
    [ -n "$smoke" ] && args+=(--cpu)
    timeout "${CHECKS_SECONDS:-300}" "$PY" benchmarks/wan_gpu/gpu_checks.py "${args[@]}" 2>&1 | tee "$OUT/checks.log"
    status=$((status | $?))
fi
if [ "$mode" != checks ]; then
    args=(--out "$OUT")
    [ -n "$smoke" ] && args+=(--tiny --cpu --iterations 2)
    # shellcheck disable=SC2206  # BENCH_ARGS holds run.py's options, split into words
    [ -n "${BENCH_ARGS:-}" ] && args+=($BENCH_ARGS)
    timeout "${BENCH_SECONDS:-420}" "$PY" benchmarks/wan_gpu/run.py "${args[@]}" 2>&1 | tee "$OUT/run.log"
    status=$((status | $?))
fi
ls -la "$OUT"
exit "$status"
