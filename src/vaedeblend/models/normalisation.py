"""Intensity transforms between electrons and the network's space, one per output head.

``sigmoid`` head (the paper's): see below. ``asinh`` head: ``s = asinh(x / a_b)`` in and out,
``x = a_b * sinh(s)``, where ``a_b`` (electrons) is the band's sky noise sigma, sqrt(sky per
pixel) (:func:`asinh_constants`). The network's output ``s`` is a plain linear value: 0 is
exactly the empty sky and there is no ceiling, while faint pixels are in units of the noise
and bright ones in (natural) log flux. :class:`Intensity` applies the head's transform.

The paper's intensity normalisation and its exact inverse:

``y = tanh(asinh(x * 2.5 / I_b))`` maps electrons x of band b into (-1, 1);
``x = sinh(atanh(y)) * I_b / 2.5`` maps back. Since ``tanh(asinh(u)) = u / sqrt(1 + u^2)`` and
``sinh(atanh(y)) = y / sqrt((1 - y)(1 + y))``, both are computed in these algebraic forms, which
avoid the cancellation of asinh/atanh near the ends and are exact inverses in real arithmetic.

``I_b`` (electrons) is, per band, the mean over the VAE's training images of each image's maximum
noisy pixel value (:func:`norm_constants`). It is stored with the model and reused unchanged by
the deblender built on it.
"""

from __future__ import annotations

import numpy as np
import torch

from vaedeblend.training_choices import HEADS

SCALE = 2.5
# y is clipped to |y| <= 1 - Y_EPS before the inverse: the largest value it returns is
# about 707 * I_b / 2.5, far above any real pixel, while staying finite for y == 1.
Y_EPS = 1e-6


def _channel_view(constants, ndim: int, like):
    """Broadcast per-band ``constants`` (C,) over axis 1 of an (N, C, H, W) array."""
    shape = (1, -1) + (1,) * (ndim - 2)
    if isinstance(like, torch.Tensor):
        c = torch.as_tensor(constants, dtype=like.dtype, device=like.device)
        return c.reshape(shape)
    return np.asarray(constants, dtype=like.dtype).reshape(shape)


def normalise(x, constants):
    """Electrons (N, C, H, W) -> normalised values in (-1, 1); numpy or torch, dtype kept."""
    lib = torch if isinstance(x, torch.Tensor) else np
    u = x * SCALE / _channel_view(constants, x.ndim, x)
    return u / lib.sqrt(1 + u * u)


def denormalise(y, constants, eps: float = Y_EPS):
    """Normalised (N, C, H, W) -> electrons; exact inverse of :func:`normalise` for
    ``|y| < 1 - eps`` (larger ``|y|`` is clipped there first)."""
    lib = torch if isinstance(y, torch.Tensor) else np
    y = lib.clip(y, -1 + eps, 1 - eps)
    x = y / lib.sqrt((1 - y) * (1 + y))
    return x * _channel_view(constants, y.ndim, y) / SCALE


def norm_constants(images: np.ndarray) -> np.ndarray:
    """I_b (C,) float64: mean over images of each image's maximum pixel, per band.

    ``images``: noisy training stamps (N, C, H, W), electrons.
    """
    peaks = np.asarray(images).max(axis=(2, 3))
    return peaks.astype(np.float64).mean(axis=0)


class NormConstantsAccumulator:
    """Computes :func:`norm_constants` over chunks of a dataset too large to hold twice."""

    def __init__(self):
        self.total = None
        self.count = 0

    def add(self, images: np.ndarray) -> None:
        peaks = np.asarray(images).max(axis=(2, 3)).astype(np.float64).sum(axis=0)
        self.total = peaks if self.total is None else self.total + peaks
        self.count += len(images)

    def result(self) -> np.ndarray:
        if not self.count:
            raise ValueError("no images given for the normalisation constants")
        constants = self.total / self.count
        if not np.all(np.isfinite(constants)):
            bad = np.flatnonzero(~np.isfinite(constants)).tolist()
            raise ValueError(f"normalisation constant not finite in channel(s) {bad}: NaN pixels?")
        if np.any(constants <= 0):
            bad = np.flatnonzero(constants <= 0).tolist()
            raise ValueError(f"normalisation constant <= 0 in channel(s) {bad}: empty images?")
        return constants


# |s| is clipped here before sinh: a_b * sinh(40) is 1e17 a_b, beyond any pixel, yet finite.
ASINH_CLIP = 40.0


def asinh_constants(sky_levels_electrons) -> np.ndarray:
    """a_b (C,) float64, electrons: the sky noise sigma sqrt(sky per pixel), at least 1 e-
    (a sky-free band would otherwise divide by zero)."""
    sky = np.asarray(sky_levels_electrons, dtype=np.float64)
    if not np.all(np.isfinite(sky)):
        raise ValueError(f"sky levels must be finite, got {sky.tolist()}")
    return np.sqrt(np.maximum(sky, 1.0))


class Intensity:
    """The transform of one output ``head`` with its per-band ``constants`` (C,) electrons
    (I_b for ``sigmoid``, a_b for ``asinh``), on numpy or torch (N, C, H, W) arrays."""

    def __init__(self, head: str, constants):
        if head not in HEADS:
            raise ValueError(f"unknown output head {head!r}; known: {HEADS}")
        self.head = head
        self.constants = constants

    def network_input(self, x):
        """Electrons -> the encoder's input space (and, for ``asinh``, the output space)."""
        if self.head == "sigmoid":
            return normalise(x, self.constants)
        lib = torch if isinstance(x, torch.Tensor) else np
        return lib.arcsinh(x / _channel_view(self.constants, x.ndim, x))

    def target(self, x):
        """Electrons -> the space the loss compares the output with: ``sigmoid``: the paper's
        normalised values in [0, 1); ``asinh``: s."""
        return self.network_input(x)

    def electrons(self, out):
        """The decoder's output (after its activation) -> electrons."""
        if self.head == "sigmoid":
            return denormalise(out, self.constants)
        lib = torch if isinstance(out, torch.Tensor) else np
        return lib.sinh(lib.clip(out, -ASINH_CLIP, ASINH_CLIP)) * _channel_view(
            self.constants, out.ndim, out
        )

    def formula(self) -> str:
        """The transform in words, for ``config.json``."""
        if self.head == "sigmoid":
            return "y = tanh(asinh(x * 2.5 / I_b)); x = sinh(atanh(y)) * I_b / 2.5"
        return "s = asinh(x / a_b); x = a_b * sinh(s); a_b = sqrt(sky per pixel)"
