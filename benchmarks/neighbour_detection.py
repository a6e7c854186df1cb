"""How many of a stamp's neighbours joint refinement finds (issue 15), against the truth.

Refinement fits the central galaxy together with the neighbours it detects
(:func:`vaedeblend.refinement.joint.find_galaxies`, on the stamp minus the one-pass central
galaxy); a neighbour it misses can only give its light to the galaxies it fits. This counts, on
a simulated set, the true neighbours whose centre lies on the stamp that a detection matches
(one to one, brightest neighbour first, within ``--match-arcsec``), by the neighbour's r-band
flux relative to the target and by its distance from the centre, and the share of the
neighbours' r-band flux found. Three detection images side by side: the blend itself, the blend
minus the one-pass central galaxy (what refinement uses), and the blend minus the true
noiseless target (an oracle: the best a residual can do, so what detection cannot find there
is below the noise, not hidden by the central galaxy).

    python benchmarks/neighbour_detection.py --model lsst-centred --data TEST.h5 [--limit 600] \\
        [--max-galaxies K] [--record] [--note TEXT]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import add_test_set_arguments, check_at_least_one, report, table_body  # noqa: E402

from vaedeblend.dataset import open_dataset  # noqa: E402
from vaedeblend.pretrained import resolve_model  # noqa: E402
from vaedeblend.refinement import RefineSettings  # noqa: E402
from vaedeblend.refinement.joint import find_galaxies  # noqa: E402

FLUX_RATIO_BINS = [0, 0.1, 0.3, 1, np.inf]  # neighbour r flux / target r flux
DISTANCE_BINS = [0, 0.6, 1.0, 1.5, np.inf]  # arcsec from the stamp centre


def neighbours_on_stamp(truth, n: int, half_width_arcsec: float) -> list[np.ndarray]:
    """Per stamp, the truth rows of its neighbours whose centre is on the stamp, brightest
    first in r."""
    rows = truth[(truth["blend_index"] < n) & ~truth["is_target"]]
    rows = rows[
        np.maximum(np.abs(rows["dx_arcsec"]), np.abs(rows["dy_arcsec"])) < half_width_arcsec
    ]
    per_stamp = [rows[rows["blend_index"] == i] for i in range(n)]
    return [r[np.argsort(-r["flux_lsst_r"])] for r in per_stamp]


def match(neighbours, offsets, used, radius_arcsec: float) -> tuple[np.ndarray, int]:
    """(found per neighbour, in the order of ``neighbours`` flattened; detections matched to
    no neighbour): each neighbour, brightest first, takes the nearest free detection within
    ``radius_arcsec``."""
    found, unmatched = [], 0
    for i, mine in enumerate(neighbours):
        detected = offsets[i, 1:][used[i, 1:]]
        free = np.ones(len(detected), bool)
        for row in mine:
            dist = np.hypot(detected[:, 0] - row["dx_arcsec"], detected[:, 1] - row["dy_arcsec"])
            dist[~free] = np.inf
            hit = len(dist) > 0 and dist.min() < radius_arcsec
            if hit:
                free[dist.argmin()] = False
            found.append(hit)
        unmatched += int(free.sum())
    return np.array(found, bool), unmatched


def table(found: dict[str, np.ndarray], flux_ratio, distance, flux, unmatched) -> list[str]:
    """Rows: per bin, the neighbours and the fraction each detection image finds."""
    rows = []
    for label, value, edges in (("F/F_target", flux_ratio, FLUX_RATIO_BINS),
                                ("distance (arcsec)", distance, DISTANCE_BINS)):  # fmt: skip
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            sel = (value >= lo) & (value < hi)
            if sel.any():
                shares = " | ".join(f"{found[k][sel].mean():.2f}" for k in found)
                rows.append(f"| {label} {lo:g}-{hi:g} | {sel.sum()} | {shares} |")
    shares = " | ".join(f"**{found[k].mean():.2f}**" for k in found)
    rows.append(f"| all | {len(flux)} | {shares} |")
    flux_found = " | ".join(f"{(flux * found[k]).sum() / flux.sum():.2f}" for k in found)
    rows.append(f"| share of the neighbours' r flux found | | {flux_found} |")
    rows.append(
        f"| detections matched to no neighbour | | {' | '.join(map(str, unmatched.values()))} |"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_test_set_arguments(parser, "simulated blends with a truth table", "lsst-centred")
    parser.add_argument("--max-galaxies", type=int, default=RefineSettings.max_galaxies,
                        help="galaxies refinement fits per stamp, central included")  # fmt: skip
    parser.add_argument("--match-arcsec", type=float, default=0.4,
                        help="largest distance of a detection from the neighbour it finds")  # fmt: skip
    args = parser.parse_args()
    check_at_least_one(parser, limit=args.limit, max_galaxies=args.max_galaxies)
    if not args.match_arcsec > 0:
        parser.error("--match-arcsec must be > 0")
    model = resolve_model(args.model)
    with open_dataset(args.data) as ds:
        n = len(ds) if args.limit is None else min(args.limit, len(ds))
        order = [ds.band_ids.index(b) for b in model.band_ids]
        blends = np.ascontiguousarray(ds.read("blend", slice(0, n))[:, order])
        targets = ds.read("target", slice(0, n))[:, order]
        truth = ds.read("truth")
    sky = np.asarray(model.config["sky_levels_electrons"], dtype=float)
    scales = np.asarray(model.config["pixel_scales_arcsec"], dtype=float)
    settings = replace(RefineSettings(), max_galaxies=args.max_galaxies)
    images = {
        "the blend": blends,
        "blend - one pass (refinement's)": blends - model.deblend(blends),
        "blend - true target (oracle)": blends - targets,
    }
    neighbours = neighbours_on_stamp(truth, n, blends.shape[-1] / 2 * scales[0])
    found, unmatched = {}, {}
    for name, image in images.items():
        offsets, used = find_galaxies(image, sky, scales, settings)
        found[name], unmatched[name] = match(neighbours, offsets, used, args.match_arcsec)
    targets_r = {int(r["blend_index"]): r["flux_lsst_r"] for r in truth[truth["is_target"]]}
    flat = np.concatenate([m for m in neighbours if len(m)]) if n else truth[:0]
    flux = flat["flux_lsst_r"]
    flux_ratio = flux / np.array([targets_r[int(i)] for i in flat["blend_index"]])
    distance = np.hypot(flat["dx_arcsec"], flat["dy_arcsec"])
    intro = (
        f"Test set `{args.data.name}`, first {n} stamps; model `{args.model}`; refinement's "
        f"detection (`find_galaxies`: sep at {settings.nsigma} sigma, {settings.min_area} "
        f"pixels, none within {settings.merge_radius_pixels} pixels of the centre, at most "
        f"{args.max_galaxies - 1} neighbours per stamp). Neighbours: the truth's galaxies other "
        f"than the target whose centre is on the stamp; found: matched one to one by a "
        f"detection within {args.match_arcsec} arcsec. Columns: the fraction found on each "
        f"detection image. {args.note}"
    ).strip()
    columns = ["neighbours", "count", *found]
    report(f"Neighbour detection for refinement: {args.data.stem}, {args.model}",
           table_body(intro, columns, table(found, flux_ratio, distance, flux, unmatched)),
           args.record)  # fmt: skip


if __name__ == "__main__":
    main()
