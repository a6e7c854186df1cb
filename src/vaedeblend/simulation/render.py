"""Drawing galaxies into multi-band stamps, each channel at its own pixel scale.

The fast path uses that, with achromatic PSFs, a component whose shape does not depend on
wavelength draws to the same image in every band up to its flux: so each component is drawn once
per distinct (PSF, pixel scale) and scaled by its electrons in each band. Bands sharing PSF and
pixel scale (the six LSST bands of the ``paper`` preset, the three NISP bands) then cost one FFT
per component instead of one per band. ``tests/test_render.py`` checks it against GalSim's own
chromatic drawing.
"""

from __future__ import annotations

from dataclasses import dataclass

import galsim
import numpy as np

from vaedeblend.galaxy import Galaxy
from vaedeblend.instruments import Setup

GSPARAMS = galsim.GSParams(maximum_fft_size=16384)


@dataclass(frozen=True)
class Placement:
    """Where and how a galaxy sits in a stamp.

    ``dx_arcsec``, ``dy_arcsec``: offset of its centre from the stamp centre (GalSim's
    ``true_center``), arcsec on the sky; ``rotation_deg``: rotation of its intrinsic shape;
    ``shear``: reduced shear (g1, g2) applied after the rotation.
    """

    dx_arcsec: float = 0.0
    dy_arcsec: float = 0.0
    rotation_deg: float = 0.0
    shear: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class _BandGroup:
    pixel_scale_arcsec: float
    psf: galsim.GSObject
    channels: tuple[int, ...]


class StampRenderer:
    """Draws :class:`Galaxy` objects into (C, H, W) float32 stamps in electrons (noiseless)."""

    def __init__(self, setup: Setup, stamp_size_pixels: int | None = None):
        self.setup = setup
        self.size = stamp_size_pixels or setup.stamp_size_pixels
        groups: dict[tuple, list[int]] = {}
        for channel, band in enumerate(setup.bands):
            groups.setdefault((band.pixel_scale_arcsec, band.psf), []).append(channel)
        self.groups = [
            _BandGroup(scale, psf.build().withGSParams(GSPARAMS), tuple(channels))
            for (scale, psf), channels in groups.items()
        ]

    def electrons(self, galaxy: Galaxy) -> np.ndarray:
        """(n_components, C) electrons of each component in each band."""
        return np.array(
            [
                [band.mag_to_electrons(c.magnitude(band)) for band in self.setup.bands]
                for c in galaxy.components
            ]
        )

    def draw(self, galaxy: Galaxy, placement: Placement, electrons: np.ndarray | None = None):
        """Noiseless (C, H, W) float32 image of ``galaxy`` in electrons."""
        if electrons is None:
            electrons = self.electrons(galaxy)
        profiles = [self._placed_profile(c.profile, placement) for c in galaxy.components]
        out = np.zeros((self.setup.n_channels, self.size, self.size), dtype=np.float32)
        for group in self.groups:
            offset = galsim.PositionD(
                placement.dx_arcsec / group.pixel_scale_arcsec,
                placement.dy_arcsec / group.pixel_scale_arcsec,
            )
            if len(group.channels) >= len(profiles):
                unit = [self._draw(p, group, offset) for p in profiles]
                for ch in group.channels:
                    out[ch] = sum(e * img for e, img in zip(electrons[:, ch], unit, strict=True))
            else:
                for ch in group.channels:
                    total = galsim.Add(
                        [p * e for p, e in zip(profiles, electrons[:, ch], strict=True)]
                    )
                    out[ch] = self._draw(total, group, offset)
        return out

    def draw_band(self, galaxy: Galaxy, placement: Placement, channel: int, size: int):
        """Noiseless (size, size) image of one channel (used for detection on a larger image)."""
        electrons = self.electrons_in(galaxy, channel)
        group = next(g for g in self.groups if channel in g.channels)
        scale = group.pixel_scale_arcsec
        offset = galsim.PositionD(placement.dx_arcsec / scale, placement.dy_arcsec / scale)
        total = galsim.Add(
            [
                self._placed_profile(c.profile, placement) * e
                for c, e in zip(galaxy.components, electrons, strict=True)
            ]
        )
        return self._draw(total, group, offset, size)

    def electrons_in(self, galaxy: Galaxy, channel: int) -> np.ndarray:
        band = self.setup.bands[channel]
        return np.array([band.mag_to_electrons(c.magnitude(band)) for c in galaxy.components])

    @staticmethod
    def _placed_profile(profile: galsim.GSObject, placement: Placement) -> galsim.GSObject:
        placed = profile.rotate(placement.rotation_deg * galsim.degrees)
        if placement.shear != (0.0, 0.0):
            placed = placed.shear(g1=placement.shear[0], g2=placement.shear[1])
        return placed

    def _draw(self, profile, group: _BandGroup, offset, size: int | None = None) -> np.ndarray:
        size = size or self.size
        image = galsim.ImageF(size, size, scale=group.pixel_scale_arcsec)
        galsim.Convolve(profile, group.psf).drawImage(image, offset=offset, method="auto")
        return image.array


def psf_images(setup: Setup, size_pixels: int = 41) -> np.ndarray:
    """(C, size, size) float32 images of each band's PSF at its pixel scale, unit sum."""
    out = np.empty((setup.n_channels, size_pixels, size_pixels), dtype=np.float32)
    for ch, band in enumerate(setup.bands):
        image = band.psf.build().drawImage(
            nx=size_pixels, ny=size_pixels, scale=band.pixel_scale_arcsec, method="auto"
        )
        out[ch] = image.array / image.array.sum()
    return out
