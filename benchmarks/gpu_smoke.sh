#!/usr/bin/env bash
# GPU smoke test (< 8 minutes on one CUDA GPU): ViT-B/16 ProFD* training steps in fp32 / bf16 / fp16, a short
# train + eval on CUDA, the distance, evaluator and throughput benchmarks; everything into one JSON file.
# Usage: bash benchmarks/gpu_smoke.sh [out_dir]        (default log/gpu_smoke; writes <out_dir>/gpu_smoke.json)
# Needs: the project installed (pip install -e .), a CUDA build of torch and a visible GPU. No downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-log/gpu_smoke}
PY=${PYTHON:-python}
"$PY" - <<'PYEOF' || exit 1
import sys
import torch
if not torch.cuda.is_available():
    print(f"error: no CUDA device visible to torch {torch.__version__} (CUDA build {torch.version.cuda}): "
          "benchmarks/gpu_smoke.sh needs a GPU machine", file=sys.stderr)
    sys.exit(1)
print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PYEOF
mkdir -p "$OUT"
# the script keeps itself within 450 s; timeout is the backstop (pipefail keeps its exit code)
timeout 480 "$PY" benchmarks/gpu_smoke.py --device cuda --out "$OUT" 2>&1 | tee "$OUT/gpu_smoke.log"
