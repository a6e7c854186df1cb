"""How close the catalogs are to their references: the numbers quoted in docs/catalogs.md.

Usage: ``python benchmarks/catalog_vs_cosmos.py [SHARED_DATA_DIR]`` (default ``../shared/data``
relative to the project root). Runs in about 10 s on one core. Prints Markdown tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import stats

from vaedeblend.catalogs import load_catalog
from vaedeblend.catalogs import synthetic as syn
from vaedeblend.catalogs.compare import compare, cosmos_reference, synthetic_reference

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def synthetic_vs_cosmos(cosmos_dir: Path) -> None:
    reference = cosmos_reference(cosmos_dir)
    print(f"## Synthetic vs COSMOS example ({len(reference['mag_f814w'])} galaxies)\n")
    for limit in (22.5, 23.5):
        result = compare(reference, synthetic_reference(limit))
        print(f"Synthetic cut at F814W < {limit} (20,000 galaxies, seed 12345):\n")
        print("| quantity | KS D | KS p | median COSMOS (±1σ bootstrap) | median synthetic |")
        print("|---|---|---|---|---|")
        for key, r in result.items():
            print(
                f"| {key} | {r['ks_statistic']:.3f} | {r['p_value']:.3g} | "
                f"{r['median_reference']:.3f} ± {r['median_reference_error']:.3f} | "
                f"{r['median_synthetic']:.3f} |"
            )
        print()
    bt = reference["bulge_fraction"]
    synthetic = synthetic_reference(22.5)
    print(
        "Bulge-dominated fraction (B/T >= 0.5): COSMOS "
        f"{np.mean(bt >= 0.5):.2f} (bulge+disc fits only; single-Sersic n >= 2.5: "
        f"{np.mean(reference['sersic_n'] >= 2.5):.2f}), synthetic "
        f"{np.mean(synthetic['bulge_fraction'] >= 0.5):.2f}\n"
    )


def synthetic_vs_relations() -> None:
    t = syn.draw_synthetic_table(200000, seed=7)
    mag = t["mag_f814w"]
    counts, edges = np.histogram(mag, bins=np.arange(17.0, 25.21, 0.4))
    slope = np.polyfit(0.5 * (edges[1:] + edges[:-1]), np.log10(counts), 1)[0]
    print("## Synthetic (200,000 galaxies, F814W < 25.2, seed 7) vs the cited relations\n")
    print(f"- counts slope {slope:.4f} dex/mag (LSST Science Book 0.31)")
    print(
        f"- mean z {t['redshift'].mean():.4f} (LSST Science Book 3 z0(25.2) = "
        f"{3 * (0.0417 * 25.2 - 0.744):.4f}); median z {np.median(t['redshift']):.3f}"
    )
    r_d = t["hlr_disc"] / (syn.EXP_HLR_PER_SCALE_LENGTH * np.sqrt(t["q_disc"]))
    print("\n| F814W bin | median z / (2.674 z0(m)) | median r_d / Miller x 0.84 |")
    print("|---|---|---|")
    for lo in (19.0, 21.0, 23.0, 24.5):
        b = (mag > lo) & (mag < lo + 0.5)
        z_ratio = np.median(t["redshift"][b]) / (
            stats.gamma.median(3.0) * syn.redshift_scale(lo + 0.25)
        )
        r_ratio = np.median(r_d[b]) / syn.median_disc_scale_length(lo + 0.25)
        print(f"| {lo}-{lo + 0.5} | {z_ratio:.3f} | {r_ratio:.3f} |")
    print(
        f'\nBulges at the 0.05" floor: {np.mean(t["hlr_bulge"][t["bulge_fraction"] > 0] <= 0.05):.2f}'
        f'; discs at the 3" ceiling: {np.mean(t["hlr_disc"] >= 3.0):.4f}\n'
    )


def catsim_residuals(path: Path) -> None:
    catalog = load_catalog("catsim", str(path), mag_limit_f814w=99.0)
    fit = catalog.fit
    z = np.asarray(catalog.table["redshift"])
    print(f"## CatSim SED fit ({len(catalog)} rows, all magnitudes)\n")
    print("| rows | n | median abs(model - catalog) u g r i z y | median RMS colour residual |")
    print("|---|---|---|---|")
    bright = fit.mag_f814w < 25.2
    for name, rows in (
        ("all", z >= 0),
        ("z < 1", z < 1),
        ("1 <= z < 2", (z >= 1) & (z < 2)),
        ("z >= 2", z >= 2),
        ("F814W < 25.2", bright),
    ):
        med = np.median(np.abs(fit.residuals[rows]), axis=0)
        print(
            f"| {name} | {rows.sum()} | {' '.join(f'{v:.3f}' for v in med)} | "
            f"{np.median(fit.rms_colour_residual[rows]):.3f} |"
        )
    print()


def real_residuals(directory: Path) -> None:
    catalog = load_catalog("real", str(directory))
    fit = catalog.fit
    med = np.median(np.abs(fit.residuals), axis=0)
    print(f"## Real-image catalog SED fit ({len(catalog)} galaxies, HSC g r i z y)\n")
    print(
        f"- median abs(model - HSC): {' '.join(f'{v:.3f}' for v in med)}; median RMS colour "
        f"residual {np.median(fit.rms_colour_residual):.3f}"
    )
    print(
        f"- catalog F814W MAG minus fitted F814W: median {np.median(catalog.f814w_offset):.3f}, "
        f"std {np.std(catalog.f814w_offset):.3f}\n"
    )


def main(data: Path) -> None:
    synthetic_vs_cosmos(data / "cosmos_23.5_example")
    synthetic_vs_relations()
    catsim_residuals(data / "catsim_sample" / "sample_input_catalog.fits")
    real_residuals(data / "cosmos_real_26_dev")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DATA)
