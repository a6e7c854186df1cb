#!/usr/bin/env bash
# Continues the shipped models on a lent accelerator machine (issue 12): simulates fresh training
# data there with every core (only 64 MiB of files travel to it), continues each shipped VAE
# (--init-from), then continues its deblender on the continued VAE's frozen decoder, and writes
# both exported models with their training records (lineage: steps and hours of every run) to
# OUT, the folder that comes back. Sized for the device tool's 10-minute commands:
#
#   bash benchmarks/gpu_continue.sh OUT VAE_MINUTES DEBLENDER_MINUTES [NAME ...]
#
# (minutes may be fractional; each deblender gets DEBLENDER_MINUTES; VAE_MINUTES 0 continues
# the deblenders alone, on the shipped VAE's decoder: BCE continuation of the LSST VAE made its
# shapes rounder, RESULTS.md "...: lsst VAE, GPU continuation"). On the device, through
# benchmarks/gpu_device.sh (dependencies: benchmarks/gpu_sitepack.sh), e.g.
#   CENTRINGS="detected centred" N_ISO=20000 N_BLEND=12000 \
#     bash benchmarks/gpu_device.sh "$OUT" 2.5 1.5 lsst        (about 7.5 minutes on an H200)
# Measured there (2026-12-04, H200, bf16, batch 256): the VAE ran about 2,750 steps a minute,
# a deblender 2,100 to 2,300; that example took 7.6 minutes in all.
#
# NAME: lsst (default), lsst_euclid, hsc. Environment: CENTRINGS (the deblenders to continue,
# default "detected"; "detected centred" also continues lsst-centred), N_ISO, N_BLEND (set
# sizes; N_BLEND per centring), WORKERS (simulation processes, default all cores; the blend sets
# are simulated with two fewer while the VAE trains), ACCEL (auto), PRECISION (default
# bf16-mixed when a CUDA device is present, else 32-true), BATCH (256), LR (1e-3), STEPS_PER_MIN
# (planned steps per minute: each cosine ends that many steps after the shipped model's lineage),
# SHAPE_WEIGHT (the deblenders' --shape-weight, default 2000: it moved lsst-centred's m from
# -0.284 to -0.230 at equal steps, RESULTS.md "lsst centred deblender, shape penalty"),
# RESPONSE_WEIGHT (the deblenders' --response-weight, default 1000) and RESPONSE_MEMORY (their
# --response-memory, default 3200 / BATCH batches: the ~3,200 galaxies of 50 CPU batches of 64):
# the running per-S/N-bin penalty moved lsst-centred's m from -0.099 to -0.075 in 8,000 steps
# (R 300: -0.096), RESULTS.md "lsst centred deblender, running response by S/N bin"),
# RESPONSE_KSB_GAIN (their --response-ksb-gain; default unset: off; when set, the deblenders
# also export their last validated weights, --export-weights last, since the validation loss
# asks every bin for slope 1 and best-loss export would undo the steering), EMA_DECAY (their
# --ema-decay; default unset: off), FLUX_WEIGHT and FLUX_MEMORY (their --flux-weight, default
# unset: off, and --flux-memory, default 3200 / BATCH batches: W 200 with EMA_DECAY 0.998 moved
# the detected LSST deblender's binned |median dmag| from 0.212 to 0.088 in 5,000 CPU steps,
# docs/models.md), EXPORT_WEIGHTS (best, the default, or last: the final averaged weights, as
# shipped with EMA_DECAY in the ninth session of 2026-12-06; RESPONSE_KSB_GAIN implies last),
# ENCODER_WIDTHS and ENCODER_DENSE_DIM (the deblenders' --encoder-widths and
# --encoder-dense-dim: an encoder wider than the VAE's, grown from the shipped one computing the
# same function; 48,96,192,384 and 512 make a 22 MB float32 deblender, over the 16 MB a file
# may come back with: add TRAIN_EXTRA="--weights-dtype float16"), TRAIN_EXTRA (appended to
# every training; tests use it).
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
read -r -a CENTRINGS <<< "${CENTRINGS:-detected}"
declare -A SEED_OFFSET=([detected]=1 [centred]=11 [uniform]=21)  # blend set seed = VAE's + this
for centring in "${CENTRINGS[@]}"; do
  [ -n "${SEED_OFFSET[$centring]:-}" ] || { echo "unknown centring $centring" >&2; exit 2; }
done
N_ISO=${N_ISO:-40000}
N_BLEND=${N_BLEND:-20000}
WORKERS=${WORKERS:-$(nproc)}
ACCEL=${ACCEL:-auto}
if [ -z "${PRECISION:-}" ]; then
  PRECISION=$(python -c "import torch; print('bf16-mixed' if torch.cuda.is_available() else '32-true')")
