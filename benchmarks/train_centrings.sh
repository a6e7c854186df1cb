#!/usr/bin/env bash
# Trains the deblenders that the paper table's other rows need (the paper trained one deblender
# per centring of the target): each uses a VAE shipped in src/vaedeblend/pretrained/ (its frozen
# decoder is the shipped one), continues that instrument's shipped detected-centring deblender
# (--init-from, its lineage counted) on blends of its own centring, with the recipe of
# train_pretrained.sh (batch 64, warm-up + cosine over the lineage), and is shipped by
# `python benchmarks/ship_pretrained.py --centrings` as lsst-centred, lsst-uniform and
# lsst+euclid-centred; benchmarks/paper_table.py uses those names.
#
#   bash benchmarks/train_centrings.sh DEBLENDER_MINUTES [NAME ...]
#
# NAME: lsst_centred, lsst_uniform, lsst_euclid_centred (default: all three, one after the
# other, one simulation worker and one torch thread: run two invocations side by side to use
# two cores). N_BLEND (environment, default 12000) sets the training-set size; TRAIN_EXTRA is
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
N_BLEND=${N_BLEND:-12000}
export OMP_NUM_THREADS=${THREADS:-1}

# name -> instruments, centring, shipped model, seed of the training set (never a test seed:
# the shipped models used 101-106, paper_table.py 9001-9004, the demo 20261123), and optimiser
# steps per minute on one thread at batch 64 (measured; it sizes the cosine's end to the minutes)
declare -A SPEC=(
  [lsst_centred]="lsst centred lsst 107 120"
  [lsst_uniform]="lsst uniform lsst 108 120"
  [lsst_euclid_centred]="lsst+euclid centred lsst_euclid 109 95"
)
for name in "${NAMES[@]}"; do
  [ -n "${SPEC[$name]:-}" ] || { echo "unknown name $name (${!SPEC[*]})" >&2; exit 2; }
done

COMMON=(--lr 1e-3 --batch-size 64 --steps-per-epoch 200 --patience 0 --scheduler warmup_cosine
        --seed 0 --no-progress ${TRAIN_EXTRA:-})
lineage_steps() {  # shipped model dir -> steps of its deblender's lineage
  python - "$1/deblender/config.json" <<'PY'
import json, sys
training = json.load(open(sys.argv[1]))["training"]
print((training.get("lineage") or {}).get("steps") or training["global_step"])
PY
}
for name in "${NAMES[@]}"; do
  read -r instruments centring vae seed _ <<< "${SPEC[$name]}"
  data=$D/blend_$name.h5
  [ -f "$data" ] || vaedeblend simulate --preset paper --instruments "$instruments" \
    --kind blended --centring "$centring" --seed "$seed" --n "$N_BLEND" --workers 1 \
    --out "$data" --quiet
done
for name in "${NAMES[@]}"; do
  read -r instruments centring vae seed rate <<< "${SPEC[$name]}"
  run=$R/deblender_$name
  [ -f "$run/DONE" ] && continue
  resume=()
  [ -d "$run/checkpoints" ] && resume=(--resume)
  end=$(( $(lineage_steps "$SHIPPED/$vae") + DEB_MIN * rate + 1 ))
  vaedeblend train deblender --vae "$SHIPPED/$vae/vae" --init-from "$SHIPPED/$vae/deblender" \
    --data "$D/blend_$name.h5" --out "$run" --max-time $((DEB_MIN * 60)) \
    --schedule-steps "$end" "${COMMON[@]}" "${resume[@]}" \
    > "$HOME_DIR/logs/train_$name.log" 2>&1 \
    || { echo "training $name failed: see $HOME_DIR/logs/train_$name.log" >&2; exit 1; }
  touch "$run/DONE"
done
echo "trained: ${NAMES[*]} in $R"
