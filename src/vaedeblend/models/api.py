"""User-facing access to an exported model: ``load_model(path)``.

>>> model = load_model("runs/deblender")            # doctest: +SKIP
>>> clean = model.deblend(stamps, bands=["lsst_r", "lsst_g", ...])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from vaedeblend.argtypes import check_positive
from vaedeblend.models.io import load_vae
from vaedeblend.models.normalisation import Intensity


class BandMismatchError(ValueError):
    """Images whose bands are not a permutation of the model's bands."""


@dataclass(frozen=True)
class DeblendContext:
    """What a deblender may know about the stamps besides their pixels, in the stamps' channel
    order: what a fair user would give any method, and no truth.

    Attributes:
        band_ids: the C band ids of the channels.
        pixel_scales_arcsec: (C,) arcsec per pixel.
        sky_levels_electrons: (C,) sky per pixel, electrons (noise variance = sky + signal).
        psf_images: (C, P, P) PSF images at each band's pixel scale, unit sum (or None).
        centre_pixels: (N, 2) (x, y) where each stamp's central galaxy is believed to be, in
            the first channel's pixel frame, 0-based (None: the stamp centre, GalSim's
            ``true_center``).
    """

    band_ids: tuple[str, ...]
    pixel_scales_arcsec: np.ndarray
    sky_levels_electrons: np.ndarray
    psf_images: np.ndarray | None = None
    centre_pixels: np.ndarray | None = None

    @classmethod
    def from_dataset(cls, ds) -> DeblendContext:
        """The context of a dataset opened with :func:`vaedeblend.dataset.open_dataset`."""
        return cls(
            tuple(ds.band_ids),
            np.asarray(ds.pixel_scales_arcsec, dtype=float),
            np.asarray(ds.sky_levels_electrons, dtype=float),
            ds.psf if "psf" in ds.keys() else None,
        )


@runtime_checkable
class Deblender(Protocol):
    """Anything that returns the central galaxy of each stamp: the trained models
    (:class:`Model`), the baselines of :mod:`vaedeblend.baselines`, and the trivial ``none``
    and ``truth`` rows. Evaluation and field mode accept any of them.

    ``deblend(stamps, bands=None, context=None)`` takes (N, C, H, W) electrons (sky-subtracted)
    whose channels are ``bands`` (a permutation of the deblender's ``band_ids``; None: its own
    order) and returns float32 electrons of the same shape and channel order. ``context``
    carries PSFs, noise levels and pixel scales for methods that need them (the trained
    networks learned theirs and ignore it).
    """

    name: str
    band_ids: list[str]

    def deblend(
        self, stamps, bands: Sequence[str] | None = None, context: DeblendContext | None = None
    ) -> np.ndarray: ...


def check_stamps(stamps) -> np.ndarray:
    """(N, C, H, W) float32 numpy array of finite pixels, or ValueError saying what is wrong:
    the one input check every deblender shares."""
    if isinstance(stamps, torch.Tensor):
        stamps = stamps.detach().cpu().numpy()
    x = np.asarray(stamps, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"stamps must be (N, C, H, W), got {x.ndim} axes {x.shape}")
    bad = ~np.isfinite(x).all(axis=(1, 2, 3))
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {len(x)} stamps contain NaN or infinite pixels "
            f"(first: index {int(np.flatnonzero(bad)[0])}); mask or fill them first"
        )
    return x


