#!/usr/bin/env bash
# Trains the models shipped in src/vaedeblend/pretrained/ with the project's own commands, on a
# 2-core CPU: each model's VAE, then its deblender (detected centring); the models named run in
# parallel, one torch thread each (THREADS to change). Re-running resumes every step that did
# not finish.
#
#   bash benchmarks/train_pretrained.sh VAE_MINUTES DEBLENDER_MINUTES [NAME ...]
#
# NAME: lsst_euclid and lsst (paper preset, 64x64, the default) or hsc (survey preset: HSC wide
# depth from surveycodex, g,r,i,z,y at 0.168", 32x32). N_ISO and N_BLEND (environment) set the
# training-set sizes; the VAE sets' noise is redrawn every epoch, the detected sets keep theirs
# (contracts.md), so they are the larger ones. TRAIN_EXTRA (environment) is appended to both
# training commands (tests use it for a few-step run).
#
# Data, runs and logs go to ${VAEDEBLEND_HOME:-~/.cache/vaedeblend}; the exported models are then
# copied into the package by benchmarks/ship_pretrained.py.
set -euo pipefail
HOME_DIR=${VAEDEBLEND_HOME:-$HOME/.cache/vaedeblend}
D=$HOME_DIR/data
R=$HOME_DIR/runs
mkdir -p "$D" "$R" "$HOME_DIR/logs"
VAE_MIN=${1:?VAE minutes}
DEB_MIN=${2:?deblender minutes}
shift 2
if [ $# -gt 0 ]; then NAMES=("$@"); else NAMES=(lsst_euclid lsst); fi
N_ISO=${N_ISO:-12000}
N_BLEND=${N_BLEND:-20000}
export OMP_NUM_THREADS=${THREADS:-1}

# INIT=shipped continues the shipped models (--init-from: the VAE from the shipped VAE, the
# deblender's encoder from the shipped deblender, on the continued VAE's decoder), so that each
# session adds to the last; without it, training starts from scratch. STEPS_PER_MIN (default 70,
# one thread, batch 64) sizes the warm-up + cosine schedule to the minutes given.
INIT=${INIT:-}
STEPS_PER_MIN=${STEPS_PER_MIN:-70}

# name -> preset, instruments, stamp size, seed of the VAE set (the deblender set: seed + 1)
declare -A SPEC=(
  [lsst_euclid]="paper lsst+euclid 64 101"
  [lsst]="paper lsst 64 103"
  [hsc]="survey hsc 32 105"
)

simulate() {  # preset instruments stamp kind centring seed size file
  [ -f "$8" ] || vaedeblend simulate --preset "$1" --instruments "$2" --stamp-size "$3" \
    --kind "$4" --centring "$5" --seed "$6" --n "$7" --out "$8" --quiet
}

# the deblender inherits its architecture and loss from the VAE
COMMON=(--lr 1e-3 --batch-size 64 --steps-per-epoch 200 --patience 0 --scheduler warmup_cosine
        --seed 0 --no-progress ${TRAIN_EXTRA:-})
# INTENSITY_SCALE (environment) multiplies the VAE's I_b (with INIT=shipped: the shipped VAE's);
# the deblender keeps its VAE's. 2 moved the LSST VAE's m from -0.25 to -0.19 (RESULTS.md,
# "Accuracy against CPU-hours: lsst VAE, intensity scale"); once shipped, leave it unset.
VAE_ONLY=(--arch fast --loss bce ${INTENSITY_SCALE:+--intensity-scale "$INTENSITY_SCALE"})
resume_flag() { [ -d "$1/checkpoints" ] && echo --resume || true; }

# VAE sets: isolated galaxies with uniform +-0.1" offsets (like the offsets detection leaves),
# so that the noise can be redrawn every epoch. Deblender sets: detected centring.
for name in "${NAMES[@]}"; do
  [ -n "${SPEC[$name]:-}" ] || { echo "unknown model name $name (${!SPEC[*]})" >&2; exit 2; }
done

for name in "${NAMES[@]}"; do
  read -r preset instruments stamp seed <<< "${SPEC[$name]}"
  simulate "$preset" "$instruments" "$stamp" isolated uniform "$seed" "$N_ISO" "$D/iso_$name.h5"
  simulate "$preset" "$instruments" "$stamp" blended detected $((seed + 1)) "$N_BLEND" \
    "$D/blend_detected_$name.h5"
done

# --init-from and the schedule's end (a lineage step): continue the shipped model of NAME
init_args() {  # name part minutes
  local shipped=${1/_/+} steps=0
  if [ "$INIT" = shipped ]; then
    steps=$(python - "$shipped" "$2" <<'PY'
import json, sys
from vaedeblend.pretrained import pretrained_dir
record = json.loads((pretrained_dir(sys.argv[1], sys.argv[2]) / "config.json").read_text())
training = record["training"]
print((training.get("lineage") or {}).get("steps") or training["global_step"])
PY
)
    echo --init-from "$shipped"
  fi
  echo --schedule-steps $((steps + $3 * STEPS_PER_MIN + 1))
}

pipeline() {  # name
  local vae=$R/vae_$1 deb=$R/deblender_$1
  [ -f "$vae/DONE" ] || { vaedeblend train vae --data "$D/iso_$1.h5" --out "$vae" \
      --max-time $((VAE_MIN * 60)) $(init_args "$1" vae "$VAE_MIN") "${VAE_ONLY[@]}" \
      "${COMMON[@]}" $(resume_flag "$vae") && touch "$vae/DONE"; }
  [ -f "$deb/DONE" ] || { vaedeblend train deblender --vae "$vae" \
      --data "$D/blend_detected_$1.h5" --out "$deb" --max-time $((DEB_MIN * 60)) \
      $(init_args "$1" deblender "$DEB_MIN") "${COMMON[@]}" $(resume_flag "$deb") \
      && touch "$deb/DONE"; }
}
pids=()
for name in "${NAMES[@]}"; do
  pipeline "$name" > "$HOME_DIR/logs/train_$name.log" 2>&1 &
  pids+=($!)
done
# a plain `wait` returns 0 whatever the pipelines did: wait for each and fail if one failed
failed=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "training ${NAMES[$i]} failed: see $HOME_DIR/logs/train_${NAMES[$i]}.log" >&2; failed=1; }
done
[ "$failed" = 0 ]
echo "trained: ${NAMES[*]} in $R"
