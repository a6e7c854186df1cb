"""The COSMOS parametric-fit catalog (GalSim real-galaxy catalog format), chromatic.

``galsim.COSMOSCatalog(..., use_real=False).makeGalaxy(i, gal_type='parametric',
chromatic=True)`` gives one Sersic profile (``SimpleChromaticTransformation``) or a bulge + disc
(``ChromaticSum`` of two), each a unit-flux sheared profile (``.original``) times a CWW SED at the
photo-z (``.sed``). Each part becomes one :class:`~vaedeblend.galaxy.Component`.

Flux normalisation (checked in ``tests/test_catalogs.py``): GalSim scales those SEDs with
``withMagnitude(mag_auto, F814W with zeropoint 25.94)``, so that drawing through F814W gives counts
per second for HST's collecting area (the COSMOS science images are count rates). Divided by the
HST area the SED would be in photons/cm^2/s/nm, but GalSim's own ``ACS_wfc_F814W.dat`` throughput
then gives an AB magnitude 0.108 mag brighter than ``mag_auto`` (its AB zeropoint for the HST area
is 25.832, not the 25.94 of the COSMOS reduction). We therefore rescale every part's SED by one
common factor so that the galaxy's AB magnitude through GalSim's F814W is exactly the catalog's
``mag_auto``; the bulge-to-total ratio and the colours are unchanged.
"""

from __future__ import annotations

from pathlib import Path

import galsim
import numpy as np

from vaedeblend.bands import load_bandpass
from vaedeblend.catalogs.base import GalaxyCatalog, validate_table
from vaedeblend.catalogs.synthetic import composite_hlr
from vaedeblend.galaxy import REFERENCE_BANDPASS, Component, Galaxy

COSMOS_PIXEL_ARCSEC = 0.03  # COSMOS ACS lensing reduction pixel


def locate_galsim_catalog(path, kind: str = "cosmos") -> tuple[str, Path]:
    """(file name, directory) of a GalSim real-galaxy catalog given the file or its directory.

    In a directory, the catalog is the ``real_galaxy_catalog_*.fits`` that is not a ``_fits`` or
    ``_selection`` companion; with several, the name must be given.
    """
    path = Path(path)
    if path.is_file():
        return path.name, path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"{kind} catalog path {str(path)!r} does not exist")
    companions = ("_fits.fits", "_selection.fits")
    found = sorted(
        p.name for p in path.glob("real_galaxy_catalog_*.fits") if not p.name.endswith(companions)
    )
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(found)})"
        raise FileNotFoundError(
            f"{kind} catalog directory {str(path)!r} holds {what} real_galaxy_catalog_*.fits "
            "files; pass the catalog file itself"
        )
    return found[0], path