class Model:
    """A loaded VAE or deblender (``kind``), working on images in electrons.

    Attributes:
        kind: ``vae`` or ``deblender``.
        band_ids: the model's channel order.
        stamp_size: stamp side H = W, pixels.
        norm_constants: I_b per band (C,), electrons.
        config: the model's ``config.json`` dict.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch_size: int = 256):
        self.device = torch.device(device)
        self.net, self.config = load_vae(path, self.device)
        # channels-last convolutions run the decoder's forward and backward passes 1.4x faster
        # on this CPU (oneDNN), the encoder's 1.1x; the weights' values (and fingerprints) stay
        self.net = self.net.to(memory_format=torch.channels_last)
        self.path = os.fspath(path)
        self.batch_size = check_positive("batch_size", batch_size)
        self.kind = self.config["kind"]
        self.band_ids = list(self.config["band_ids"])
        self.stamp_size = int(self.config["stamp_size"])
        self.latent_dim = int(self.config["architecture"]["latent_dim"])
        self.norm_constants = np.asarray(self.config["norm_constants_electrons"])
        self.head = self.net.cfg.head
        self.intensity = Intensity(self.head, self.norm_constants)

    def __repr__(self) -> str:
        arch = self.config["architecture"]["arch"]
        return (
            f"Model(kind={self.kind!r}, arch={arch!r}, bands={self.band_ids}, path={self.path!r})"
        )

    @property
    def name(self) -> str:
        return f"vaedeblend {self.kind} {os.path.basename(os.path.normpath(self.path))}"

    def deblend(
        self,
        stamps,
        bands: Sequence[str] | None = None,
        context: DeblendContext | None = None,
        batch_size: int | None = None,
    ):
        """Central galaxy of each stamp (VAE: the denoised galaxy), electrons.

        Args:
            stamps: (N, C, H, W) images in electrons, sky-subtracted; numpy or torch.
            bands: band ids of the C channels, a permutation of :attr:`band_ids`; None means
                the model's own order (or ``context.band_ids`` when a context is given).
            context: unused (the network learned its PSFs and noise); part of the
                :class:`Deblender` contract.
            batch_size: stamps per forward pass (default: the one given to ``load_model``).

        Returns:
            numpy float32 (N, C, H, W), electrons, channels in the order of ``stamps``.
        """
        if bands is None and context is not None:
            bands = list(context.band_ids)
        x, perm = self._prepare(stamps, bands)
        # zeros, not empty: were a batch ever skipped, the result would be visibly zero, never
        # uninitialised memory
        out = np.zeros(x.shape, dtype=np.float32)
        step = self._step(batch_size)
        for start in range(0, len(x), step):
            out[start : start + step] = self._deblend_batch(x[start : start + step])
        # out is in the model's order; channel i of the input is channel perm[i] of the model.
        return out[:, perm] if perm is not None else out

    def encode(self, stamps, bands: Sequence[str] | None = None, batch_size: int | None = None):
        """(mu, sigma), each numpy float32 (N, latent_dim): q(z | stamps) in latent space."""
        x, _ = self._prepare(stamps, bands)
        if len(x) == 0:
            empty = np.zeros((0, self.latent_dim), np.float32)
            return empty, empty.copy()
        mus, sigmas = [], []
        step = self._step(batch_size)
        with torch.no_grad():
            for start in range(0, len(x), step):
                batch = self._to_tensor(self.intensity.network_input(x[start : start + step]))
                mu, sigma = self.net.encoder(batch)
                mus.append(mu.cpu().numpy())
                sigmas.append(sigma.cpu().numpy())
        return np.concatenate(mus), np.concatenate(sigmas)

    def decode(self, z, batch_size: int | None = None) -> np.ndarray:
        """Images (N, C, H, W) float32 electrons, model band order, from latents (N, latent_dim)."""
        z = np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latents must be (N, {self.latent_dim}), got {z.shape}")
        if not np.isfinite(z).all():
            raise ValueError("latents contain NaN or infinite values")
        if len(z) == 0:
            return np.zeros((0, len(self.band_ids), self.stamp_size, self.stamp_size), np.float32)
        step = self._step(batch_size)
        out = []
        with torch.no_grad():
            for start in range(0, len(z), step):
                y = self.net.decoder(self._to_tensor(z[start : start + step]))
                out.append(self._to_electrons(y))
        return np.concatenate(out)

    def decode_differentiable(self, z: torch.Tensor) -> torch.Tensor:
        """Electrons (N, C, H, W), model band order, from latents (N, latent_dim) as a torch
        graph (gradients flow to ``z``): the path that refinement optimises through. The
        head's inverse runs in float64 (as in :meth:`decode`); the result is float64."""
        y = self.net.decoder(z.to(self.device, torch.float32))
        return self.intensity.electrons(y.double())

    def decoder_fingerprint(self) -> str:
        """SHA-256 of the decoder's weights as loaded: what a latent prior was fitted on."""
        return _weights_digest(self.net.decoder)

    def fingerprint(self) -> str:
        """SHA-256 of all the network's weights (encoder and decoder) as loaded: what a
        calibration of the refined estimate was measured with."""
        return _weights_digest(self.net)

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """``n`` images (N, C, H, W) float32 electrons decoded from z ~ N(0, I)."""
        check_positive("n", n)
        rng = np.random.default_rng(seed)
        return self.decode(rng.standard_normal((n, self.latent_dim)).astype(np.float32))

    def _step(self, batch_size: int | None) -> int:
        """Stamps per forward pass: ``batch_size`` if given (checked), else the model's."""
        return self.batch_size if batch_size is None else check_positive("batch_size", batch_size)

    def _deblend_batch(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y, _, _ = self.net(self._to_tensor(self.intensity.network_input(x)), sample=False)
        return self._to_electrons(y)

    def _to_tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)

    def _to_electrons(self, y: torch.Tensor) -> np.ndarray:
        # The inverse runs in float64: near y = 1 float32 would lose digits of 1 - y.
        y64 = y.detach().cpu().numpy().astype(np.float64)
        return self.intensity.electrons(y64).astype(np.float32)

    def _prepare(self, stamps, bands) -> tuple[np.ndarray, list[int] | None]:
        """Checked float32 (N, C, H, W) array in the model's band order, and the permutation
        mapping input channels to model channels (None when already in order)."""
        x = check_stamps(stamps)
        self._check_shape(x)
        if bands is None:
            return x, None
        bands = expand_band_names(list(bands), self.band_ids)
        to_model, to_input = band_permutation(bands, self.band_ids)
        return np.ascontiguousarray(x[:, to_model]), to_input

    def _check_shape(self, x: np.ndarray) -> None:
        c, s = len(self.band_ids), self.stamp_size
        if x.ndim != 4:
            raise ValueError(f"stamps must be (N, C, H, W), got {x.ndim} axes {x.shape}")
        if x.shape[1] != c:
            raise BandMismatchError(
                f"stamps have {x.shape[1]} channels, the model has {c}: {self.band_ids}"
            )
        if x.shape[2:] != (s, s):
            raise ValueError(
                f"stamps are {x.shape[2]}x{x.shape[3]} pixels, the model takes {s}x{s}"
            )


