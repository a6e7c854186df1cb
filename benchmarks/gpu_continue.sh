#!/usr/bin/env bash
# Continues the shipped models on a lent accelerator machine (issue 12): simulates fresh training
# data there with every core (only 64 MiB of files travel to it), continues each shipped VAE
# (--init-from), then continues its deblender on the continued VAE's frozen decoder, and writes
# both exported models with their training records (lineage: steps and hours of every run) to
# OUT, the folder that comes back. Sized for the device tool's 10-minute commands:
#
#   bash benchmarks/gpu_continue.sh OUT VAE_MINUTES DEBLENDER_MINUTES [NAME ...]
#   e.g. on the device:  bash benchmarks/gpu_continue.sh "$OUT" 3 3 lsst     (about 9 minutes)
#
# NAME: lsst (default), lsst_euclid, hsc. Environment: N_ISO, N_BLEND (set sizes), WORKERS
# (simulation processes, default all cores), ACCEL (auto), PRECISION (default bf16-mixed when a
# CUDA device is present, else 32-true), BATCH (256), LR (1e-3), STEPS_PER_MIN (planned steps
# per minute, for the cosine's length), TRAIN_EXTRA (appended to both trainings; tests use it).
# Then, back on the CPU machine: evaluate the models in OUT (benchmarks/accuracy_vs_training.py)
# and ship them with benchmarks/ship_pretrained.py if they are better.
set -euo pipefail
OUT=${1:?output folder}
VAE_MIN=${2:?VAE minutes}
DEB_MIN=${3:?deblender minutes}
shift 3
if [ $# -gt 0 ]; then NAMES=("$@"); else NAMES=(lsst); fi
declare -A SPEC=(  # name -> preset instruments stamp seed shipped-name (seeds unused elsewhere)
  [lsst_euclid]="paper lsst+euclid 64 301 lsst+euclid"
  [lsst]="paper lsst 64 303 lsst"
  [hsc]="survey hsc 32 305 hsc"
)
for name in "${NAMES[@]}"; do
  [ -n "${SPEC[$name]:-}" ] || { echo "unknown model name $name (${!SPEC[*]})" >&2; exit 2; }
done
N_ISO=${N_ISO:-40000}
N_BLEND=${N_BLEND:-20000}
WORKERS=${WORKERS:-$(nproc)}
ACCEL=${ACCEL:-auto}
if [ -z "${PRECISION:-}" ]; then
  PRECISION=$(python -c "import torch; print('bf16-mixed' if torch.cuda.is_available() else '32-true')")
fi
BATCH=${BATCH:-256}
LR=${LR:-1e-3}
STEPS_PER_MIN=${STEPS_PER_MIN:-1500}
mkdir -p "$OUT/data"

COMMON=(--batch-size "$BATCH" --lr "$LR" --steps-per-epoch 200 --patience 0 --accelerator "$ACCEL"
        --precision "$PRECISION" --no-progress ${TRAIN_EXTRA:-})
for name in "${NAMES[@]}"; do
  read -r preset instruments stamp seed shipped <<< "${SPEC[$name]}"
  d=$OUT/data
  sim=(vaedeblend simulate --preset "$preset" --instruments "$instruments" --stamp-size "$stamp"
       --workers "$WORKERS" --quiet)
  [ -f "$d/iso_$name.h5" ] || "${sim[@]}" --kind isolated --centring uniform --seed "$seed" \
    --n "$N_ISO" --out "$d/iso_$name.h5"
  [ -f "$d/blend_$name.h5" ] || "${sim[@]}" --kind blended --centring detected \
    --seed $((seed + 1)) --n "$N_BLEND" --out "$d/blend_$name.h5"
  vaedeblend train vae --data "$d/iso_$name.h5" --out "$OUT/vae_$name" --init-from "$shipped" \
    --max-time $((VAE_MIN * 60)) --warmup-steps 50 \
    --schedule-steps $((VAE_MIN * STEPS_PER_MIN + 1)) "${COMMON[@]}"
  vaedeblend train deblender --vae "$OUT/vae_$name" --init-from "$shipped" \
    --data "$d/blend_$name.h5" --out "$OUT/deblender_$name" --max-time $((DEB_MIN * 60)) \
    --warmup-steps 50 --schedule-steps $((DEB_MIN * STEPS_PER_MIN + 1)) "${COMMON[@]}"
  # the data stay behind: only the models and their records come back
  rm -f "$d/iso_$name.h5" "$d/blend_$name.h5"
  rm -rf "$OUT/vae_$name/checkpoints" "$OUT/deblender_$name/checkpoints"
done
echo "continued: ${NAMES[*]} in $OUT"