def _used_parameters(records) -> dict[str, np.ndarray]:
    """The fit parameters each row actually uses (bulge+disc or single Sersic), per row."""
    bulgefit = np.asarray(records["use_bulgefit"]) == 1
    flux = np.asarray(records["flux"], dtype=float)
    hlr = np.asarray(records["hlr"], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        bulge_fraction = np.where(bulgefit, flux[:, 1] / (flux[:, 1] + flux[:, 2]), 0.0)
    return {
        "mag_auto": np.asarray(records["mag_auto"], dtype=float),
        "zphot": np.asarray(records["zphot"], dtype=float),
        "use_bulgefit": bulgefit,
        "bulge_fraction": bulge_fraction,
        # Unused entries of a row hold zeros: keep 1.0 there so that checks only see used values.
        "hlr_sersic": np.where(bulgefit, 1.0, hlr[:, 0]),
        "hlr_bulge": np.where(bulgefit, hlr[:, 1], 1.0),
        "hlr_disc": np.where(bulgefit, hlr[:, 2], 1.0),
    }


class CosmosCatalog(GalaxyCatalog):
    """COSMOS galaxies as parametric chromatic profiles, brighter than ``mag_limit_f814w``.

    Args:
        path: directory holding a GalSim COSMOS catalog (``real_galaxy_catalog_*.fits`` and its
            ``_fits`` and ``_selection`` companions), or the catalog file.
        mag_limit_f814w: keep galaxies with ``mag_auto`` (F814W AB) below this.
        exclusion_level: GalSim's exclusion of bad fits and stamps (default ``marginal``).

    Rows are numbered after the magnitude cut; ``source_row`` of each galaxy is its index in
    ``galsim.COSMOSCatalog`` (``cosmos_index[row]``).
    """

    name = "cosmos"

    def __init__(self, path, mag_limit_f814w: float = 25.2, exclusion_level: str = "marginal"):
        file_name, directory = locate_galsim_catalog(path, "cosmos")
        self.path = str(directory / file_name)
        self._galsim = galsim.COSMOSCatalog(
            file_name=file_name,
            dir=str(directory),
            use_real=False,
            exclusion_level=exclusion_level,
        )
        records = self._galsim.param_cat[self._galsim.orig_index]
        self.params = _used_parameters(records)
        validate_table(
            self.params,
            list(self.params),
            self.name,
            positive=("hlr_sersic", "hlr_bulge", "hlr_disc"),
            nonnegative=("zphot",),
            checks=[
                (
                    "bulge fraction outside 0-1",
                    lambda t: ~((t["bulge_fraction"] >= 0) & (t["bulge_fraction"] <= 1)),
                )
            ],
        )
        keep = self.params["mag_auto"] < mag_limit_f814w
        self.cosmos_index = np.flatnonzero(keep)
        self.params = {k: v[keep] for k, v in self.params.items()}
        self.mag_f814w = self.params["mag_auto"]
        self.mag_limit_f814w = float(mag_limit_f814w)

    def describe(self) -> dict:
        return {**super().describe(), "path": self.path, "mag_limit_f814w": self.mag_limit_f814w}

    def chromatic_parts(self, row: int) -> list:
        """GalSim's own chromatic parts of ``row`` (``SimpleChromaticTransformation`` list)."""
        obj = self._galsim.makeGalaxy(
            int(self.cosmos_index[row]), gal_type="parametric", chromatic=True
        )
        return list(obj.obj_list) if isinstance(obj, galsim.ChromaticSum) else [obj]

    def _make_galaxy(self, row: int) -> Galaxy:
        parts = self.chromatic_parts(row)
        reference = load_bandpass(REFERENCE_BANDPASS)
        mag = float(self.mag_f814w[row])
        # One factor for all parts: the total AB magnitude through F814W becomes mag_auto.
        total_flux = sum(p.sed.calculateFlux(reference) for p in parts)
        scale = 10.0 ** (-0.4 * (mag - reference.zeropoint)) / total_flux
        components = []
        for part in parts:
            profile = part.original / part.original.flux  # unit flux (it is 1 already)
            sed = part.sed * scale
            components.append(
                Component(
                    profile,
                    float(sed.calculateMagnitude(reference)),
                    redshift=float(part.sed.redshift),
                    sed=sed,
                )
            )
        return self._galaxy_from_record(row, components)

    def _galaxy_from_record(self, row: int, components: list[Component]) -> Galaxy:
        record = self._galsim.param_cat[self._galsim.orig_index[self.cosmos_index[row]]]
        p = {k: v[row] for k, v in self.params.items()}
        bt = float(p["bulge_fraction"])
        if p["use_bulgefit"]:
            bulge_dominated = bt >= 0.5
            fit = record["bulgefit"][8:] if bulge_dominated else record["bulgefit"][:8]
            hlr = p["hlr_bulge"] if bulge_dominated else p["hlr_disc"]
            sersic_n = 4.0 if bulge_dominated else 1.0
            hlr_total = float(composite_hlr(bt, p["hlr_bulge"], p["hlr_disc"]))
        else:
            fit = record["sersicfit"]
            hlr = hlr_total = p["hlr_sersic"]
            sersic_n = float(np.clip(fit[2], 0.3, 6.0))  # GalSim's own clipping of n
        return Galaxy(
            components=components,
            redshift=float(p["zphot"]),
            hlr_arcsec=float(hlr),
            q=float(fit[3]),
            beta_deg=float(np.rad2deg(fit[7])),
            sersic_n=sersic_n,
            bulge_fraction=bt,
            source_row=int(self.cosmos_index[row]),
            extra={"ident": int(record["IDENT"]), "hlr_total_arcsec": float(hlr_total)},
        )
