"""Where the central galaxy's flux error comes from (issue 15): the r-band flux error (stamp
sum, and in a 1 arcsec aperture as MADNESS measures) of the one pass and of the default stamp
refinement, against two limits that only a simulation can give, because they use the truth.

- **template limit**: the one-pass image used as a template whose amplitude is fitted
  (weighted least squares, weights 1 / (sky + target + neighbours)) to the blend less its
  *true* noiseless neighbours: what a flux fit with the deblender's shape gives when the
  neighbours are perfectly known. The gap from the refined row to it is the neighbours'
  (detection and fitting); the gap from it to the floor is the template's (the deblender's
  profile, issue 12).
- **noise floor**: the same fit with the true noiseless target as template: the noise alone.

A refinement that handled every neighbour perfectly could reach the template limit; gains
beyond it need a better one-pass shape.

    python benchmarks/flux_error_budget.py --model lsst-centred --data TEST.h5 [--limit 600] \\
        [--record] [--note TEXT]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import add_test_set_arguments, check_at_least_one, report, table_body  # noqa: E402

from vaedeblend.dataset import open_dataset  # noqa: E402
from vaedeblend.measure import aperture_flux  # noqa: E402
from vaedeblend.pretrained import resolve_model  # noqa: E402
from vaedeblend.refinement import STAMP_REFINEMENT, RefineSettings, refined  # noqa: E402

B_TOT_EDGES = [0, 0.05, 0.15, 0.3, np.inf]
BAND = "lsst_r"
# vaedeblend evaluate's aperture radius (evaluation.report.EvalConfig), as MADNESS's
APERTURE_ARCSEC = 1.0


def template_fit(template, data, variance) -> np.ndarray:
    """(N, H, W) electrons: ``template`` times its amplitude fitted to ``data`` by weighted
    least squares (weights 1 / ``variance``); arrays (N, H, W) in electrons."""
    weight = 1.0 / variance
    projection = (weight * template * data).sum(axis=(1, 2))
    norm = (weight * template * template).sum(axis=(1, 2))
    return template * (projection / norm)[:, None, None]


@dataclass
class Budget:
    """Signed r-band dF/F of each estimator, (N,) per key, by stamp sum and by aperture; B_tot."""

    stamp_sum: dict
    aperture: dict
    btot: np.ndarray


def flux_errors(model_name: str, data: Path, limit: int | None) -> Budget:
    """Each estimator's central-galaxy image in r, measured as the noiseless target is."""
    model = resolve_model(model_name)
    with open_dataset(data) as ds:
        n = len(ds) if limit is None else min(limit, len(ds))
        order = [ds.band_ids.index(b) for b in model.band_ids]
        blends = np.ascontiguousarray(ds.read("blend", slice(0, n))[:, order])
        r = ds.band_ids.index(BAND)
        target = ds.read("target", slice(0, n))[:, r].astype(np.float64)
        others = ds.read("others", slice(0, n))[:, r].astype(np.float64)
        sky = float(np.asarray(ds.sky_levels_electrons)[r])
        pixel_scale = float(np.asarray(ds.pixel_scales_arcsec)[r])
        btot = ds.read("blendedness", slice(0, n))
    r_model = model.band_ids.index(BAND)
    one_pass = model.deblend(blends)[:, r_model].astype(np.float64)
    refiner = refined(model, settings=RefineSettings(**STAMP_REFINEMENT))
    without_neighbours = blends[:, r_model].astype(np.float64) - others
    variance = sky + target.clip(min=0) + others.clip(min=0)
    images = {
        "one pass": one_pass,
        "refined (default)": refiner.refine(blends).central[:, r_model].astype(np.float64),
        "template limit: one-pass shape, true neighbours removed": template_fit(
            one_pass, without_neighbours, variance
        ),
        "noise floor: true shape, true neighbours removed": template_fit(
            target, without_neighbours, variance
        ),
    }

    def aperture(x):
        return aperture_flux(x, pixel_scale, APERTURE_ARCSEC)[0]

    true_sum, true_aperture = target.sum(axis=(1, 2)), aperture(target)
    return Budget(
        {k: v.sum(axis=(1, 2)) / true_sum - 1 for k, v in images.items()},
        {k: aperture(v) / true_aperture - 1 for k, v in images.items()},
        btot,
    )


def rows(budget: Budget) -> list[str]:
    bins = list(zip(B_TOT_EDGES[:-1], B_TOT_EDGES[1:], strict=True))
    base_sum = np.mean(np.abs(budget.stamp_sum["one pass"]))
    base_aperture = np.mean(np.abs(budget.aperture["one pass"]))
    out = []
    for name, e in budget.stamp_sum.items():
        a = np.mean(np.abs(budget.aperture[name]))
        cells = [f"{np.mean(np.abs(e[(budget.btot >= lo) & (budget.btot < hi)])):.3f}"
                 for lo, hi in bins]  # fmt: skip
        mean = np.mean(np.abs(e))
        out.append(f"| {name} | {mean:.3f} ({mean / base_sum:.2f}) | {a:.3f} "
                   f"({a / base_aperture:.2f}) | {np.median(e):+.3f} | "
                   + " | ".join(cells) + " |")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_test_set_arguments(parser, "blended test set with target and others", "lsst-centred")
    args = parser.parse_args()
    check_at_least_one(parser, limit=args.limit)
    budget = flux_errors(args.model, args.data, args.limit)
    btot = budget.btot
    counts = [int(((btot >= lo) & (btot < hi)).sum())
              for lo, hi in zip(B_TOT_EDGES[:-1], B_TOT_EDGES[1:], strict=True)]  # fmt: skip
    labels = [f"{lo:g}-{hi:g}" for lo, hi in zip(B_TOT_EDGES[:-1], B_TOT_EDGES[1:], strict=True)]
    columns = [
        "estimator",
        "mean abs(dF/F), stamp sum (ratio to one pass)",
        f"mean abs(dF/F), {APERTURE_ARCSEC:g} arcsec aperture (ratio)",
        "median dF/F, stamp sum",
    ] + [f"stamp sum, B_tot {label} (N {c})" for label, c in zip(labels, counts, strict=True)]
    intro = (
        f"`{args.model}` on the first {len(btot)} stamps of `{args.data.name}`: r-band fluxes "
        "of the central galaxy against its noiseless target's, as stamp sums and in a "
        f"{APERTURE_ARCSEC:g} arcsec circular aperture at the stamp centre (MADNESS's measure; "
        "its quoted ratio to debvader: 1.97 % / 3.91 % = 0.50); dF/F signed, positive is too "
        "bright. Refined: `--refine`'s stamp default (`STAMP_REFINEMENT`). The two limits fit "
        "a template's amplitude to the blend less its true noiseless neighbours."
        + (f" {args.note}" if args.note else "")
    )
    report(f"Flux error budget: {args.data.stem}, {args.model}",
           table_body(intro, columns, rows(budget)), args.record)  # fmt: skip


if __name__ == "__main__":
    main()
