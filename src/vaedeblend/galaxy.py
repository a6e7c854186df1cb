"""One galaxy as the renderer sees it: achromatic shapes, each with its own SED.

Every catalog source (synthetic, COSMOS parametric, CatSim, real COSMOS images) turns a row into
a :class:`Galaxy`, so the renderer has one input type. A bulge and a disk with different SEDs
keep their own colours (colour gradients).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import galsim
import numpy as np

from vaedeblend.bands import Band, load_bandpass
from vaedeblend.cache import disk_cached

REFERENCE_BANDPASS = "galsim:ACS_wfc_F814W.dat"
"""Catalog magnitudes are HST/ACS F814W AB magnitudes, as in COSMOS."""

CWW_TEMPLATES = ("CWW_E_ext", "CWW_Sbc_ext", "CWW_Scd_ext", "CWW_Im_ext")
"""CWW templates (Coleman, Wu & Weedman 1980; extended: Bolzonella et al. 2000), in GalSim."""


@functools.lru_cache(maxsize=8)
def template_sed(name: str) -> galsim.SED:
    """A GalSim-shipped SED template (rest frame, wavelengths in Angstrom, flux per Angstrom)."""
    if name not in CWW_TEMPLATES:
        raise ValueError(f"unknown SED template {name!r}; known: {', '.join(CWW_TEMPLATES)}")
    return galsim.SED(f"{name}.sed", wave_type="Ang", flux_type="flambda")


COLOUR_REDSHIFTS = np.linspace(0.0, 6.0, 601)
"""Redshift grid of the colour tables."""


@functools.lru_cache(maxsize=256)
def colour_table(template: str, band_source: str) -> galsim.LookupTable:
    """m_band - m_F814W of ``template`` as a function of redshift (z from 0 to 6).

    Each table takes about 0.15 s of SED integrations, and a ten-band set-up needs 40 of them
    in every new process (every Dask worker): they are cached on disk (:func:`disk_cached`),
    keyed by everything that defines them."""
    colours = disk_cached(
        ("colour", template, band_source, REFERENCE_BANDPASS, COLOUR_REDSHIFTS.tolist()),
        lambda: _magnitudes(template, band_source) - _magnitudes(template, REFERENCE_BANDPASS),
    )
    return galsim.LookupTable(COLOUR_REDSHIFTS, colours, interpolant="spline")


@functools.lru_cache(maxsize=64)
def _magnitudes(template: str, band_source: str) -> np.ndarray:
    """AB magnitudes of ``template`` (any normalisation) in a band, on :data:`COLOUR_REDSHIFTS`."""
    bandpass = load_bandpass(band_source)
    sed = template_sed(template)
    return np.array([sed.atRedshift(z).calculateMagnitude(bandpass) for z in COLOUR_REDSHIFTS])


@dataclass
class Component:
    """One light component: a unit-flux achromatic profile and its spectrum.

    The spectrum is a CWW ``template`` at ``redshift`` scaled to ``mag_f814w`` (fast: colours come
    from a cached redshift grid), or any ``galsim.SED`` given as ``sed`` (integrated each time).
    """

    profile: galsim.GSObject
    mag_f814w: float
    template: str | None = None
    redshift: float = 0.0
    sed: galsim.SED | None = None

    def magnitude(self, band: Band) -> float:
        """AB magnitude of this component in ``band``."""
        if self.sed is not None:
            return float(self.sed.calculateMagnitude(band.bandpass))
        colour = colour_table(self.template, band.bandpass_source)(self.redshift)
        return float(self.mag_f814w + colour)

    def galsim_sed(self) -> galsim.SED:
        """The component's spectrum as a ``galsim.SED`` (for GalSim's own chromatic drawing)."""
        if self.sed is not None:
            return self.sed
        reference = load_bandpass(REFERENCE_BANDPASS)
        return (
            template_sed(self.template)
            .atRedshift(self.redshift)
            .withMagnitude(self.mag_f814w, reference)
        )


@dataclass
class Galaxy:
    """A galaxy before placement: components share a centre; shapes are intrinsic (unrotated).

    ``hlr_arcsec`` is the half-light radius of the dominant component, ``q`` its axis ratio,
    ``beta_deg`` its position angle, ``sersic_n`` its Sersic index; ``bulge_fraction`` is the
    F814W flux fraction in the bulge.
    """

    components: list[Component]
    redshift: float
    hlr_arcsec: float
    q: float
    beta_deg: float
    sersic_n: float
    bulge_fraction: float
    source_row: int = -1
    extra: dict = field(default_factory=dict)

    def magnitudes(self, bands) -> np.ndarray:
        """Total AB magnitude per band."""
        return np.array([b.electrons_to_mag(self.electrons(b)) for b in bands])

    def electrons(self, band: Band) -> float:
        """Total electrons over the band's exposure."""
        return float(sum(band.mag_to_electrons(c.magnitude(band)) for c in self.components))

    def ellipticity(self, rotation_deg: float = 0.0, shear=(0.0, 0.0)) -> tuple[float, float]:
        """(e1, e2) = (1-q)/(1+q) (cos 2beta, sin 2beta) of the dominant shape after rotation
        by ``rotation_deg`` and a reduced shear ``shear`` (the |g|-type ellipticity of GalSim)."""
        beta = np.deg2rad(self.beta_deg + rotation_deg)
        g = (1 - self.q) / (1 + self.q)
        s = galsim.Shear(g=g, beta=beta * galsim.radians)
        if shear != (0.0, 0.0):
            s = galsim.Shear(g1=shear[0], g2=shear[1]) + s
        return float(s.g1), float(s.g2)

    def chromatic(self) -> galsim.ChromaticObject:
        """The whole galaxy as one GalSim chromatic object (reference path for tests)."""
        parts = [c.profile * c.galsim_sed() for c in self.components]
        return parts[0] if len(parts) == 1 else galsim.Add(parts)
