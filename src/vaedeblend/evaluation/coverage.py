"""Coverage of posterior intervals: how often the truth falls inside a deblender's 68 %
intervals (16-84 % quantiles) of the reference-band flux and of the shape, overall and by S/N
bin, with the posterior median's own flux bias (which no interval can hide) and the intervals'
width.

Truths are measured as ``evaluate`` measures them: the stamp-sum flux of the noiseless target
(electrons) and its adaptive-moment (g1, g2) (GalSim HSM, PSF-convolved), the definitions the
posterior quantiles of ``refinement.posterior`` use.
"""

from __future__ import annotations

import numpy as np

from vaedeblend.measure import measure_shapes

SNR_EDGES = (0.0, 10.0, 20.0, 50.0, 200.0, np.inf)
QUANTILE_NAMES = ("q16", "q50", "q84")


def posterior_coverage(
    columns: dict[str, np.ndarray],
    target_electrons: np.ndarray,
    band: str,
    pixel_scale_arcsec: float,
    snr: np.ndarray,
) -> dict:
    """Coverage of the 68 % intervals in ``columns`` (``flux_q16_<band>`` ... ``e2_q84``,
    (N,) each) against the (N, H, W) noiseless targets in ``band``; ``snr`` (N,) their S/N.

    Returns {"band", "definition", "rows": [{"bin", "n", "flux_in_68", "g_in_68",
    "flux_bias", "flux_width"}, ...]} with shares and relative values as fractions; the first
    row is all galaxies, then one per S/N bin that holds any.
    """
    flux_t = target_electrons.sum(axis=(1, 2), dtype=np.float64)
    shapes = measure_shapes(target_electrons, None, pixel_scale_arcsec, method="adaptive")
    flux_q = np.stack([columns[f"flux_{q}_{band}"] for q in QUANTILE_NAMES], axis=-1)
    g_q = [np.stack([columns[f"e{i}_{q}"] for q in QUANTILE_NAMES], axis=-1) for i in (1, 2)]
    g_t = [shapes.g1, shapes.g2]
    rows = [_row("all", np.ones(len(flux_t), bool), flux_t, flux_q, g_t, g_q)]
    for lo, hi in zip(SNR_EDGES[:-1], SNR_EDGES[1:], strict=True):
        sel = (snr >= lo) & (snr < hi)
        if sel.any():
            rows.append(_row(f"{lo:g}-{hi:g}", sel, flux_t, flux_q, g_t, g_q))
    return {
        "band": band,
        "definition": "share of noiseless-target truths (stamp-sum flux; adaptive-moment g1, "
        "g2 pooled) inside the posterior's 16-84 % interval (target 0.68); flux_bias: median "
        "(posterior median - truth) / truth; flux_width: median (q84 - q16) / q50",
        "rows": rows,
    }


def _inside(truth, q) -> np.ndarray:
    return (truth >= q[..., 0]) & (truth <= q[..., 2])  # NaN intervals count as misses


def _row(name, sel, flux_t, flux_q, g_t, g_q) -> dict:
    g_in = np.concatenate([_inside(t[sel], q[sel]) for t, q in zip(g_t, g_q, strict=True)])
    with np.errstate(divide="ignore", invalid="ignore"):
        bias = (flux_q[sel, 1] - flux_t[sel]) / flux_t[sel]
        width = (flux_q[sel, 2] - flux_q[sel, 0]) / flux_q[sel, 1]
    return {
        "bin": name,
        "n": int(sel.sum()),
        "flux_in_68": float(_inside(flux_t[sel], flux_q[sel]).mean()),
        "g_in_68": float(g_in.mean()),
        "flux_bias": float(np.nanmedian(bias)),
        "flux_width": float(np.nanmedian(width)),
    }


def coverage_markdown(coverage: dict) -> list[str]:
    """The coverage as a Markdown table (lines)."""
    lines = [
        f"Posterior coverage ({coverage['band']}): {coverage['definition']}.",
        "",
        "| S/N bin | galaxies | flux in 68 % | g in 68 % | flux bias | flux 68 % width |",
        "|---|---|---|---|---|---|",
    ]
    for r in coverage["rows"]:
        lines.append(
            f"| {r['bin']} | {r['n']} | {100 * r['flux_in_68']:.0f} % | "
            f"{100 * r['g_in_68']:.0f} % | {100 * r['flux_bias']:+.1f} % | "
            f"{100 * r['flux_width']:.1f} % |"
        )
    return lines
