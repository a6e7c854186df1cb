"""Noise of simulated images: sky-subtracted Poisson (sky + signal) or Gaussian sky noise.

Kept apart from the simulation itself so that the dataset reader can redraw a stamp's noise
every epoch (``dataset``) without importing the simulator.
"""

from __future__ import annotations

import numpy as np

NOISE_MODELS = ("poisson", "gaussian")


def add_noise(image: np.ndarray, sky_electrons: np.ndarray, noise_seed: int, model: str):
    """Noisy copy of a noiseless (C, H, W) image in electrons, sky subtracted.

    ``poisson``: Poisson(sky + signal) - sky, signal clipped at 0 (FFT ringing can leave tiny
    negative pixels). ``gaussian``: Gaussian with the sky variance.
    """
    rng = np.random.default_rng(noise_seed)
    sky = np.asarray(sky_electrons, dtype=np.float64)[:, None, None]
    if model == "poisson":
        mean = np.clip(image, 0.0, None) + sky
        return (rng.poisson(mean) - sky + (image - np.clip(image, 0.0, None))).astype(np.float32)
    return (image + rng.normal(size=image.shape) * np.sqrt(sky)).astype(np.float32)
