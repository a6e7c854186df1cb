#!/usr/bin/env bash
# Runs on the lent accelerator machine (the device tool's `run`, carry [".sitepack"]): unpacks
# the dependencies packed by gpu_sitepack.sh, continues the shipped models with
# gpu_continue.sh, and leaves each model in OUT as its own <run>.tgz (a file comes back only
# under 16 MB: one float32 model is 8.6 MB). Arguments after OUT go to gpu_continue.sh; its
# environment (CENTRINGS, N_ISO, ...) passes through. LIMIT_S (default 530) stops the training
# in time for the models to be packed inside the device's 10-minute command.
#
#   bash benchmarks/gpu_device.sh "$OUT" 2.5 1.5 lsst
set -uo pipefail
OUT=${1:?output folder}
shift
cd "$(dirname "$0")/.."
site=/tmp/vaedeblend_site
mkdir -p "$site" /tmp/vaedeblend_bin
tar -C "$site" -xJf .sitepack/site.tar.xz || exit 3
# the image's Python with PyTorch is a virtual environment: call it by its own path (a symlink
# to it elsewhere starts the system Python, without numpy)
export PATH=/tmp/vaedeblend_bin:/opt/torch/.venv/bin:$PATH PYTHONPATH=$site:$PWD/src
export PYTHONUNBUFFERED=1
printf '#!/bin/sh\nexec python3 -m vaedeblend.cli "$@"\n' > /tmp/vaedeblend_bin/vaedeblend
chmod +x /tmp/vaedeblend_bin/vaedeblend
python3 -c "import galsim, astropy, dask.distributed, sep, photutils, torch, vaedeblend.cli
print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 3
runs=/tmp/vaedeblend_runs
timeout -k 5 "${LIMIT_S:-530}" bash benchmarks/gpu_continue.sh "$runs" "$@" > "$OUT/log.txt" 2>&1
status=$?
cd "$runs" || exit 1
for run in vae_* deblender_*; do
  [ -f "$run/model.safetensors" ] && tar --exclude=checkpoints --exclude=tb -czf "$OUT/$run.tgz" "$run"
done
grep -E "wrote|model written|Time limit|Error|error" "$OUT/log.txt"
ls -l "$OUT"
exit $status
