#!/usr/bin/env bash
# Reproduce docs/RESULTS.md on the synthetic occluded dataset (CPU is fine; ~40 minutes on 2 cores): the main job
# (with its global-only re-evaluation), the tiny-ViT decoder/distance ablations and the torchreid baselines.
# Every row is a tools/main.py run; the distance rows re-evaluate a trained checkpoint (--eval-only).
# Usage: bash benchmarks/synthetic_results.sh [out_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-log/synthetic_results}
PY=${PYTHON:-python}
mkdir -p "$(dirname "$OUT")"
CFG=configs/profd_synthetic_vit.yaml  # the ablations were measured with the tiny ViT
row() { grep "synthetic_occluded |" "$1" | sed "s/^/$2 /"; }

$PY tools/main.py --config-file configs/profd_synthetic.yaml data.save_dir $OUT/main > $OUT.main.log 2>&1 \
  || { echo "main job failed, see $OUT.main.log"; exit 1; }
row $OUT.main.log "main job (tiny_rn) distance=visibility"
$PY tools/main.py --config-file configs/profd_synthetic.yaml --eval-only profd.test.distance global \
  model.load_weights "$(ls $OUT/main/profd-train-*/model/model.pth.tar-30 | tail -1)" data.save_dir $OUT/main-global \
  > $OUT.main-global.log 2>&1
row $OUT.main-global.log "main job (tiny_rn) distance=global"

for attn in hybrid none sea spa; do
  $PY tools/main.py --config-file $CFG data.save_dir $OUT/$attn profd.decoder.attention $attn > $OUT.$attn.log 2>&1 \
    || { echo "run $attn failed, see $OUT.$attn.log"; exit 1; }
  row $OUT.$attn.log "attention=$attn distance=visibility"
  for dist in global parts; do
    $PY tools/main.py --config-file $CFG --eval-only profd.decoder.attention $attn profd.test.distance $dist \
      model.load_weights "$(ls $OUT/$attn/profd-train-*/model/model.pth.tar-30 | tail -1)" data.save_dir $OUT/$attn-$dist > $OUT.$attn-$dist.log 2>&1
    row $OUT.$attn-$dist.log "attention=$attn distance=$dist"
  done
done
for model in osnet_x0_25 resnet18; do
  $PY tools/main.py --config-file configs/baseline_osnet_synthetic.yaml model.name $model \
    data.save_dir $OUT/$model > $OUT.$model.log 2>&1
  row $OUT.$model.log "$model"
done
