"""LSST CatSim galaxy tables (``OneDegSq.fits`` layout): bulge + disc, LSST magnitudes only.

Columns used: ``redshift``, ``fluxnorm_bulge``, ``fluxnorm_disk``, ``a_b, b_b, a_d, b_d``
(half-light semi-major and semi-minor axes, arcsec), ``pa_bulge, pa_disk`` (deg), ``u_ab`` ...
``y_ab`` (AB). The bulge is de Vaucouleurs (n = 4), the disc exponential (n = 1), each with
``hlr = sqrt(a b)`` (GalSim's area-preserving shear) and ``q = b / a``. The AGN flux
(``fluxnorm_agn``) is ignored.

CatSim gives no spectrum: a CWW template is fitted to u..y at the catalog redshift
(:mod:`vaedeblend.catalogs.sedfit`) and normalised to r, so Euclid and F814W magnitudes can be
computed. Both components carry that same SED, with the flux split by
``fluxnorm_bulge / (fluxnorm_bulge + fluxnorm_disk)``: CatSim galaxies have no colour gradient.
"""

from __future__ import annotations

from pathlib import Path

import galsim
import numpy as np
from astropy.table import Table

from vaedeblend.catalogs.base import GalaxyCatalog, validate_table
from vaedeblend.catalogs.sedfit import fit_templates
from vaedeblend.catalogs.synthetic import composite_hlr
from vaedeblend.galaxy import Galaxy

LSST_FILTERS = "ugrizy"
LSST_BANDPASSES = tuple(f"galsim:LSST_{f}.dat" for f in LSST_FILTERS)
NORM_BAND = LSST_FILTERS.index("r")
REQUIRED = (
    "redshift",
    "fluxnorm_bulge",
    "fluxnorm_disk",
    "a_b",
    "b_b",
    "a_d",
    "b_d",
    "pa_bulge",
    "pa_disk",
    *(f"{f}_ab" for f in LSST_FILTERS),
)


def _component_checks():
    """Cross-column physical checks: a component with flux needs a positive size, b <= a."""

    def bad_size(c):
        return lambda t: (
            (np.asarray(t[f"fluxnorm_{c[0]}"]) > 0)
            & ((np.asarray(t[f"a_{c[1]}"]) <= 0) | (np.asarray(t[f"b_{c[1]}"]) <= 0))
        )

    def minor_above_major(c):
        return lambda t: np.asarray(t[f"b_{c}"]) > np.asarray(t[f"a_{c}"]) * (1 + 1e-6)

    return [
        (
            "fluxnorm_bulge + fluxnorm_disk is 0",
            lambda t: np.asarray(t["fluxnorm_bulge"]) + np.asarray(t["fluxnorm_disk"]) <= 0,
        ),
        ("bulge with flux but a_b or b_b <= 0", bad_size(("bulge", "b"))),
        ("disk with flux but a_d or b_d <= 0", bad_size(("disk", "d"))),
        ("b_b > a_b", minor_above_major("b")),
        ("b_d > a_d", minor_above_major("d")),
    ]


class CatSimCatalog(GalaxyCatalog):
    """A CatSim table as galaxies, cut at F814W (of the fitted SED) < ``mag_limit_f814w``.

    Attributes:
        table: the rows kept (astropy Table).
        fit: :class:`~vaedeblend.catalogs.sedfit.TemplateFit` of the kept rows (template, LSST
            residuals in mag).
    """

    name = "catsim"

    def __init__(self, path, mag_limit_f814w: float = 25.2):
        self.path = str(Path(path))
        table = Table.read(self.path)
        validate_table(
            table,
            REQUIRED,
            self.name,
            nonnegative=("redshift", "fluxnorm_bulge", "fluxnorm_disk", "a_b", "b_b", "a_d", "b_d"),
            checks=_component_checks(),
        )
        mags = np.stack([np.asarray(table[f"{f}_ab"], dtype=float) for f in LSST_FILTERS], axis=1)
        fit = fit_templates(mags, np.asarray(table["redshift"]), LSST_BANDPASSES, NORM_BAND)
        keep = fit.mag_f814w < mag_limit_f814w
        self.table = table[keep]
        self.catsim_index = np.flatnonzero(keep)
        self.fit = fit.subset(keep)
        self.mag_f814w = self.fit.mag_f814w
        self.mag_limit_f814w = float(mag_limit_f814w)

    def describe(self) -> dict:
        return {**super().describe(), "path": self.path, "mag_limit_f814w": self.mag_limit_f814w}

    def _make_galaxy(self, row: int) -> Galaxy:
        t = self.table[row]
        z = float(t["redshift"])
        mag = float(self.mag_f814w[row])
        bt = float(t["fluxnorm_bulge"] / (t["fluxnorm_bulge"] + t["fluxnorm_disk"]))
        shapes = {}
        components = []
        for kind, c, profile_class, fraction in (
            ("disk", "d", galsim.Exponential, 1.0 - bt),
            ("bulge", "b", galsim.DeVaucouleurs, bt),
        ):
            if fraction <= 0:
                continue
            a, b = float(t[f"a_{c}"]), float(t[f"b_{c}"])
            hlr, q, beta = np.sqrt(a * b), b / a, float(t[f"pa_{kind}"])
            shapes[kind] = (hlr, q, beta)
            profile = profile_class(half_light_radius=hlr).shear(q=q, beta=beta * galsim.degrees)
            components.append(self.fit.component(row, profile, mag - 2.5 * np.log10(fraction), z))
        dominant = "bulge" if bt >= 0.5 else "disk"
        hlr, q, beta = shapes[dominant]
        hlr_b, hlr_d = shapes.get("bulge", (1.0,))[0], shapes.get("disk", (1.0,))[0]
        return Galaxy(
            components=components,
            redshift=z,
            hlr_arcsec=float(hlr),
            q=float(q),
            beta_deg=beta,
            sersic_n=4.0 if dominant == "bulge" else 1.0,
            bulge_fraction=bt,
            source_row=int(self.catsim_index[row]),
            extra={
                "template": str(self.fit.template[row]),
                "template_b": str(self.fit.template_b[row]),
                "template_b_weight": float(self.fit.weight[row]),
                "hlr_total_arcsec": float(composite_hlr(bt, hlr_b, hlr_d)),
                "galtileid": int(t["galtileid"]) if "galtileid" in t.colnames else -1,
            },
        )
