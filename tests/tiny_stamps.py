"""Tiny synthetic datasets in the documented layout (docs/dataset_layout.md), for the model and
training tests: elliptical Gaussian galaxies, three bands, 16x16 stamps. Fast to write and to
train on; not a physical simulation."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

BANDS = ["lsst_g", "lsst_r", "lsst_i"]
SKY = np.array([40.0, 80.0, 120.0])
PIXEL_SCALES = [0.2, 0.2, 0.2]
# A network small enough to train in seconds on a CPU (the ``fast`` architecture, narrowed);
# ``widths`` sets the depth: one stride-2 level per width, so 16x16 stamps take two.
TINY_NETWORK = dict(
    arch="fast",
    widths=(8, 16),
    latent_dim=8,
    dense_dim=32,
    out_width=8,
    batch_size=32,
    lr=3e-3,
    accelerator="cpu",
    progress=False,
)


def _galaxy(rng, size: int, centre: tuple[float, float]) -> np.ndarray:
    """(C, size, size) electrons: an elliptical Gaussian with a random colour."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    dx, dy = x - centre[0], y - centre[1]
    sigma = rng.uniform(1.0, 2.5)
    q, angle = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, (-s * dx + c * dy) / q
    profile = np.exp(-0.5 * (u * u + v * v) / sigma**2)
    profile /= profile.sum()
    flux = rng.uniform(2e3, 2e4)
    colour = np.array([0.6, 1.0, 1.3]) * rng.uniform(0.7, 1.3, 3)
    return (flux * colour)[:, None, None] * profile[None]


def write_tiny_dataset(
    path: Path,
    n: int = 256,
    size: int = 16,
    blended: bool = False,
    seed: int = 0,
    centring: str = "centred",
    bands: list[str] | None = None,
) -> Path:
    """Write ``n`` samples to ``path`` (HDF5, arrays (N, C, size, size) float32 electrons)."""
    rng = np.random.default_rng(seed)
    c = len(BANDS)
    target = np.zeros((n, c, size, size), np.float32)
    others = np.zeros_like(target)
    for i in range(n):
        target[i] = _galaxy(rng, size, (0.0, 0.0))
        for _ in range(rng.integers(1, 3) if blended else 0):
            r, phi = rng.uniform(2.0, 5.0), rng.uniform(0, 2 * np.pi)
            others[i] += _galaxy(rng, size, (r * np.cos(phi), r * np.sin(phi)))
    sky = SKY[:, None, None]
    blend = (rng.poisson(target + others + sky) - sky).astype(np.float32)
    meta = {
        "band_ids": bands or BANDS,
        "sky_levels_electrons": SKY.tolist(),
        "pixel_scales_arcsec": PIXEL_SCALES,
        "fingerprint": f"tiny-{seed}-{n}-{size}-{blended}",
        "centring": centring,
        "kind": "blended" if blended else "isolated",
        "noise": "poisson",
    }
    with h5py.File(path, "w") as f:
        f.attrs["meta"] = json.dumps(meta)
        for name, arr in (("blend", blend), ("target", target), ("others", others)):
            f.create_dataset(name, data=arr)
    return path
