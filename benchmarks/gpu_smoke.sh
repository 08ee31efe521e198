#!/usr/bin/env bash
# GPU smoke test (< 8 minutes on one CUDA GPU): ViT-B/16 ProFD* training steps in fp32 / bf16 / fp16, a short
# train + eval on CUDA, the distance, evaluator, throughput and channels-last benchmarks; everything into one JSON file.
#
# Usage: bash benchmarks/gpu_smoke.sh [out_dir | report.json]
#   writes <out_dir>/gpu_smoke.json and its console log <out_dir>/gpu_smoke.log (nothing else there); out_dir
#   defaults to $OUT when set (a device runner that collects $OUT), else log/gpu_smoke. Scratch files (the
#   synthetic data, the benchmark runs) go to a temporary folder that is removed at the end.
# Needs: a CUDA build of torch, a visible GPU, and the project's dependencies (pip install -e .). No downloads.
#   Python packages missing on the machine can be brought as wheels in .whl/ (docs/PERFORMANCE.md, "GPU
#   smoke test"): they are installed into a temporary folder first, nothing else is touched.
# Exit code: 0 all steps ok, 1 a step failed (the JSON says which) or no CUDA device (one error line, at once).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-${OUT:-log/gpu_smoke}}
case "$DEST" in
    *.json) JSON=$DEST ;;
    *) JSON=$DEST/gpu_smoke.json ;;
esac
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    SITE=$(mktemp -d)
    trap 'rm -rf "$SITE"' EXIT
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# fails fast (one error line, exit 1) when torch sees no CUDA device, before anything is written
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || \
    exec "$PY" benchmarks/gpu_smoke.py --json "$JSON"
mkdir -p "$(dirname "$JSON")"
# the script keeps itself within 450 s; timeout is the backstop (pipefail keeps its exit code)
timeout 480 "$PY" benchmarks/gpu_smoke.py --device cuda --json "$JSON" 2>&1 | tee "${JSON%.json}.log"