def expand_band_names(bands: Sequence[str], model_bands: Sequence[str]) -> list[str]:
    """``bands`` with short names (``r``, ``VIS``) replaced by the one model band they name
    (``lsst_r``, ``euclid_vis``: the part after the instrument prefix, any case); names that
    are already model bands, or that match none, are kept (the permutation check names them).
    A short name matching several model bands (``y``: ``lsst_y`` and ``euclid_y``) is refused.
    """
    out = []
    for band in bands:
        if band in model_bands:
            out.append(band)
            continue
        matches = [m for m in model_bands if m.split("_", 1)[-1].lower() == band.lower()]
        if len(matches) > 1:
            raise BandMismatchError(
                f"band {band!r} is ambiguous: it could be any of {matches}; give the full id"
            )
        out.append(matches[0] if matches else band)
    return out


def band_permutation(
    bands: list[str], model_bands: list[str], what: str = "the model's"
) -> tuple[list[int], list[int]]:
    """(to_model, to_input): ``x[:, to_model]`` puts input channels in the model's order and
    ``y[:, to_input]`` puts model channels back in the input's order.

    Raises :class:`BandMismatchError` naming missing, unknown or repeated bands.
    """
    missing = [b for b in model_bands if b not in bands]
    unknown = [b for b in bands if b not in model_bands]
    repeated = sorted({b for b in bands if bands.count(b) > 1})
    if missing or unknown or repeated:
        parts = []
        if missing:
            parts.append(f"missing bands {missing}")
        if unknown:
            parts.append(f"unknown bands {unknown}")
        if repeated:
            parts.append(f"repeated bands {repeated}")
        raise BandMismatchError(
            f"bands {bands} do not match {what} {model_bands}: " + ", ".join(parts)
        )
    return [bands.index(b) for b in model_bands], [model_bands.index(b) for b in bands]


def load_model(path: str | os.PathLike, device: str = "cpu", batch_size: int = 256) -> Model:
    """Load an exported VAE or deblender directory (``model.safetensors`` + ``config.json``).

    Args:
        path: the model directory (the ``--out`` of ``vaedeblend train``).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: stamps per forward pass.
    """
    return Model(path, device=device, batch_size=batch_size)


def _weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()
