"""The dataset file: writing shards atomically, merging them, and the one reader.

Layout: ``docs/dataset_layout.md``. Every writer goes through a temporary name and
``os.replace``, so a file that exists is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
from astropy.table import Table

from vaedeblend.simulation.noise import add_noise

IMAGE_KEYS = ("blend", "target", "others")
SCALAR_KEYS = ("snr", "blendedness", "blendedness_closest", "n_sources", "detected", "noise_seed")


def atomic_path(path: Path) -> Path:
    """Temporary sibling of ``path``, to be renamed onto it once complete."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_h5(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, str]) -> None:
    """Write ``arrays`` and string ``attrs`` to ``path`` atomically, byte-reproducibly
    (no object timestamps)."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        with h5py.File(tmp, "w", track_order=False) as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            for key, value in arrays.items():
                chunks = (1, *value.shape[1:]) if value.ndim >= 3 and len(value) else None
                f.create_dataset(key, data=value, chunks=chunks, track_times=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def merge_shards(
    shard_paths: list[Path], out: Path, meta: dict, extra: dict[str, np.ndarray] | None = None
) -> None:
    """Concatenate shard files (in order) into ``out`` atomically, adding the ``extra`` arrays
    (per-dataset, not per-sample: e.g. the PSF images) as they are.

    Arrays are copied one shard at a time, so memory stays at one shard.
    """
    out = Path(out)
    tmp = atomic_path(out)
    with h5py.File(shard_paths[0], "r") as first:
        keys = list(first.keys())
    sizes = {k: 0 for k in keys}
    shapes, dtypes = {}, {}
    for p in shard_paths:
        with h5py.File(p, "r") as f:
            for k in keys:
                sizes[k] += f[k].shape[0]
                shapes[k], dtypes[k] = f[k].shape[1:], f[k].dtype
    try:
        with h5py.File(tmp, "w", track_order=False) as f:
            f.attrs["meta"] = json.dumps(meta, sort_keys=True)
            for k, value in (extra or {}).items():
                f.create_dataset(k, data=value, track_times=False)
            for k in keys:
                chunks = (1, *shapes[k]) if len(shapes[k]) >= 2 and sizes[k] else None
                f.create_dataset(
                    k,
                    shape=(sizes[k], *shapes[k]),
                    dtype=dtypes[k],
                    chunks=chunks,
                    track_times=False,
                )
            start = {k: 0 for k in keys}
            for p in shard_paths:
                with h5py.File(p, "r") as shard:
                    for k in keys:
                        block = shard[k][...]
                        f[k][start[k] : start[k] + len(block)] = block
                        start[k] += len(block)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


class DatasetError(ValueError):
    """A dataset file that is missing, corrupt or not in vaedeblend's layout."""


class SimDataset:
    """Read access to a simulated dataset (see ``docs/dataset_layout.md``).

    Images come back as float32 numpy arrays (N, C, H, W) in electrons.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            parts = self.path.with_name(self.path.name + ".parts")
            hint = " (an unfinished run: start it again to resume)" if parts.exists() else ""
            raise DatasetError(f"dataset {self.path} does not exist{hint}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise DatasetError(f"{self.path} is not a readable HDF5 file: {err}") from err
        if "meta" not in self._file.attrs or "blend" not in self._file:
            self._file.close()
            raise DatasetError(f"{self.path} is not a vaedeblend dataset (no 'meta' or 'blend')")
        self.meta = json.loads(self._file.attrs["meta"])

    def __len__(self) -> int:
        return int(self._file["blend"].shape[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._file.close()

    def keys(self) -> list[str]:
        return list(self._file.keys())

    @property
    def band_ids(self) -> list[str]:
        return list(self.meta["band_ids"])

    @property
    def pixel_scales_arcsec(self) -> np.ndarray:
        return np.asarray(self.meta["pixel_scales_arcsec"], dtype=float)

    @property
    def sky_levels_electrons(self) -> np.ndarray:
        return np.asarray(self.meta["sky_levels_electrons"], dtype=float)

    @property
    def psf(self) -> np.ndarray:
        """(C, P, P) PSF images at each band's pixel scale, unit sum."""
        return self._file["psf"][...]

    @property
    def truth(self) -> Table:
        return Table(self._file["truth"][...])

    def read(self, name: str, index=slice(None)) -> np.ndarray:
        if name not in self._file:
            raise KeyError(f"dataset {self.path} has no array {name!r} (has {self.keys()})")
        return self._file[name][index]

    def redraw_noise(self, noiseless: np.ndarray, noise_seed: int) -> np.ndarray:
        """A fresh noisy image of a noiseless (C, H, W) or (N, C, H, W) image, with this
        dataset's noise model and sky levels."""
        noiseless = np.asarray(noiseless)
        if noiseless.ndim == 3:
            return add_noise(noiseless, self.sky_levels_electrons, noise_seed, self.meta["noise"])
        rng = np.random.default_rng(noise_seed)
        seeds = rng.integers(0, 2**63 - 1, size=len(noiseless))
        return np.stack(
            [self.redraw_noise(x, int(s)) for x, s in zip(noiseless, seeds, strict=True)]
        )


def open_dataset(path: str | os.PathLike) -> SimDataset:
    """Open a dataset written by ``vaedeblend simulate`` (the package's one reader)."""
    return SimDataset(path)


def remove_parts(parts_dir: Path) -> None:
    shutil.rmtree(parts_dir, ignore_errors=True)
