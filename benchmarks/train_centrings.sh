#!/usr/bin/env bash
# Trains the deblenders that the paper table's other rows need (the paper trained one deblender
# per centring of the target): each starts from a VAE shipped in src/vaedeblend/pretrained/, so
# its frozen decoder is the shipped one, and is trained with the project's own commands on blends
# of its own centring. They are not shipped (the package carries the `detected` ones, what field
# mode meets); benchmarks/paper_table.py takes them with --model-lsst-centred etc.
#
#   bash benchmarks/train_centrings.sh DEBLENDER_MINUTES [NAME ...]
#
# NAME: lsst_centred, lsst_uniform, lsst_euclid_centred (default: all three, one after the
# other, one simulation worker and one torch thread: run two invocations side by side to use
# two cores). N_BLEND (environment, default 15000) sets the training-set size; TRAIN_EXTRA is
# appended to the training command. Re-running resumes what did not finish.
#
# Data, runs and logs go to ${VAEDEBLEND_HOME:-~/.cache/vaedeblend}.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SHIPPED=${SHIPPED:-$HERE/../src/vaedeblend/pretrained}
HOME_DIR=${VAEDEBLEND_HOME:-$HOME/.cache/vaedeblend}
D=$HOME_DIR/data
R=$HOME_DIR/runs
mkdir -p "$D" "$R" "$HOME_DIR/logs"
DEB_MIN=${1:?deblender minutes}
shift 1
if [ $# -gt 0 ]; then NAMES=("$@"); else NAMES=(lsst_centred lsst_uniform lsst_euclid_centred); fi
N_BLEND=${N_BLEND:-15000}
export OMP_NUM_THREADS=${THREADS:-1}

# name -> instruments, centring, shipped VAE, seed of the training set (never a test seed:
# the shipped models used 101-106, paper_table.py 9001-9004, the demo 20261123)
declare -A SPEC=(
  [lsst_centred]="lsst centred lsst 107"
  [lsst_uniform]="lsst uniform lsst 108"
  [lsst_euclid_centred]="lsst+euclid centred lsst_euclid 109"
)
for name in "${NAMES[@]}"; do
  [ -n "${SPEC[$name]:-}" ] || { echo "unknown name $name (${!SPEC[*]})" >&2; exit 2; }
done

COMMON=(--lr 1e-3 --batch-size 100 --steps-per-epoch 100 --patience 0 --scheduler plateau
        --seed 0 --no-progress ${TRAIN_EXTRA:-})
for name in "${NAMES[@]}"; do
  read -r instruments centring vae seed <<< "${SPEC[$name]}"
  data=$D/blend_$name.h5
  [ -f "$data" ] || vaedeblend simulate --preset paper --instruments "$instruments" \
    --kind blended --centring "$centring" --seed "$seed" --n "$N_BLEND" --workers 1 \
    --out "$data" --quiet
done
for name in "${NAMES[@]}"; do
  read -r instruments centring vae seed <<< "${SPEC[$name]}"
  run=$R/deblender_$name
  [ -f "$run/DONE" ] && continue
  resume=()
  [ -d "$run/checkpoints" ] && resume=(--resume)
  vaedeblend train deblender --vae "$SHIPPED/$vae/vae" --data "$D/blend_$name.h5" --out "$run" \
    --max-time $((DEB_MIN * 60)) "${COMMON[@]}" "${resume[@]}" \
    > "$HOME_DIR/logs/train_$name.log" 2>&1 \
    || { echo "training $name failed: see $HOME_DIR/logs/train_$name.log" >&2; exit 1; }
  touch "$run/DONE"
done
echo "trained: ${NAMES[*]} in $R"
