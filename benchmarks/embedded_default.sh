#!/usr/bin/env bash
# The backbone search behind configs/profd_synthetic.yaml (docs/RESULTS.md, "Choosing the embedded
# default"): every run trains 30 epochs on one of the two synthetic sets, the ProFD runs are re-evaluated
# with the global-only distance. One thread per run (several ran side by side on 2 cores).
# Usage: bash benchmarks/embedded_default.sh [out_dir] [run name ...]   (default: every run; hours on 2 cores)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-log/embedded_default}; shift || true
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PROFD=configs/profd_synthetic_vit.yaml   # the shared recipe; the runs below only change the backbone or one knob
BASE=configs/baseline_osnet_synthetic.yaml
DS1="data.root $OUT/data1"
DS2="data.root $OUT/data2 profd.synthetic.num_ids 60 profd.synthetic.images_per_id 4 profd.synthetic.seed 7"
RN="profd.clip.name tiny_rn profd.clip.stride 16"
declare -A RUNS=(
  [r18_ds1]="1 $BASE model.name resnet18"
  [vit_tiny_ds1]="1 $PROFD"
  [rn16_s16_ds1]="1 $PROFD $RN"
  [r18_ds2]="2 $BASE model.name resnet18"
  [r18_bs16_ds2]="2 $BASE model.name resnet18 train.batch_size 16"
  [r18_64x32_ds2]="2 $BASE model.name resnet18 data.height 64 data.width 32 profd.augment.pad 3"
  [vit_tiny_ds2]="2 $PROFD"
  [rn16_s16_ds2]="2 $PROFD $RN"
  [rn16_s32_ds2]="2 $PROFD profd.clip.name tiny_rn profd.clip.stride 32"
  [rn16_s16_lr3e-3_ds2]="2 $PROFD $RN train.lr 0.003"
  [rn16_s16_lr3.5e-4_ds2]="2 $PROFD $RN train.lr 0.00035"
  [rn16_s16_wd5e-4_ds2]="2 $PROFD $RN train.weight_decay 0.0005"
  [rn16_s16_bs16_ds2]="2 $PROFD $RN train.batch_size 16"
  [rn16_s16_wu1_ds2]="2 $PROFD $RN profd.train.warmup_epochs 1"
  [rn16_s16_wu1_pcl0_ds2]="2 $PROFD $RN profd.train.warmup_epochs 1 profd.loss.pcl_global 0.0 profd.loss.pcl_parts 0.0"
  [rn16_s16_wu1_none_ds2]="2 $PROFD $RN profd.train.warmup_epochs 1 profd.decoder.attention none"
  [rn16_s16_wu1_att3_al1_ds2]="2 $PROFD $RN profd.train.warmup_epochs 1 profd.loss.attention 3.0 profd.loss.alignment 1.0"
  [rn16e256_s16_ds2]="2 $PROFD profd.clip.name rn_w16_1111_e256 profd.clip.stride 16"
  [rn16x2_s16_ds2]="2 $PROFD profd.clip.name rn_w16_2222_e128 profd.clip.stride 16"
  [rn16x2_s16_bs16_ds2]="2 $PROFD profd.clip.name rn_w16_2222_e128 profd.clip.stride 16 train.batch_size 16"
  [rn12_s16_ds1]="1 $PROFD profd.clip.name rn_w12_1111 profd.clip.stride 16"
  [rn12_s16_ds2]="2 $PROFD profd.clip.name rn_w12_1111 profd.clip.stride 16"
  [rn8_s16_ds2]="2 $PROFD profd.clip.name rn_w8_1111 profd.clip.stride 16"
  [rn24_s16_ds2]="2 $PROFD profd.clip.name rn_w24_1111 profd.clip.stride 16"
  [rn32_s16_ds2]="2 $PROFD profd.clip.name rn_w32_1111 profd.clip.stride 16"
  [rn32x2_s16_ds2]="2 $PROFD profd.clip.name rn_w32_2222 profd.clip.stride 16"
  [rn32x2_s32_ds2]="2 $PROFD profd.clip.name rn_w32_2222 profd.clip.stride 32"
  [rn32x2_s16_64x32_ds2]="2 $PROFD profd.clip.name rn_w32_2222 profd.clip.stride 16 data.height 64 data.width 32 profd.augment.pad 3"
  [rn64_s16_64x32_ds2]="2 $PROFD profd.clip.name rn_w64_1111 profd.clip.stride 16 data.height 64 data.width 32 profd.augment.pad 3"
)
NAMES=("$@"); [ ${#NAMES[@]} -eq 0 ] && NAMES=($(printf '%s\n' "${!RUNS[@]}" | sort))
mkdir -p "$OUT"
for NAME in "${NAMES[@]}"; do
  read -r DS CFG OPTS <<< "${RUNS[$NAME]}"
  [ "$DS" = 1 ] && DATA=$DS1 || DATA=$DS2
  DIR=$OUT/$NAME
  # shellcheck disable=SC2086
  $PY benchmarks/main_with_clip_configs.py --config-file $CFG $DATA data.save_dir $DIR $OPTS > $DIR.log 2>&1 \
    || { echo "$NAME failed, see $DIR.log"; continue; }
  echo "$NAME visibility $(grep 'synthetic_occluded |' $DIR.log)"
  CK=$(ls -v $DIR/*-train-*/model/model.pth.tar-30 2>/dev/null | tail -1)
  if [ "$CFG" = "$PROFD" ] && [ -n "$CK" ]; then
    # shellcheck disable=SC2086
    $PY benchmarks/main_with_clip_configs.py --config-file $CFG $DATA data.save_dir $DIR-global $OPTS --eval-only \
      model.load_weights $CK profd.test.distance global > $DIR-global.log 2>&1
    echo "$NAME global $(grep 'synthetic_occluded |' $DIR-global.log)"
  fi
done
