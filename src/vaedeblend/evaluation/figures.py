"""Figures of an evaluation in the paper's style (matplotlib, no pyplot state, PNG).

Error vs S/N and vs B_tot with the median line and the quartile band, m vs S/N, and galleries of
examples (blend, truth, output, residual) per band with an asinh stretch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from vaedeblend.evaluation._io import savefig_atomic

ERROR_LABELS = {
    "delta_abs_e": r"$\Delta|e| = |g|_{\rm out} - |g|_{\rm true}$",
    "delta_mag": r"$\Delta m = -2.5\log_{10}(F_{\rm out}/F_{\rm true})$",
}
X_LABELS = {"snr": "S/N (r band)", "blendedness": r"$B_{\rm tot}$", "mag": "r magnitude (AB)"}


def as_floats(values) -> np.ndarray:
    """List from JSON (None for NaN) to a float array."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def plot_binned(ax, binned: dict, label: str | None = None, color: str | None = None) -> None:
    """Median line at each bin's median x and the inter-quartile band, from a BinnedStats dict."""
    x, med = as_floats(binned["x_median"]), as_floats(binned["median"])
    q1, q3 = as_floats(binned["q1"]), as_floats(binned["q3"])
    ok = np.isfinite(x) & np.isfinite(med)
    (line,) = ax.plot(x[ok], med[ok], "o-", ms=3, lw=1.5, color=color, label=label)
    ax.fill_between(x[ok], q1[ok], q3[ok], color=line.get_color(), alpha=0.25, lw=0)


def log_x(ax) -> None:
    """Log x axis labelled at 1, 2, 5 x 10^k in plain numbers (S/N spans one or two decades).

    Left linear when nothing positive is plotted (e.g. every bin too small for m), since
    matplotlib cannot draw an empty log axis.
    """
    if not (np.isfinite(ax.dataLim.x0) and ax.dataLim.x0 > 0):
        ax.text(0.5, 0.5, "no bin with enough galaxies", transform=ax.transAxes, ha="center")
        return
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _robust_ylim(ax, y: np.ndarray) -> None:
    """Limit the y axis to the 1-99 % range (plus margin) so a few outliers do not hide the bulk."""
    y = y[np.isfinite(y)]
    if y.size > 4:
        lo, hi = np.percentile(y, [1, 99])
        pad = 0.1 * (hi - lo) + 1e-6
        ax.set_ylim(min(lo, 0) - pad, max(hi, 0) + pad)


def error_figure(per: dict, metrics: dict, xname: str, path: Path) -> None:
    """delta|e| and delta mag vs ``xname`` (snr, blendedness, mag): points, median, quartiles."""
    ref = metrics["reference_band"]
    binned = metrics["binned"]
    method = binned["shape_method"]
    ys = {
        "delta_abs_e": per[f"{method}.{ref}.delta_abs_e"],
        "delta_mag": per[f"flux_sum.{ref}.delta_mag"],
    }
    x = per["target_mag" if xname == "mag" else xname]
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    for ax, (key, y) in zip(fig.subplots(1, 2), ys.items(), strict=True):
        ax.scatter(x, y, s=3, c="0.55", alpha=0.35, lw=0, rasterized=True)
        plot_binned(ax, binned[xname][key], "median, Q1-Q3", color="C0")
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xlabel(X_LABELS[xname])
        ax.set_ylabel(ERROR_LABELS[key])
        _robust_ylim(ax, y)
        if xname == "snr":
            log_x(ax)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{metrics['label']}: errors vs {X_LABELS[xname]} ({ref}, N={metrics['n']})")
    savefig_atomic(fig, path)


def m_figure(metrics: dict, path: Path) -> None:
    """Ellipticity bias m (regression, per S/N bin) with 1-sigma errors."""
    b = metrics["binned"]["snr"]["m"]
    x, m, err = as_floats(b["x_median"]), as_floats(b["m"]), as_floats(b["m_err"])
    ok = np.isfinite(x) & np.isfinite(m)
    fig = Figure(figsize=(5, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.errorbar(x[ok], m[ok], yerr=err[ok], fmt="o-", ms=4, capsize=2, label=metrics["label"])
    ax.axhline(0.0, color="k", lw=0.8)
    log_x(ax)
    ax.set_xlabel(X_LABELS["snr"])
    ax.set_ylabel("ellipticity bias m")
    ax.set_title(f"m vs S/N ({metrics['binned']['shape_method']}, {metrics['reference_band']})")
    if ok.any():
        ax.legend(fontsize=8)
    savefig_atomic(fig, path)


def gallery_indices(blendedness: np.ndarray, n: int) -> np.ndarray:
    """n examples spread from the least to the most blended (by B_tot rank)."""
    order = np.argsort(blendedness, kind="stable")
    pos = np.unique(np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int))
    return order[pos]


def gallery_figure(data, per: dict, band: str, indices: np.ndarray, path: Path) -> None:
    """Rows: examples; columns: blend, truth, output (asinh stretch in units of the sky noise)
    and residual (output - truth) / input noise sigma, clipped to +/-5."""
    c = data.band_ids.index(band)
    sigma = np.sqrt(data.sky_levels_electrons[c])
    fig = Figure(figsize=(8.4, 2.1 * len(indices) + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(indices), 4))
    titles = ("blend", "truth", "output", r"residual / $\sigma$")
    for row, i in zip(axes, indices, strict=True):
        imgs = (data.blend[i, c], data.target[i, c], data.output[i, c])
        vmax = np.arcsinh(max(float(data.target[i, c].max()), 1.0) / sigma)
        for ax, img in zip(row[:3], imgs, strict=True):
            ax.imshow(np.arcsinh(img / sigma), origin="lower", cmap="gray", vmin=0, vmax=vmax)
        chi = (data.output[i, c] - data.target[i, c]) / np.sqrt(data.variance(c, i))
        im = row[3].imshow(chi, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
        fig.colorbar(im, ax=row[3], shrink=0.9)
        row[0].set_ylabel(f"#{i}  B={data.blendedness[i]:.2f}\nS/N={data.snr[i]:.0f}", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, t in zip(axes[0], titles, strict=True):
        ax.set_title(t, fontsize=9)
    fig.suptitle(f"{band} (asinh stretch, softening = sky noise {sigma:.1f} e-)", fontsize=10)
    savefig_atomic(fig, path)


def make_report_figures(data, per: dict, metrics: dict, config, out_dir: Path) -> list[str]:
    """Write all figures of one evaluation into ``out_dir``; return their file names."""
    names = []
    for xname in ("snr", "blendedness", "mag"):
        if xname in metrics["binned"]:
            name = f"error_vs_{xname}.png"
            error_figure(per, metrics, xname, out_dir / name)
            names.append(name)
    m_figure(metrics, out_dir / "m_vs_snr.png")
    names.append("m_vs_snr.png")
    idx = gallery_indices(data.blendedness, config.n_gallery)
    for band in config.gallery_bands or data.band_ids:
        name = f"gallery_{band}.png"
        gallery_figure(data, per, band, idx, out_dir / name)
        names.append(name)
    return names
