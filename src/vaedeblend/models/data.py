"""Training data: a dataset file loaded into memory, split, batched, augmented and re-noised.

Images are read only through :func:`vaedeblend.dataset.open_dataset`. Training keeps the
noiseless ``target`` and ``others`` (N, C, H, W, electrons); a fresh noise realisation is drawn
for every batch on the training device (:func:`add_noise`), so every epoch sees new noise. Sets
whose centring is ``detected`` keep their stored noisy ``blend``: that noise decided where the
stamp is centred. Validation always uses the stored ``blend`` (a fixed noise realisation, so
validation losses are comparable between epochs).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from vaedeblend.models.api import band_permutation
from vaedeblend.models.normalisation import NormConstantsAccumulator

# Rows read from the HDF5 file at a time: bounds the temporary memory while splitting.
READ_CHUNK = 2048


@dataclass
class DataInfo:
    """What training needs to know about a dataset besides its images."""

    path: str
    band_ids: list[str]
    pixel_scales_arcsec: list[float]
    sky_levels_electrons: np.ndarray
    noise: str
    centring: str
    kind: str
    fingerprint: str | None
    n_total: int
    stored_noise: bool
    # (C, P, P) PSF images in the model's band order, and the band the paper's numbers
    # (and KSB's m) are measured in
    psf: np.ndarray | None = None
    reference_band: str = "lsst_r"


@dataclass
class SplitArrays:
    """In-memory training and validation arrays, float32 (N, C, H, W) electrons, in the model's
    band order. ``others`` is None for isolated sets; ``train['blend']`` exists only when the
    stored noise is used for training."""

    info: DataInfo
    train: dict[str, np.ndarray] = field(default_factory=dict)
    val: dict[str, np.ndarray] = field(default_factory=dict)
    norm_constants: np.ndarray | None = None


def split_indices(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask (n,), True for validation samples: a fixed, seeded random split."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * n))
    if val_fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng([seed, 7919]).permutation(n)[:n_val]] = True
    return mask


def load_split(
    path: str | os.PathLike,
    val_fraction: float = 0.1,
    seed: int = 0,
    band_ids: list[str] | None = None,
    stored_noise: bool | None = None,
    bands_of: str = "the model's",
) -> SplitArrays:
    """Read a dataset into memory and split it into training and validation parts.

    Args:
        path: a dataset written by ``vaedeblend simulate``.
        val_fraction: fraction of samples kept for validation (fixed by ``seed``).
        seed: seed of the split.
        band_ids: reorder channels to this order (a permutation of the dataset's bands);
            None keeps the dataset's order. ``bands_of`` names them in errors.
        stored_noise: train on the stored noisy ``blend`` instead of redrawing noise; None
            decides from the dataset (True only for ``detected`` centring).

    The normalisation constants I_b are computed from the training part's stored ``blend``.
    """
    from vaedeblend.dataset import open_dataset

    with open_dataset(path) as ds:
        info = _data_info(ds, path, stored_noise)
        perm = None
        if band_ids is not None:
            perm, _ = band_permutation(list(ds.band_ids), list(band_ids), bands_of)
            _reorder_info(info, perm)
        is_val = split_indices(len(ds), val_fraction, seed)
        if is_val.all() or len(ds) == 0:
            raise ValueError(f"dataset {path} has {len(ds)} samples: too few to train on")
        out = SplitArrays(info)
        accumulator = NormConstantsAccumulator()
        names = ["blend", "target"] + ([] if info.kind == "isolated" else ["others"])
        for name in names:
            keep_train = name != "blend" or info.stored_noise
            train, val = _read_split(ds, name, is_val, perm, keep_train, accumulator)
            if keep_train:
                out.train[name] = train
            out.val[name] = val
        out.norm_constants = accumulator.result()
    return out


def _data_info(ds, path, stored_noise: bool | None) -> DataInfo:
    meta = ds.meta
    centring = meta.get("centring", "centred")
    return DataInfo(
        path=os.fspath(path),
        band_ids=list(ds.band_ids),
        pixel_scales_arcsec=[float(s) for s in ds.pixel_scales_arcsec],
        sky_levels_electrons=np.asarray(ds.sky_levels_electrons, dtype=np.float64),
        noise=meta.get("noise", "poisson"),
        centring=centring,
        kind=meta.get("kind", "blended"),
        fingerprint=meta.get("fingerprint"),
        n_total=len(ds),
        stored_noise=(centring == "detected") if stored_noise is None else bool(stored_noise),
        psf=np.asarray(ds.psf, dtype=np.float64) if "psf" in ds.keys() else None,
        reference_band=meta.get("reference_band", "lsst_r"),
    )


def _reorder_info(info: DataInfo, perm: list[int]) -> None:
    info.band_ids = [info.band_ids[i] for i in perm]
    info.pixel_scales_arcsec = [info.pixel_scales_arcsec[i] for i in perm]
    info.sky_levels_electrons = info.sky_levels_electrons[perm]
    if info.psf is not None:
        info.psf = info.psf[perm]


def _read_split(ds, name, is_val, perm, keep_train, accumulator):
    """(train, val) float32 arrays of ``name``, read in chunks; the training part of
    ``blend`` feeds the normalisation constants."""
    n = len(is_val)
    first = ds.read(name, slice(0, 1))
    shape = first.shape[1:]
    n_val = int(is_val.sum())
    train = np.empty((n - n_val, *shape), np.float32) if keep_train else None
    val = np.empty((n_val, *shape), np.float32)
    t_pos = v_pos = 0
    bad: list[int] = []
    for start in range(0, n, READ_CHUNK):
        block = ds.read(name, slice(start, start + READ_CHUNK)).astype(np.float32, copy=False)
        finite = np.isfinite(block).all(axis=tuple(range(1, block.ndim)))
        bad += (start + np.flatnonzero(~finite)).tolist()
        if bad:
            continue  # keep scanning to name every bad sample, but stop copying
        if perm is not None:
            block = block[:, perm]
        m = is_val[start : start + READ_CHUNK]
        if name == "blend":
            accumulator.add(block[~m])
        if keep_train:
            train[t_pos : t_pos + int((~m).sum())] = block[~m]
        val[v_pos : v_pos + int(m.sum())] = block[m]
        t_pos += int((~m).sum())
        v_pos += int(m.sum())
    if bad:
        first = ", ".join(str(i) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(
            f"{ds.path}: '{name}' has NaN or infinite pixels in {len(bad)} of {n} samples "
            f"(indices {first}); training on them would give NaN losses"
        )
    return train, val


class StampDataset(torch.utils.data.Dataset):
    """In-memory tensors indexed by a whole batch of indices at once (one gather per array,
    no per-sample collation). ``dataset[idx]`` -> dict of (B, C, H, W) tensors."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = {k: torch.from_numpy(v) for k, v in arrays.items()}
        self.n = len(next(iter(self.arrays.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return {k: v.index_select(0, idx) for k, v in self.arrays.items()}


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields index tensors: ``steps`` batches of ``batch_size`` for one rank of ``world``.

    Each epoch draws a fresh seeded permutation (cycled when the set is smaller than one
    epoch), deals consecutive batches to the ranks in turn, so ranks never share a sample
    within a pass. ``steps=None`` means one pass over the data. ``set_epoch`` is called by
    Lightning at each epoch start.
    """

    def __init__(self, n, batch_size, steps=None, seed=0, rank=0, world=1, shuffle=True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.shuffle = rank, world, shuffle
        if shuffle:
            per_rank = n // (batch_size * world)
        else:
            # Every rank gets the same number of batches (some possibly empty).
            per_rank = math.ceil(math.ceil(n / world) / batch_size)
        self.steps = steps if steps is not None else max(1, per_rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        if not self.shuffle:
            yield from self._sequential()
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        need = self.steps * self.batch_size * self.world
        order = np.concatenate([rng.permutation(self.n) for _ in range(-(-need // self.n))])
        for step in range(self.steps):
            start = (step * self.world + self.rank) * self.batch_size
            yield torch.from_numpy(order[start : start + self.batch_size])

    def _sequential(self):
        # Validation: this rank's share of the samples, in order, in ``steps`` batches.
        mine = np.arange(self.rank, self.n, self.world)
        for part in np.array_split(mine, self.steps):
            yield torch.from_numpy(part)


def add_noise(
    signal: torch.Tensor, sky: torch.Tensor, model: str, generator=None, draw: str = "exact"
):
    """Noisy sky-subtracted images from noiseless ``signal`` (N, C, H, W) electrons.

    ``poisson``: Poisson(signal + sky) - sky, as the simulator (negative signal pixels, from
    FFT ringing, are added back unchanged); with ``draw="gaussian"``, a Gaussian of the same
    variance (sky + signal) instead: several times cheaper on a CPU, where ``torch.poisson``
    runs on one core, and indistinguishable at the sky levels of the surveys (hundreds to tens
    of thousands of electrons per pixel). ``gaussian``: signal + N(0, sky) (the simulator's
    Gaussian model has the sky variance alone). ``sky``: (C,) electrons per pixel.
    """
    sky = sky.to(signal).reshape(1, -1, 1, 1)
    if model == "poisson" and draw == "exact":
        positive = signal.clamp(min=0)
        counts = torch.poisson(positive + sky, generator=generator)
        return counts - sky + (signal - positive)
    if model in ("poisson", "gaussian"):
        var = signal.clamp(min=0) + sky if model == "poisson" else sky
        noise = torch.randn(signal.shape, generator=generator, device=signal.device)
        return signal + noise * var.sqrt()
    raise ValueError(f"unknown noise model {model!r} (poisson, gaussian)")


def random_dihedral(tensors: list[torch.Tensor], generator=None) -> list[torch.Tensor]:
    """Apply the same random flip / transpose (one of 8 per sample) to each (N, C, H, W) tensor
    of ``tensors``; H must equal W."""
    n, device = tensors[0].shape[0], tensors[0].device
    draws = torch.rand((3, n), generator=generator, device=device) < 0.5
    out = []
    for t in tensors:
        t = torch.where(draws[0].reshape(-1, 1, 1, 1), t.flip(-1), t)
        t = torch.where(draws[1].reshape(-1, 1, 1, 1), t.flip(-2), t)
        t = torch.where(draws[2].reshape(-1, 1, 1, 1), t.transpose(-1, -2), t)
        out.append(t)
    return out
