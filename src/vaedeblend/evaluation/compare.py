"""Put several evaluations side by side: one Markdown table and figures on shared axes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from vaedeblend.evaluation._io import savefig_atomic, write_text_atomic
from vaedeblend.evaluation.figures import ERROR_LABELS, X_LABELS, as_floats, log_x, plot_binned
from vaedeblend.evaluation.report import HEADLINE_ROWS, format_value, md_cell


def load_metrics(run_dir: str | Path) -> dict:
    """metrics.json of one evaluation folder (or the file itself)."""
    p = Path(run_dir)
    p = p / "metrics.json" if p.is_dir() else p
    if not p.exists():
        raise FileNotFoundError(f"no metrics.json at {p}")
    return json.loads(p.read_text())


def comparison_markdown(runs: list[dict]) -> str:
    """One table: a row per headline metric, a column per run."""
    lines = [
        "# Comparison",
        "",
        "| metric | " + " | ".join(r["label"] for r in runs) + " |",
        "|---|" + "---|" * len(runs),
        "| N | " + " | ".join(str(r["n"]) for r in runs) + " |",
        "| reference band | " + " | ".join(r["reference_band"] for r in runs) + " |",
    ]
    for key, name in HEADLINE_ROWS:
        if any(key in r["headline"] for r in runs):
            cells = " | ".join(format_value(r["headline"].get(key)) for r in runs)
            lines.append(f"| {md_cell(name)} | {cells} |")
    return "\n".join(lines) + "\n"


def _compare_errors(runs: list[dict], xname: str, path: Path) -> None:
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for ax, key in zip(axes, ("delta_abs_e", "delta_mag"), strict=True):
        for k, r in enumerate(runs):
            plot_binned(ax, r["binned"][xname][key], r["label"], color=f"C{k}")
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xlabel(X_LABELS[xname])
        ax.set_ylabel(ERROR_LABELS[key])
        if xname == "snr":
            log_x(ax)
        ax.legend(fontsize=8)
    fig.suptitle(f"median and quartiles vs {X_LABELS[xname]}")
    savefig_atomic(fig, path)


def _compare_m(runs: list[dict], path: Path) -> None:
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    for k, r in enumerate(runs):
        b = r["binned"]["snr"]["m"]
        x, m, err = as_floats(b["x_median"]), as_floats(b["m"]), as_floats(b["m_err"])
        ok = np.isfinite(x) & np.isfinite(m)
        # A small multiplicative offset per run so error bars at the same S/N do not overlap.
        xs = x[ok] * 1.03**k
        ax.errorbar(xs, m[ok], yerr=err[ok], fmt="o-", ms=4, capsize=2, color=f"C{k}",
                    label=r["label"])  # fmt: skip
    ax.axhline(0.0, color="k", lw=0.8)
    log_x(ax)
    ax.set_xlabel(X_LABELS["snr"])
    ax.set_ylabel("ellipticity bias m")
    ax.legend(fontsize=8)
    savefig_atomic(fig, path)


def compare_runs(
    run_dirs: list[str | Path], out_dir: str | Path, labels: list[str] | None = None
) -> dict:
    """Compare evaluations written by ``evaluate_arrays``.

    Args:
        run_dirs: folders holding metrics.json (or the files themselves).
        out_dir: where to write ``comparison.md`` and the ``compare_*.png`` figures.
        labels: names for the runs, replacing the labels stored in their metrics.

    Returns:
        {"table": path of the Markdown file, "figures": [file names]}.
    """
    runs = [load_metrics(d) for d in run_dirs]
    if labels is not None:
        if len(labels) != len(runs):
            raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
        for r, lab in zip(runs, labels, strict=True):
            r["label"] = lab
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "comparison.md", comparison_markdown(runs))
    figures = []
    for xname in ("blendedness", "snr", "mag"):
        if all(xname in r["binned"] for r in runs):
            name = f"compare_error_vs_{xname}.png"
            _compare_errors(runs, xname, out / name)
            figures.append(name)
    _compare_m(runs, out / "compare_m_vs_snr.png")
    figures.append("compare_m_vs_snr.png")
    return {"table": str(out / "comparison.md"), "figures": figures}
