"""Source detection with sep on an S/N-weighted sum of the reference-grid bands.

The detection image is D = sum_b w_b I_b with w_b = 1 / (median noise variance of band b), the
optimal weighting for a source of flat spectrum in sky-dominated images; its per-pixel noise
variance is sum_b w_b^2 V_b. sep thresholds the (matched-filtered) image at ``nsigma`` times
that noise, pixel by pixel, so maps whose noise varies across the field are handled.

On a residual image (later iterations) the noise of each band also holds the Poisson noise of
the models found so far (when no variance map gives it) and ``model_error`` times the models
themselves: a model that is 10 % wrong on a bright galaxy leaves residuals far above the sky
noise, which would otherwise be detected as new sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class DetectionSettings:
    """sep settings.

    Attributes:
        nsigma: threshold per pixel of the filtered detection image, in noise sigmas. At
            1.5 the noise percolates into one large region around the bright galaxies and
            sep's contrast criterion hides faint ones inside it; 3 was measured to keep
            purity near 99 % on the paper-preset LSST fields (docs/field_mode.md).
        min_area: minimum number of pixels above the threshold.
        deblend_nthresh, deblend_cont: sep's multi-threshold deblending.
        model_error: fraction of the current models counted as noise in the residual.
    """

    nsigma: float = 3.0
    min_area: int = 5
    deblend_nthresh: int = 32
    deblend_cont: float = 0.005
    model_error: float = 0.1


def detection_image(images, variances) -> tuple[np.ndarray, np.ndarray]:
    """(D, var_D): S/N-weighted sum of (H, W) images (electrons) and its noise variance
    (electrons^2, weighted); ``variances`` are per-pixel (H, W) arrays in electrons^2."""
    d = np.zeros(images[0].shape, dtype=np.float64)
    var = np.zeros_like(d)
    for image, v in zip(images, variances, strict=True):
        positive = v[v > 0]
        if not positive.size:
            continue  # a band with no noise information (e.g. all masked) does not vote
        w = 1.0 / float(np.median(positive))
        d += w * image
        var += w * w * v
    return d, var


def detect(images, variances, bad, origin, settings: DetectionSettings):
    """Sources in a region: (x, y) global reference pixels, (N,) each (sep barycentres).

    Args:
        images: reference-grid (H, W) images, electrons (residuals after the first pass).
        variances: their noise variance per pixel, electrons^2.
        bad: (H, W) bool, pixels that are masked in any band.
        origin: global (x, y) pixel of the region's [0, 0] pixel.
    """
    d, var = detection_image(images, variances)
    usable = (var > 0) & ~bad
    if not usable.any():
        return np.zeros(0), np.zeros(0)
    err = np.sqrt(np.where(usable, var, np.max(var[usable])))
    d = np.ascontiguousarray(np.where(usable, d, 0.0))
    # sep keeps every pixel above threshold of a region in buffers sized by these limits
    sep.set_extract_pixstack(int(max(300_000, d.size)))
    sep.set_sub_object_limit(4096)
    objects = sep.extract(
        d,
        settings.nsigma,
        err=np.ascontiguousarray(err),
        mask=np.ascontiguousarray(~usable),
        minarea=settings.min_area,
        deblend_nthresh=settings.deblend_nthresh,
        deblend_cont=settings.deblend_cont,
    )
    x = np.where(np.isfinite(objects["x"]), objects["x"], objects["xpeak"]).astype(float)
    y = np.where(np.isfinite(objects["y"]), objects["y"], objects["ypeak"]).astype(float)
    return x + origin[0], y + origin[1]


def unmatched(x, y, known_x, known_y, radius: float) -> np.ndarray:
    """(N,) bool: new positions (x, y) farther than ``radius`` pixels from every known one."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if not len(known_x) or not len(x):
        return np.ones(len(x), dtype=bool)
    tree = cKDTree(np.column_stack([known_x, known_y]))
    dist, _ = tree.query(np.column_stack([x, y]), k=1)
    return dist > radius
