"""Real HST/ACS F814W galaxy images (GalSim ``RealGalaxyCatalog``) with fitted SEDs.

Each galaxy is one :class:`~vaedeblend.galaxy.Component`: ``galsim.RealGalaxy(rgc, index=i,
flux=1)`` (the HST image deconvolved by its PSF on drawing; the renderer convolves with the target
PSF, which must be broader than HST's 0.1" for this to be valid: true of LSST and Euclid NISP,
marginal for VIS) times an SED: the CWW template (or mix of two adjacent ones) that best fits the
HSC g, r, i, z, y magnitudes of the ``*_fits.fits`` companion at its photo-z ``ZPHOT``
(:mod:`vaedeblend.catalogs.sedfit`), scaled so that its F814W AB magnitude is the catalog ``MAG``
(the band of the image itself). The morphology keeps no colour gradient.

Shape parameters of the :class:`~vaedeblend.galaxy.Galaxy` are measured, not fitted:
``hlr_arcsec`` is SExtractor's ``flux_radius`` x 0.03" (PSF included), ``q`` and ``beta_deg``
come from HSM adaptive moments of the HST image (PSF included). ``sersic_n`` and
``bulge_fraction`` are NaN (undefined for a real image).
"""

from __future__ import annotations

from pathlib import Path

import galsim
import numpy as np
from astropy.io import fits

from vaedeblend.catalogs.base import GalaxyCatalog, validate_table
from vaedeblend.catalogs.cosmos import COSMOS_PIXEL_ARCSEC, locate_galsim_catalog
from vaedeblend.catalogs.sedfit import fit_templates
from vaedeblend.galaxy import Galaxy

HSC_FILTERS = "grizy"
HSC_BANDPASSES = tuple(f"speclite:hsc2017-{f}" for f in HSC_FILTERS)
HSC_COLUMNS = tuple(f"HSC_{f}" for f in HSC_FILTERS)
NORM_BAND = HSC_FILTERS.index("i")


def _read_tables(file_name: str, directory: Path):
    """The catalog table (``MAG``, ``IDENT``) and its ``_fits`` companion, rows aligned by IDENT."""
    main = fits.getdata(directory / file_name)
    companion = directory / file_name.replace(".fits", "_fits.fits")
    if not companion.is_file():
        raise FileNotFoundError(
            f"real catalog needs the HSC magnitudes and photo-z of {companion.name} next to "
            f"{file_name}"
        )
    extra = fits.getdata(companion)
    if not np.array_equal(np.asarray(main["IDENT"]), np.asarray(extra["IDENT"])):
        raise ValueError(f"real catalog: IDENT of {companion.name} and {file_name} differ")
    return main, extra


class RealCatalog(GalaxyCatalog):
    """Real COSMOS galaxy images brighter than ``mag_limit_f814w`` (catalog ``MAG``, F814W AB).

    Attributes:
        fit: SED fit to HSC g..y (normalised to HSC i) of the kept rows;
            ``fit.residuals`` are model minus HSC magnitudes.
        f814w_offset: catalog F814W ``MAG`` minus the F814W magnitude of the HSC-normalised fit
            (HST and HSC photometry apertures differ); the SED is shifted by it.
    """

    name = "real"

    def __init__(self, path, mag_limit_f814w: float = 25.2):
        file_name, directory = locate_galsim_catalog(path, "real")
        self.path = str(directory / file_name)
        main, extra = _read_tables(file_name, directory)
        validate_table(main, ("MAG",), self.name)
        validate_table(
            extra,
            (*HSC_COLUMNS, "ZPHOT", "flux_radius"),
            self.name,
            positive=("flux_radius",),
            nonnegative=("ZPHOT",),
        )
        keep = np.asarray(main["MAG"], dtype=float) < mag_limit_f814w
        self.catalog_index = np.flatnonzero(keep)
        self.mag_f814w = np.asarray(main["MAG"], dtype=float)[keep]
        self.redshift = np.asarray(extra["ZPHOT"], dtype=float)[keep]
        self.hlr_arcsec = np.asarray(extra["flux_radius"], dtype=float)[keep] * COSMOS_PIXEL_ARCSEC
        self.ident = np.asarray(main["IDENT"])[keep]
        mags = np.stack([np.asarray(extra[c], dtype=float)[keep] for c in HSC_COLUMNS], axis=1)
        self.fit = fit_templates(mags, self.redshift, HSC_BANDPASSES, NORM_BAND)
        self.f814w_offset = self.mag_f814w - self.fit.mag_f814w
        self.mag_limit_f814w = float(mag_limit_f814w)
        self._rgc = galsim.RealGalaxyCatalog(file_name, dir=str(directory))
        self._shapes: dict[int, tuple[float, float]] = {}

    def describe(self) -> dict:
        return {**super().describe(), "path": self.path, "mag_limit_f814w": self.mag_limit_f814w}

    def shape(self, row: int) -> tuple[float, float]:
        """(q, beta_deg) of the HST image from HSM adaptive moments; (1, 0) if HSM fails."""
        if row not in self._shapes:  # measured once per row
            image = self._rgc.getGalImage(int(self.catalog_index[row]))
            try:
                moments = galsim.hsm.FindAdaptiveMom(image)
                g = min(moments.observed_shape.g, 0.99)
                self._shapes[row] = ((1 - g) / (1 + g), float(moments.observed_shape.beta.deg))
            except galsim.GalSimHSMError:
                self._shapes[row] = (1.0, 0.0)
        return self._shapes[row]

    def _make_galaxy(self, row: int) -> Galaxy:
        index = int(self.catalog_index[row])
        profile = galsim.RealGalaxy(self._rgc, index=index, flux=1.0)
        z = float(self.redshift[row])
        component = self.fit.component(row, profile, float(self.mag_f814w[row]), z)
        q, beta = self.shape(row)
        return Galaxy(
            components=[component],
            redshift=z,
            hlr_arcsec=float(self.hlr_arcsec[row]),
            q=float(q),
            beta_deg=beta,
            sersic_n=float("nan"),
            bulge_fraction=float("nan"),
            source_row=index,
            extra={
                "ident": int(self.ident[row]),
                "template": str(self.fit.template[row]),
                "template_b": str(self.fit.template_b[row]),
                "template_b_weight": float(self.fit.weight[row]),
            },
        )
