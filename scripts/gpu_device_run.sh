#!/usr/bin/env bash
# scripts/gpu_check.py on a fresh GPU machine whose python3 has torch, torchvision, timm,
# numpy, pandas, pyarrow, pillow, matplotlib, scipy... but not hiergeo's geography and
# metric-learning packages: those travel as wheels in $WHEELS (default .whl/ at the repo's
# root; make them with `pip download --no-deps --only-binary=:all: --python-version 3.12 ...`
# as results/benchmarks/README.md says) and are installed into $SITE, nothing else touched.
#
#   OUT=/path/for/results bash scripts/gpu_device_run.sh [gpu_check.py options]
#
# Writes gpu.json, gpu.md and gpu_check.log to $OUT (default results/benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-results/benchmarks}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" scripts/gpu_check.py --out-dir "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
