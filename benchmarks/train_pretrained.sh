#!/usr/bin/env bash
# Trains the models shipped in src/vaedeblend/pretrained/ (LSST and LSST + Euclid, paper preset,
# detected centring) with the project's own commands, on a 2-core CPU: both instrument choices
# in parallel, one torch thread each. Re-running resumes every step that did not finish.
#
#   bash benchmarks/train_pretrained.sh [VAE_MINUTES] [DEBLENDER_MINUTES]
#
# N_ISO and N_BLEND (environment) set the training-set sizes. The VAE sets' noise is redrawn
# every epoch; the detected sets keep theirs (contracts.md), so they are the larger ones.
#
# Data, runs and logs go to ${VAEDEBLEND_HOME:-~/.cache/vaedeblend}; the exported models are then
# copied into the package by benchmarks/ship_pretrained.py.
set -euo pipefail
HOME_DIR=${VAEDEBLEND_HOME:-$HOME/.cache/vaedeblend}
D=$HOME_DIR/data
R=$HOME_DIR/runs
mkdir -p "$D" "$R" "$HOME_DIR/logs"
VAE_MIN=${1:-40}
DEB_MIN=${2:-45}
N_ISO=${N_ISO:-12000}
N_BLEND=${N_BLEND:-20000}

# VAE sets: isolated galaxies with uniform +-0.1" offsets (like the offsets detection leaves),
# so that the noise can be redrawn every epoch. Deblender sets: detected centring.
simulate() {  # instruments kind centring seed name size
  [ -f "$D/$5.h5" ] || vaedeblend simulate --preset paper --instruments "$1" --kind "$2" \
    --centring "$3" --n "$6" --seed "$4" --out "$D/$5.h5" --quiet
}
simulate lsst+euclid isolated uniform 101 iso_lsst_euclid "$N_ISO"
simulate lsst+euclid blended detected 102 blend_detected_lsst_euclid "$N_BLEND"
simulate lsst isolated uniform 103 iso_lsst "$N_ISO"
simulate lsst blended detected 104 blend_detected_lsst "$N_BLEND"

COMMON=(--arch fast --loss bce --lr 1e-3 --batch-size 100 --steps-per-epoch 100 --patience 0
        --scheduler plateau --seed 0 --no-progress)
resume_flag() { [ -d "$1/checkpoints" ] && echo --resume || true; }

pipeline() {  # name
  local vae=$R/vae_$1 deb=$R/deblender_$1
  [ -f "$vae/DONE" ] || { vaedeblend train vae --data "$D/iso_$1.h5" --out "$vae" \
      --max-time $((VAE_MIN * 60)) "${COMMON[@]}" $(resume_flag "$vae") && touch "$vae/DONE"; }
  [ -f "$deb/DONE" ] || { vaedeblend train deblender --vae "$vae" \
      --data "$D/blend_detected_$1.h5" --out "$deb" --max-time $((DEB_MIN * 60)) \
      "${COMMON[@]}" $(resume_flag "$deb") && touch "$deb/DONE"; }
}
export OMP_NUM_THREADS=1
pipeline lsst_euclid > "$HOME_DIR/logs/train_lsst_euclid.log" 2>&1 &
pipeline lsst > "$HOME_DIR/logs/train_lsst.log" 2>&1 &
wait
echo "trained: $R/vae_lsst_euclid $R/deblender_lsst_euclid $R/vae_lsst $R/deblender_lsst"
