"""Where the central galaxy's flux error comes from (issue 15): the r-band stamp-sum error of
the one pass and of the default stamp refinement, against two limits that only a simulation
can give, because they use the truth.

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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import add_test_set_arguments, check_at_least_one, report, table_body  # noqa: E402

from vaedeblend.dataset import open_dataset  # noqa: E402
from vaedeblend.pretrained import resolve_model  # noqa: E402
from vaedeblend.refinement import STAMP_REFINEMENT, RefineSettings, refined  # noqa: E402

B_TOT_EDGES = [0, 0.05, 0.15, 0.3, np.inf]
BAND = "lsst_r"


def template_flux(template, data, variance) -> np.ndarray:
    """(N,) electrons: ``template``'s stamp sum times its amplitude fitted to ``data`` by
    weighted least squares (weights 1 / ``variance``); arrays (N, H, W) in electrons."""
    weight = 1.0 / variance
    projection = (weight * template * data).sum(axis=(1, 2))
    norm = (weight * template * template).sum(axis=(1, 2))
    return projection / norm * template.sum(axis=(1, 2))


def flux_errors(model_name: str, data: Path, limit: int | None) -> tuple[dict, np.ndarray]:
    """({estimator: (N,) signed r-band dF/F against the noiseless target}, (N,) B_tot)."""
    model = resolve_model(model_name)
    with open_dataset(data) as ds:
        n = len(ds) if limit is None else min(limit, len(ds))
        order = [ds.band_ids.index(b) for b in model.band_ids]
        blends = np.ascontiguousarray(ds.read("blend", slice(0, n))[:, order])
        r = ds.band_ids.index(BAND)
        target = ds.read("target", slice(0, n))[:, r].astype(np.float64)
        others = ds.read("others", slice(0, n))[:, r].astype(np.float64)
        sky = float(np.asarray(ds.sky_levels_electrons)[r])
        btot = ds.read("blendedness", slice(0, n))
    r_model = model.band_ids.index(BAND)
    one_pass = model.deblend(blends)[:, r_model].astype(np.float64)
    refiner = refined(model, settings=RefineSettings(**STAMP_REFINEMENT))
    refined_r = refiner.refine(blends).central[:, r_model].astype(np.float64)
    without_neighbours = blends[:, r_model].astype(np.float64) - others
    variance = sky + target.clip(min=0) + others.clip(min=0)
    true_flux = target.sum(axis=(1, 2))
    fluxes = {
        "one pass": one_pass.sum(axis=(1, 2)),
        "refined (default)": refined_r.sum(axis=(1, 2)),
        "template limit: one-pass shape, true neighbours removed": template_flux(
            one_pass, without_neighbours, variance
        ),
        "noise floor: true shape, true neighbours removed": template_flux(
            target, without_neighbours, variance
        ),
    }
    return {k: v / true_flux - 1 for k, v in fluxes.items()}, btot


def rows(errors: dict, btot: np.ndarray) -> list[str]:
    bins = list(zip(B_TOT_EDGES[:-1], B_TOT_EDGES[1:], strict=True))
    base = np.mean(np.abs(errors["one pass"]))
    out = []
    for name, e in errors.items():
        cells = [f"{np.mean(np.abs(e[(btot >= lo) & (btot < hi)])):.3f}" for lo, hi in bins]
        mean = np.mean(np.abs(e))
        out.append(f"| {name} | {mean:.3f} | {mean / base:.2f} | {np.median(e):+.3f} | "
                   + " | ".join(cells) + " |")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_test_set_arguments(parser, "blended test set with target and others", "lsst-centred")
    args = parser.parse_args()
    check_at_least_one(parser, limit=args.limit)
    errors, btot = flux_errors(args.model, args.data, args.limit)
    counts = [int(((btot >= lo) & (btot < hi)).sum())
              for lo, hi in zip(B_TOT_EDGES[:-1], B_TOT_EDGES[1:], strict=True)]  # fmt: skip
    labels = [f"{lo:g}-{hi:g}" for lo, hi in zip(B_TOT_EDGES[:-1], B_TOT_EDGES[1:], strict=True)]
    columns = ["estimator", "mean abs(dF/F)", "ratio to one pass", "median dF/F"] + [
        f"mean abs, B_tot {label} (N {c})" for label, c in zip(labels, counts, strict=True)
    ]
    intro = (
        f"`{args.model}` on the first {len(btot)} stamps of `{args.data.name}`: r-band stamp "
        "sums of the central galaxy against its noiseless target (dF/F signed: positive is too "
        "bright). Refined: `--refine`'s stamp default (`STAMP_REFINEMENT`). The two limits fit "
        "a template's amplitude to the blend less its true noiseless neighbours."
        + (f" {args.note}" if args.note else "")
    )
    report(f"Flux error budget: {args.data.stem}, {args.model}",
           table_body(intro, columns, rows(errors, btot)), args.record)  # fmt: skip


if __name__ == "__main__":
    main()
