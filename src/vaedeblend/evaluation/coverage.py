"""Coverage of posterior intervals: how often the truth falls inside a deblender's 68 %
intervals (16-84 % quantiles) of the reference-band flux and of the shape, overall, by S/N
bin and by blendedness (B_tot) bin, with the posterior median's own flux bias (which no
interval can hide) and the intervals' width.

Truths are measured as ``evaluate`` measures them: the stamp-sum flux of the noiseless target
(electrons) and its adaptive-moment (g1, g2) (GalSim HSM, PSF-convolved), the definitions the
posterior quantiles of ``refinement.posterior`` use.
"""

from __future__ import annotations

import numpy as np

from vaedeblend.measure import measure_shapes

SNR_EDGES = (0.0, 10.0, 20.0, 50.0, 200.0, np.inf)
# B_tot bins: coarser than the paper's ten over [0, 0.55] (coverage needs hundreds per bin)
BTOT_EDGES = (0.0, 0.05, 0.15, 0.3, 1.0)
QUANTILE_NAMES = ("q16", "q50", "q84")


def posterior_coverage(
    columns: dict[str, np.ndarray],
    target_electrons: np.ndarray,
    band: str,
    pixel_scale_arcsec: float,
    snr: np.ndarray,
    blendedness: np.ndarray | None = None,
) -> dict:
    """Coverage of the 68 % intervals in ``columns`` (``flux_q16_<band>`` ... ``e2_q84``,
    (N,) each) against the (N, H, W) noiseless targets in ``band``; ``snr`` (N,) their S/N,
    ``blendedness`` (N,) their B_tot (rows by B_tot bin too when given).

    Returns {"band", "definition", "rows"}: the rows of :func:`interval_coverage` with the
    68 % interval.
    """
    flux_t = target_electrons.sum(axis=(1, 2), dtype=np.float64)
    shapes = measure_shapes(target_electrons, None, pixel_scale_arcsec, method="adaptive")
    flux_q = np.stack([columns[f"flux_{q}_{band}"] for q in QUANTILE_NAMES], axis=-1)
    g_q = np.stack(
        [np.stack([columns[f"e{i}_{q}"] for q in QUANTILE_NAMES], axis=-1) for i in (1, 2)],
        axis=1,
    )
    g_t = np.stack([shapes.g1, shapes.g2], axis=1)
    return {
        "band": band,
        "definition": "share of noiseless-target truths (stamp-sum flux; adaptive-moment g1, "
        "g2 pooled) inside the posterior's 16-84 % interval (target 0.68); flux_bias: median "
        "(posterior median - truth) / truth; flux_width: median (q84 - q16) / q50",
        "rows": interval_coverage(
            flux_t, flux_q, g_t, g_q, snr, {"68": (0, 2)}, median=1, blendedness=blendedness
        ),
    }


def interval_coverage(
    flux_true: np.ndarray,
    flux_quantiles: np.ndarray,
    g_true: np.ndarray,
    g_quantiles: np.ndarray,
    snr: np.ndarray,
    intervals: dict[str, tuple[int, int]],
    median: int,
    blendedness: np.ndarray | None = None,
) -> list[dict]:
    """Coverage rows: all galaxies, then one per S/N bin (:data:`SNR_EDGES`) and, with
    ``blendedness``, one per B_tot bin (:data:`BTOT_EDGES`) that holds any galaxy.

    Args:
        flux_true: (N,) true fluxes; flux_quantiles: (N, Q) posterior quantiles, increasing.
        g_true: (N, 2) true g1, g2; g_quantiles: (N, 2, Q).
        snr: (N,) S/N of the truths; blendedness: (N,) their B_tot, or None.
        intervals: name -> (low, high) quantile indices of each interval, e.g. {"68": (1, 3)}.
        median: index of the posterior median.

    Returns:
        dicts with ``by`` (``all``, ``snr`` or ``btot``), ``bin``, ``n``, ``flux_in_<name>``
        and ``g_in_<name>`` (shares, g1 and g2 pooled; a NaN interval is a miss),
        ``flux_bias`` (median (median - truth) / truth) and ``flux_width`` (median width of the
        first interval / median).
    """
    selections = [("all", "all", np.ones(len(flux_true), bool))]
    binnings = [("snr", snr, SNR_EDGES)]
    if blendedness is not None:
        binnings.append(("btot", np.asarray(blendedness), BTOT_EDGES))
    for by, values, edges in binnings:
        for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            last = i == len(edges) - 2  # B_tot = 1 (a fully hidden target) is in the last bin
            sel = (values >= lo) & ((values <= hi) if last else (values < hi))
            if sel.any():
                selections.append((by, f"{lo:g}-{hi:g}", sel))
    low, high = next(iter(intervals.values()))  # the width is the first interval's
    rows = []
    for by, name, sel in selections:
        t, q, gt, gq = flux_true[sel], flux_quantiles[sel], g_true[sel], g_quantiles[sel]
        row = {"by": by, "bin": name, "n": int(sel.sum())}
        for label, (lo, hi) in intervals.items():
            row[f"flux_in_{label}"] = float(((t >= q[:, lo]) & (t <= q[:, hi])).mean())
            g_in = (gt >= gq[..., lo]) & (gt <= gq[..., hi])
            row[f"g_in_{label}"] = float(g_in.mean())
        with np.errstate(divide="ignore", invalid="ignore"):
            row["flux_bias"] = float(np.nanmedian((q[:, median] - t) / t))
            row["flux_width"] = float(np.nanmedian((q[:, high] - q[:, low]) / q[:, median]))
        rows.append(row)
    return rows


def coverage_markdown(coverage: dict) -> list[str]:
    """The coverage as a Markdown table (lines)."""
    lines = [
        f"Posterior coverage ({coverage['band']}): {coverage['definition']}.",
        "",
        "| bin | galaxies | flux in 68 % | g in 68 % | flux bias | flux 68 % width |",
        "|---|---|---|---|---|---|",
    ]
    for r in coverage["rows"]:
        lines.append(
            f"| {bin_label(r)} | {r['n']} | {100 * r['flux_in_68']:.0f} % | "
            f"{100 * r['g_in_68']:.0f} % | {100 * r['flux_bias']:+.1f} % | "
            f"{100 * r['flux_width']:.1f} % |"
        )
    return lines


def bin_label(row: dict) -> str:
    """A coverage row's bin for a table: ``all``, ``S/N 10-20`` or ``B_tot 0.05-0.15``."""
    prefix = {"all": "", "snr": "S/N ", "btot": "B_tot "}[row.get("by", "snr")]
    return prefix + row["bin"] if row["bin"] != "all" else "all"
