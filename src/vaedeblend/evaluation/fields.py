"""Field-mode catalogues against the truth of simulated fields (``simulate --kind field``,
``truth.fits``): one-to-one matching by position and the scores of docs/field_mode.md
(completeness, purity, flux and shape errors)."""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

MATCH_ARCSEC = 0.6  # a detection within 0.6" (3 LSST pixels) of a true galaxy is that galaxy


def match(cat: Table, truth: Table, band="lsst_r", scale=0.2, radius=MATCH_ARCSEC):
    """One-to-one matches within ``radius`` arcsec, closest pairs first: (detection index,
    truth index) arrays."""
    if not len(cat):
        return np.zeros(0, int), np.zeros(0, int)
    det = np.column_stack([cat[f"x_{band}"], cat[f"y_{band}"]]) * scale
    tru = np.column_stack([truth[f"x_{band}"], truth[f"y_{band}"]]) * scale
    pairs = cKDTree(det).sparse_distance_matrix(cKDTree(tru), radius, output_type="ndarray")
    pairs = np.sort(pairs, order="v")
    used_d, used_t, di, ti = set(), set(), [], []
    for i, j, _ in pairs:
        if i not in used_d and j not in used_t:
            used_d.add(i)
            used_t.add(j)
            di.append(i)
            ti.append(j)
    return np.array(di, int), np.array(ti, int)


def field_scores(results: list[tuple[Table, Table]]) -> dict[str, float]:
    """Completeness (truth r < 25), purity, median |dF/F| (r, matched r < 25; model flux and
    data flux) and median |e_ksb - e_true| (matched r < 24.5, KSB successes) over several
    fields."""
    n_det = n_pure = n_bright = n_found = 0
    rel, rel_data, de = [], [], []
    for cat, truth in results:
        di, ti = match(cat, truth)
        n_det, n_pure = n_det + len(cat), n_pure + len(di)
        bright = truth["mag_lsst_r"] < 25
        n_bright += int(bright.sum())
        n_found += int(bright[ti].sum())
        keep = bright[ti]
        f_out, f_true = cat["flux_lsst_r"][di[keep]], truth["flux_lsst_r"][ti[keep]]
        rel.append(np.abs(f_out / f_true - 1))
        rel_data.append(np.abs(cat["flux_data_lsst_r"][di[keep]] / f_true - 1))
        shape = (truth["mag_lsst_r"][ti] < 24.5) & np.isfinite(cat["e1_ksb"][di])
        de.append(
            np.hypot(
                cat["e1_ksb"][di[shape]] - truth["e1"][ti[shape]],
                cat["e2_ksb"][di[shape]] - truth["e2"][ti[shape]],
            )
        )
    return {
        "completeness": n_found / max(n_bright, 1),
        "purity": n_pure / max(n_det, 1),
        "flux": float(np.median(np.concatenate(rel))),
        "flux_data": float(np.median(np.concatenate(rel_data))),
        "shape": float(np.median(np.concatenate(de))),
        "n_detected": n_det,
        "n_truth_r25": n_bright,
    }
