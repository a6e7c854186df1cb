"""How much structure an image holds beyond its noise: a good residual looks like noise.

Used to judge a field-mode run where no truth exists (real images): the residual (image minus
all models) should keep much less of the image's structure. Three numbers per image, each 0 (or
its noise value) for pure Gaussian noise of the given sigma:

- excess chi^2 per pixel: mean of (x / sigma)^2 over the finite pixels, minus 1;
- the number of sources sep detects at ``nsigma`` (``min_area`` connected pixels);
- the fraction of pixels above 3 sigma (0.00135 for Gaussian noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep

# One-sided Gaussian tail above 3 sigma: what pure noise gives for ``frac_above_3sigma``.
GAUSSIAN_FRAC_ABOVE_3SIGMA = 0.00135


@dataclass(frozen=True)
class Structure:
    """Structure of one image relative to its noise (see the module docstring)."""

    excess_chi2_per_pixel: float
    n_sources: int
    frac_above_3sigma: float


def image_structure(
    image: np.ndarray, sigma: float | np.ndarray, nsigma: float = 5.0, min_area: int = 5
) -> Structure:
    """Structure of ``image`` (H, W) against noise of standard deviation ``sigma`` (same units,
    a scalar or an (H, W) map). Non-finite pixels (masked) are left out."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {image.shape}")
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), image.shape)
    if not np.all(sigma[np.isfinite(sigma)] > 0):
        raise ValueError("noise sigma must be positive")
    good = np.isfinite(image) & np.isfinite(sigma)
    if not good.any():
        raise ValueError("image has no finite pixel")
    snr = np.where(good, image / np.where(good, sigma, 1.0), 0.0)
    sources = sep.extract(
        np.ascontiguousarray(np.where(good, image, 0.0)),
        nsigma,
        err=np.ascontiguousarray(np.where(good, sigma, 1.0)),
        mask=np.ascontiguousarray(~good),
        minarea=min_area,
    )
    return Structure(
        excess_chi2_per_pixel=float(np.mean(snr[good] ** 2) - 1.0),
        n_sources=len(sources),
        frac_above_3sigma=float(np.mean(snr[good] > 3.0)),
    )
