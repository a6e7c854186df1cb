"""Photometric bands: bandpass, zero point, sky, exposure, pixel scale and PSF of one channel.

Band ids are namespaced and lower case (``lsst_r``, ``euclid_vis``, ``hsc_i``), see
``docs/contracts.md``. Every number carries its unit in its name.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import galsim
import numpy as np


@dataclass(frozen=True)
class PSFSpec:
    """An achromatic PSF model: ``kind`` is ``kolmogorov``, ``moffat`` or ``gaussian``.

    ``fwhm_arcsec`` is the full width at half maximum; ``beta`` is the Moffat slope.
    """

    kind: str
    fwhm_arcsec: float
    beta: float = 2.5

    def build(self) -> galsim.GSObject:
        if self.kind == "kolmogorov":
            return galsim.Kolmogorov(fwhm=self.fwhm_arcsec)
        if self.kind == "moffat":
            return galsim.Moffat(beta=self.beta, fwhm=self.fwhm_arcsec)
        if self.kind == "gaussian":
            return galsim.Gaussian(fwhm=self.fwhm_arcsec)
        raise ValueError(f"unknown PSF kind {self.kind!r} (kolmogorov, moffat, gaussian)")


@dataclass(frozen=True)
class Band:
    """One channel of an instrument.

    Attributes:
        band_id: namespaced id, e.g. ``lsst_r``.
        pixel_scale_arcsec: pixel side, arcsec.
        zeropoint_mag: AB magnitude of a source giving 1 electron per second.
        sky_mag_arcsec2: sky surface brightness, AB mag per arcsec^2.
        exposure_s: total exposure time, seconds.
        psf: the PSF of this band.
        bandpass_source: where the throughput curve comes from (``galsim:FILE`` or
            ``speclite:NAME``).
    """

    band_id: str
    pixel_scale_arcsec: float
    zeropoint_mag: float
    sky_mag_arcsec2: float
    exposure_s: float
    psf: PSFSpec
    bandpass_source: str

    @property
    def sky_level_electrons(self) -> float:
        """Sky per pixel over the whole exposure, electrons."""
        pixel_area_arcsec2 = self.pixel_scale_arcsec**2
        return float(self.mag_to_electrons(self.sky_mag_arcsec2) * pixel_area_arcsec2)

    def mag_to_electrons(self, mag_ab):
        """Total electrons over the exposure for a source of AB magnitude ``mag_ab``."""
        return (
            10.0 ** (-0.4 * (np.asarray(mag_ab, dtype=float) - self.zeropoint_mag))
            * self.exposure_s
        )

    def electrons_to_mag(self, electrons):
        """AB magnitude of a source giving ``electrons`` over the exposure."""
        electrons = np.asarray(electrons, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.zeropoint_mag - 2.5 * np.log10(electrons / self.exposure_s)

    @property
    def bandpass(self) -> galsim.Bandpass:
        return load_bandpass(self.bandpass_source)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sky_level_electrons"] = self.sky_level_electrons
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Band:
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k != "psf"}
        return cls(psf=PSFSpec(**d["psf"]), **fields)


@functools.lru_cache(maxsize=64)
def load_bandpass(source: str) -> galsim.Bandpass:
    """Throughput curve as an AB-zeropointed ``galsim.Bandpass`` (wavelengths in nm).

    ``galsim:LSST_r.dat`` reads a curve shipped with GalSim; ``speclite:Euclid-VIS`` reads a
    speclite filter, whose near-zero tails are trimmed first (GalSim's integration range is then the
    band itself, not the whole grid).
    """
    kind, _, name = source.partition(":")
    if kind == "galsim":
        bandpass = galsim.Bandpass(name, wave_type="nm")
    elif kind == "speclite":
        import speclite.filters

        curve = speclite.filters.load_filter(name)
        wave_nm = np.asarray(curve.wavelength, dtype=float) / 10.0  # speclite grids are in Angstrom
        response = np.asarray(curve.response, dtype=float)
        # Curves from speclite carry long near-zero tails (and the NISP ones a 1e-5 blue leak);
        # keeping points above 1e-3 of the peak bounds GalSim's integration to the band itself.
        nonzero = np.flatnonzero(response > 1e-3 * response.max())
        lo, hi = max(nonzero[0] - 1, 0), min(nonzero[-1] + 1, len(response) - 1)
        table = galsim.LookupTable(
            wave_nm[lo : hi + 1], response[lo : hi + 1], interpolant="linear"
        )
        bandpass = galsim.Bandpass(table, wave_type="nm")
    elif kind == "galsim-roman":
        from galsim import roman

        bandpass = roman.getBandpasses(AB_zeropoint=False)[name]
    else:
        raise ValueError(
            f"bandpass source {source!r} must start with 'galsim:', 'galsim-roman:' or 'speclite:'"
        )
    return bandpass.withZeropoint("AB")
