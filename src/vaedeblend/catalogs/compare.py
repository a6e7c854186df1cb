"""Compare the synthetic catalog with a COSMOS parametric-fit catalog (distributions, KS tests).

Used by ``tests/test_catalogs.py`` and ``benchmarks/catalog_vs_cosmos.py``; the numbers quoted in
``docs/catalogs.md`` come from the latter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from vaedeblend.catalogs.synthetic import SyntheticCatalog

QUANTITIES = ("mag_f814w", "redshift", "hlr_arcsec", "q")


def cosmos_reference(directory, file_name: str = "real_galaxy_catalog_23.5_example.fits") -> dict:
    """Per-galaxy F814W mag, zphot, hlr (arcsec, area-equivalent, single-Sersic fit), axis ratio
    and bulge fraction of the galaxies GalSim's ``COSMOSCatalog`` keeps (default exclusions)."""
    import galsim

    catalog = galsim.COSMOSCatalog(file_name=file_name, dir=str(Path(directory)), use_real=False)
    fits = catalog.param_cat[catalog.orig_index]
    flux = np.asarray(fits["flux"])  # columns: sersic, bulge, disc, (unused)
    with np.errstate(invalid="ignore", divide="ignore"):
        bulge_fraction = np.where(
            fits["use_bulgefit"] == 1, flux[:, 1] / (flux[:, 1] + flux[:, 2]), np.nan
        )
    return {
        "mag_f814w": np.asarray(fits["mag_auto"], dtype=float),
        "redshift": np.asarray(fits["zphot"], dtype=float),
        "hlr_arcsec": np.asarray(fits["hlr"][:, 0], dtype=float),
        "q": np.asarray(fits["sersicfit"][:, 3], dtype=float),
        "sersic_n": np.asarray(fits["sersicfit"][:, 2], dtype=float),
        "bulge_fraction": bulge_fraction,
    }


def synthetic_reference(mag_limit_f814w: float, n: int = 20000, seed: int = 12345) -> dict:
    """The same quantities for a synthetic draw cut at ``mag_limit_f814w``.

    ``hlr_arcsec`` is the whole galaxy's half-light radius and ``q`` the axis ratio of its
    dominant component (the nearest analogues of a single-Sersic fit).
    """
    catalog = SyntheticCatalog(n=n, seed=seed, mag_limit_f814w=mag_limit_f814w)
    t = catalog.table
    bulge_dominated = t["bulge_fraction"] >= 0.5
    return {
        "mag_f814w": t["mag_f814w"],
        "redshift": t["redshift"],
        "hlr_arcsec": t["hlr"],
        "q": np.where(bulge_dominated, t["q_bulge"], t["q_disc"]),
        "bulge_fraction": t["bulge_fraction"],
    }


def compare(reference: dict, synthetic: dict, quantities=QUANTITIES) -> dict:
    """Two-sample KS statistic and p-value, medians, and the bootstrap error (68 %) of the
    reference median, per quantity."""
    rng = np.random.default_rng(0)
    out = {}
    for key in quantities:
        ref = reference[key][np.isfinite(reference[key])]
        syn = synthetic[key][np.isfinite(synthetic[key])]
        ks = stats.ks_2samp(ref, syn)
        boots = np.median(rng.choice(ref, size=(2000, len(ref))), axis=1)
        out[key] = {
            "ks_statistic": float(ks.statistic),
            "p_value": float(ks.pvalue),
            "median_reference": float(np.median(ref)),
            "median_reference_error": float(0.5 * np.diff(np.percentile(boots, [16, 84]))[0]),
            "median_synthetic": float(np.median(syn)),
            "n_reference": int(len(ref)),
            "n_synthetic": int(len(syn)),
        }
    return out
