"""Binned statistics of per-galaxy errors: medians, quartiles and bias in bins of a variable.

Per-galaxy inputs are 1-d arrays of length N (one value per test stamp). NaN values (failed
measurements) are left out of every statistic; the counts say how many were used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaedeblend.evaluation.bias import linear_fit

# S/N bins (paper formula, reference band). The paper quotes m at S/N 10-20 and above 200.
SNR_EDGES = (0.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1.0e6)
# The paper's 10 equal-width bins of B_tot over [0, 0.55].
BLENDEDNESS_EDGES = tuple(np.linspace(0.0, 0.55, 11).round(6))
# Reference-band AB magnitude of the target, 1 mag bins.
MAG_EDGES = tuple(np.arange(16.0, 29.5, 1.0))
PAPER_B_RANGE = (0.0, 0.55)
PAPER_N_BINS = 10


def bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each x for increasing ``edges`` (n_bins + 1): -1 outside; the last edge included."""
    x = np.asarray(x, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(edges, x, side="right") - 1
    idx[x == edges[-1]] = len(edges) - 2
    idx[(idx < 0) | (idx > len(edges) - 2) | ~np.isfinite(x)] = -1
    return idx


@dataclass
class BinnedStats:
    """Median and quartiles of y in bins of x.

    Arrays have one entry per bin (``edges`` has one more); NaN in empty bins. ``x_median`` is
    the median x of each bin (where to plot it).
    """

    edges: np.ndarray
    count: np.ndarray
    x_median: np.ndarray
    median: np.ndarray
    q1: np.ndarray
    q3: np.ndarray

    def to_dict(self) -> dict:
        """JSON-ready dict of lists."""
        return {k: np.asarray(v).tolist() for k, v in self.__dict__.items()}


def binned_stats(x: np.ndarray, y: np.ndarray, edges) -> BinnedStats:
    """Median, first and third quartile of y (N,) in bins of x (N,) given ``edges``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    nb = len(edges) - 1
    idx = bin_index(x, edges)
    out = {k: np.full(nb, np.nan) for k in ("x_median", "median", "q1", "q3")}
    count = np.zeros(nb, dtype=np.int64)
    for b in range(nb):
        sel = (idx == b) & np.isfinite(y)
        count[b] = sel.sum()
        if count[b]:
            out["q1"][b], out["median"][b], out["q3"][b] = np.percentile(y[sel], [25, 50, 75])
            out["x_median"][b] = np.median(x[sel])
    return BinnedStats(edges=edges, count=count, **out)


def binned_bias(
    x: np.ndarray, g_true: np.ndarray, g_measured: np.ndarray, edges, min_count: int = 10
) -> dict[str, list]:
    """The paper's ellipticity bias m (and c) in bins of x.

    ``g_true``, ``g_measured``: (N, 2); rows with NaN or |g| > 1 are excluded. Each bin's m and
    c are the averages over the two components of the regression (see ``bias.linear_fit``); NaN
    for bins with fewer than ``min_count`` usable galaxies.
    """
    gt = np.asarray(g_true, dtype=np.float64)
    gm = np.asarray(g_measured, dtype=np.float64)
    ok = np.all(np.isfinite(gt) & np.isfinite(gm), axis=1)
    ok &= (np.sum(gt**2, axis=1) <= 1) & (np.sum(gm**2, axis=1) <= 1)
    edges = np.asarray(edges, dtype=np.float64)
    idx = bin_index(x, edges)
    keys = ("m", "m_err", "c", "c_err", "x_median")
    res: dict[str, list] = {k: [] for k in keys}
    res["count"] = []
    for b in range(len(edges) - 1):
        sel = ok & (idx == b)
        res["count"].append(int(sel.sum()))
        if sel.sum() < max(min_count, 3):
            for k in keys:
                res[k].append(float("nan"))
            continue
        fits = [linear_fit(gt[sel, i], gm[sel, i]) for i in range(2)]
        res["m"].append(0.5 * (fits[0].m + fits[1].m))
        res["m_err"].append(0.5 * float(np.hypot(fits[0].m_err, fits[1].m_err)))
        res["c"].append(0.5 * (fits[0].c + fits[1].c))
        res["c_err"].append(0.5 * float(np.hypot(fits[0].c_err, fits[1].c_err)))
        res["x_median"].append(float(np.median(np.asarray(x)[sel])))
    res["edges"] = edges.tolist()
    return res


def paper_binned_statistic(
    blendedness: np.ndarray,
    signed_error: np.ndarray,
    n_bins: int = PAPER_N_BINS,
    b_range: tuple[float, float] = PAPER_B_RANGE,
) -> dict[str, float]:
    """The paper's table statistic: "binned |median|".

    In each of ``n_bins`` equal-width bins of B_tot over ``b_range``, take |median| (and |Q1|,
    |Q3|) of the signed error; average over the non-empty bins. A measure of bias, not of
    scatter: it is NOT the median of the absolute errors. Galaxies with B_tot outside the range
    do not enter. Returns ``binned_abs_median``, ``binned_abs_q1``, ``binned_abs_q3`` and
    ``n_bins_used``.
    """
    edges = np.linspace(b_range[0], b_range[1], n_bins + 1)
    st = binned_stats(blendedness, signed_error, edges)
    used = st.count > 0
    if not used.any():
        nan = float("nan")
        return dict(binned_abs_median=nan, binned_abs_q1=nan, binned_abs_q3=nan, n_bins_used=0)
    return {
        "binned_abs_median": float(np.mean(np.abs(st.median[used]))),
        "binned_abs_q1": float(np.mean(np.abs(st.q1[used]))),
        "binned_abs_q3": float(np.mean(np.abs(st.q3[used]))),
        "n_bins_used": int(used.sum()),
    }


def error_summary(signed_error: np.ndarray) -> dict[str, float]:
    """Plain statistics of a signed error (N,), NaN left out and counted.

    ``mean``, ``median``, ``q1``, ``q3`` of the signed error; ``median_abs`` and ``mean_abs`` of its
    absolute value; ``std``; ``n`` used and ``n_nan`` left out.
    """
    e = np.asarray(signed_error, dtype=np.float64)
    fin = e[np.isfinite(e)]
    n_nan = int(e.size - fin.size)
    if fin.size == 0:
        nan = float("nan")
        return dict(mean=nan, median=nan, q1=nan, q3=nan, median_abs=nan, mean_abs=nan,
                    std=nan, n=0, n_nan=n_nan)  # fmt: skip
    q1, med, q3 = np.percentile(fin, [25, 50, 75])
    return {
        "mean": float(np.mean(fin)),
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "median_abs": float(np.median(np.abs(fin))),
        "mean_abs": float(np.mean(np.abs(fin))),
        "std": float(np.std(fin)),
        "n": int(fin.size),
        "n_nan": n_nan,
    }
