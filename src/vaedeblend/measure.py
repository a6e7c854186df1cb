"""Measurements on noiseless or deblended images: S/N, blendedness, fluxes, shapes.

Images are arrays in electrons, sky-subtracted, with axes (..., H, W) for one band.
"""

from __future__ import annotations

import numpy as np


def snr(image_electrons: np.ndarray, sky_level_electrons: float) -> np.ndarray:
    """S/N of a noiseless image (paper formula): sqrt(sum(s^2 / (s + sky))) over the stamp.

    ``image_electrons`` has axes (..., H, W); ``sky_level_electrons`` is the sky per pixel.
    """
    s = np.asarray(image_electrons, dtype=np.float64)
    return np.sqrt(np.sum(s * s / (s + sky_level_electrons), axis=(-2, -1)))


def blendedness(target_electrons: np.ndarray, others_electrons: np.ndarray) -> np.ndarray:
    """B_tot = 1 - sum(I_c^2) / sum(I_c (I_c + I_others)) on noiseless images (axes ..., H, W).

    0 for an isolated galaxy, towards 1 as the neighbours' light dominates the target's pixels.
    """
    c = np.asarray(target_electrons, dtype=np.float64)
    o = np.asarray(others_electrons, dtype=np.float64)
    own = np.sum(c * c, axis=(-2, -1))
    total = np.sum(c * (c + o), axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1.0 - own / total, 0.0)