fi
BATCH=${BATCH:-256}
MEMORY=$(( (3200 + BATCH - 1) / BATCH ))  # batches holding ~3,200 galaxies (50 CPU batches of 64)
EXPORT=${EXPORT_WEIGHTS:-best}
if [ -n "${RESPONSE_KSB_GAIN:-}" ]; then EXPORT=last; fi
LR=${LR:-1e-3}
STEPS_PER_MIN=${STEPS_PER_MIN:-2500}
mkdir -p "$OUT/data"

COMMON=(--batch-size "$BATCH" --lr "$LR" --steps-per-epoch 200 --patience 0 --accelerator "$ACCEL"
        --precision "$PRECISION" --no-progress ${TRAIN_EXTRA:-})

seconds() { awk -v m="$1" 'BEGIN { printf "%d", m * 60 }'; }  # minutes may be fractional
steps() { awk -v m="$1" -v r="$STEPS_PER_MIN" 'BEGIN { printf "%d", m * r }'; }

lineage_steps() {  # steps already in a shipped model's lineage: the cosine is counted over them
  python -c 'import json, sys
from vaedeblend.pretrained import pretrained_dir
t = json.loads((pretrained_dir(sys.argv[1], sys.argv[2]) / "config.json").read_text())["training"]
print(t.get("lineage", {}).get("steps", t.get("global_step", 0)))' "$1" "$2"
}

for name in "${NAMES[@]}"; do
  read -r preset instruments stamp seed shipped <<< "${SPEC[$name]}"
  d=$OUT/data
  sim=(vaedeblend simulate --preset "$preset" --instruments "$instruments" --stamp-size "$stamp"
       --quiet)
  [ "$VAE_MIN" = 0 ] || [ -f "$d/iso_$name.h5" ] || "${sim[@]}" --workers "$WORKERS" \
    --kind isolated --centring uniform --seed "$seed" --n "$N_ISO" --out "$d/iso_$name.h5"
  # the blend sets are simulated while the VAE trains (it needs the GPU and a core or two)
  bg_workers=$(( WORKERS > 2 ? WORKERS - 2 : WORKERS ))
  (
    for centring in "${CENTRINGS[@]}"; do
      f=$d/blend_${name}_$centring.h5
      [ -f "$f" ] || "${sim[@]}" --workers "$bg_workers" --kind blended --centring "$centring" \
        --seed $((seed + ${SEED_OFFSET[$centring]})) --n "$N_BLEND" --out "$f"
    done
  ) &
  blends_pid=$!
  if [ "$VAE_MIN" = 0 ]; then  # the deblenders alone, on the shipped VAE's decoder
    vae=$(python -c 'import sys; from vaedeblend.pretrained import pretrained_dir
print(pretrained_dir(sys.argv[1], "vae"))' "$shipped")
  else
    vae=$OUT/vae_$name
    vae_from=$(lineage_steps "$shipped" vae)
    vaedeblend train vae --data "$d/iso_$name.h5" --out "$vae" --init-from "$shipped" \
      --max-time "$(seconds "$VAE_MIN")" --warmup-steps 50 \
      --schedule-steps $((vae_from + $(steps "$VAE_MIN") + 1)) "${COMMON[@]}"
  fi
  wait "$blends_pid"
  for centring in "${CENTRINGS[@]}"; do
    # the detected deblender is the instrument's default (lsst); the others are lsst-centred, ...
    if [ "$centring" = detected ]; then from=$shipped; run=deblender_$name
    else from=$shipped-$centring; run=deblender_${name}_$centring; fi
    deb_from=$(lineage_steps "$from" deblender)
    vaedeblend train deblender --vae "$vae" --init-from "$from" \
      --data "$d/blend_${name}_$centring.h5" --out "$OUT/$run" --max-time "$(seconds "$DEB_MIN")" \
      --warmup-steps 50 --schedule-steps $((deb_from + $(steps "$DEB_MIN") + 1)) \
      --shape-weight "${SHAPE_WEIGHT:-2000}" --response-weight "${RESPONSE_WEIGHT:-1000}" \
      --response-memory "${RESPONSE_MEMORY:-$MEMORY}" \
      ${RESPONSE_KSB_GAIN:+--response-ksb-gain "$RESPONSE_KSB_GAIN"} \
      ${EMA_DECAY:+--ema-decay "$EMA_DECAY"} --export-weights "$EXPORT" \
      ${FLUX_WEIGHT:+--flux-weight "$FLUX_WEIGHT" --flux-memory "${FLUX_MEMORY:-$MEMORY}"} \
      ${ENCODER_WIDTHS:+--encoder-widths "$ENCODER_WIDTHS"} \
      ${ENCODER_DENSE_DIM:+--encoder-dense-dim "$ENCODER_DENSE_DIM"} \
      "${COMMON[@]}"
    rm -rf "$OUT/$run/checkpoints"
  done
  # the data stay behind: only the models and their records come back
  rm -f "$d/iso_$name.h5" "$d"/blend_"$name"_*.h5
  rm -rf "$OUT/vae_$name/checkpoints"
done
echo "continued: ${NAMES[*]} in $OUT"
