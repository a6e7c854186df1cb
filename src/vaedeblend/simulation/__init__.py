"""The simulator: simulated galaxies drawn into multi-band stamps, datasets and fields.

Modules, lowest first (docs/architecture.md): ``noise`` (sky-subtracted Poisson or Gaussian
noise), ``render`` (galaxies into (C, H, W) stamps, each channel at its own pixel scale),
``blends`` (one sample: galaxy count, placement, centring, noise), ``run`` (a dataset: shards in
parallel with Dask, merged into one HDF5 file) and ``field`` (a simulated field: one FITS file per
band with its truth table).

The names of ``run`` (``simulate_dataset``, ``SimSpec``, ``CatalogSpec``, ...) are also
importable from here, loaded on first use so that ``simulation.noise`` stays light for the
dataset reader.
"""

from __future__ import annotations

import importlib

_RUN_NAMES = (
    "CALIBRATION_SHEARS",
    "CatalogSpec",
    "SimSpec",
    "calibration_path",
    "dataset_meta",
    "discard_foreign_shards",
    "simulate_dataset",
    "simulate_shard",
    "truth_dtype",
)

__all__ = list(_RUN_NAMES)


def __getattr__(name: str):
    if name in _RUN_NAMES:
        return getattr(importlib.import_module("vaedeblend.simulation.run"), name)
    raise AttributeError(f"module 'vaedeblend.simulation' has no attribute {name!r}")
