#!/usr/bin/env bash
# Packs the dependencies that the lent accelerator machine lacks (its image has PyTorch,
# Lightning, h5py, scipy, matplotlib, scikit-image; not GalSim, astropy, Dask, sep, photutils,
# speclite, surveycodex, zuko) for its Python 3.12, small enough to travel with the working tree
# (64 MiB in all, the tracked files included): GalSim's wheel is 55 MB because its extension
# keeps its debug symbols, 4 MB stripped. Run here, in the repository root, once per session:
#
#   bash benchmarks/gpu_sitepack.sh          # -> .sitepack/site.tar.xz (about 12 MB)
#
# then name .sitepack in the device call's carry and run benchmarks/gpu_device.sh there.
# Versions: the ones installed here (constraints.txt's environment).
set -euo pipefail
cd "$(dirname "$0")/.."
for path in /.whl/ /.site/ /.sitepack/; do
  grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude
done
PACKAGES=(GalSim LSSTDESC.Coord astropy astropy-iers-data pyerfa surveycodex speclite dask
          distributed partd locket tblib zict tornado photutils sep zuko)
rm -rf .whl .site && mkdir -p .whl .site .sitepack
for name in "${PACKAGES[@]}"; do
  version=$(python -m pip show "$name" | awk '/^Version:/ { print $2 }')
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$name==$version"
done
for wheel in .whl/*.whl; do python -m zipfile -e "$wheel" .site; done
# not used by the simulation (sensor models and the Roman telescope's files: 8 MB)
rm -rf .site/galsim/share/sensors .site/galsim/share/roman .site/docs
find .site -name "*.so" -size +500k -exec strip --strip-unneeded {} \;
tar -C .site -cJf .sitepack/site.tar.xz .
ls -l .sitepack/site.tar.xz
