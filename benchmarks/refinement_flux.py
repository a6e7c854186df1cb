"""Where joint refinement changes the central galaxy's flux (issue 15): the r-band stamp-sum
flux error of the one-pass and the refined central galaxy, against the noiseless target, by
S/N, by true blendedness B_tot, and by how many galaxies the refinement fitted in the stamp.

bench_refinement.py gives the totals (refined stamp sums were worse than one pass while the
aperture fluxes were equal); this splits them, to show which stamps the extra error comes
from: galaxies fitted alone (undetected neighbours: their light can only go to the central) or
with detected neighbours (which can take the central's light).

    python benchmarks/refinement_flux.py --model lsst-centred --data TEST.h5 [--limit 600] \\
        [--positions detected|truth] [--flux-sigma S] [--central-prior flow|deblender|fixed] \\
        [--flux-from-data ERROR] [--record] [--note TEXT]

``--positions truth`` fits the galaxies at their true positions (the simulated set's truth
table, as MADNESS does) instead of those refinement detects: the difference is what detection
costs. ``--flux-sigma S`` also fits each galaxy's flux per band as a free scale with a prior of
width S in its natural log (``RefineSettings.flux_sigma``); ``--central-prior`` and
``--flux-from-data`` set the fields of ``RefineSettings`` of those names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import report  # noqa: E402

from vaedeblend.argtypes import positive_float  # noqa: E402
from vaedeblend.dataset import open_dataset  # noqa: E402
from vaedeblend.pretrained import resolve_model  # noqa: E402
from vaedeblend.refinement import GalaxyPositions, RefineSettings, refined  # noqa: E402

BINS = {
    "S/N": [0, 10, 20, 50, 200, np.inf],
    "B_tot": [0, 0.05, 0.15, 0.3, 1.0001],
    "galaxies fitted": [1, 2, 3, 4, 5],
}
# fewer galaxies than this in a bin: no row (its median would be noise)
MIN_PER_BIN = 10


def flux_errors(
    model_name: str,
    data: Path,
    limit: int,
    positions: str = "detected",
    settings: RefineSettings | None = None,
) -> dict[str, np.ndarray]:
    """Per stamp: signed r-band stamp-sum dF/F of the one-pass and refined central galaxy,
    the stamp's S/N and B_tot, and the galaxies refined together."""
    model = resolve_model(model_name)
    with open_dataset(data) as ds:
        n = min(limit, len(ds))
        bands = ds.band_ids
        order = [bands.index(b) for b in model.band_ids]
        blends = np.ascontiguousarray(ds.read("blend", slice(0, n))[:, order])
        targets = ds.read("target", slice(0, n))[:, order]
        snr, btot = ds.read("snr", slice(0, n)), ds.read("blendedness", slice(0, n))
        truth = ds.read("truth")
    r = model.band_ids.index("lsst_r")
    plain = model.deblend(blends)
    refiner = refined(model, settings=settings or RefineSettings())
    where = None
    if positions == "truth":
        half_width = model.stamp_size * model.config["pixel_scales_arcsec"][0] / 2
        where = GalaxyPositions.from_truth(truth, n, half_width, refiner.settings.max_galaxies)
    result = refiner.refine(blends, positions=where)
    true_flux = targets[:, r].sum(axis=(1, 2))
    return {
        "plain": plain[:, r].sum(axis=(1, 2)) / true_flux - 1,
        "refined": result.central[:, r].sum(axis=(1, 2)) / true_flux - 1,
        "S/N": snr, "B_tot": btot, "galaxies fitted": result.n_galaxies.astype(float),
    }  # fmt: skip


def table(e: dict[str, np.ndarray], key: str) -> str:
    rows = [
        f"| {key} | N | median dF/F one pass | median dF/F refined | "
        "mean abs(dF/F) one pass | mean abs(dF/F) refined |",
        "|---|---|---|---|---|---|",
    ]
    edges = BINS[key]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        s = (e[key] >= lo) & (e[key] < hi)
        if s.sum() < MIN_PER_BIN:
            continue
        label = f"{lo:g}" if key == "galaxies fitted" else f"{lo:g}-{hi:g}"
        rows.append(
            f"| {label} | {s.sum()} | {np.median(e['plain'][s]):+.3f} | "
            f"{np.median(e['refined'][s]):+.3f} | {np.mean(np.abs(e['plain'][s])):.3f} | "
            f"{np.mean(np.abs(e['refined'][s])):.3f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="lsst-centred")
    parser.add_argument("--data", type=Path, required=True, help="blended test set")
    parser.add_argument("--limit", type=int, default=600, help="first N stamps")
    parser.add_argument(
        "--positions",
        choices=["detected", "truth"],
        default="detected",
        help="galaxies fitted where refinement detects them, or at their true positions",
    )
    parser.add_argument(
        "--flux-sigma", type=float, default=None, help="fit flux scales with this prior width"
    )
    parser.add_argument(
        "--central-prior", choices=["flow", "deblender", "fixed"],
        default=RefineSettings.central_prior,
    )  # fmt: skip
    parser.add_argument(
        "--flux-from-data", type=positive_float, default=None,
        help="measure the central's flux on the data; the model's flux gets this fractional error",
    )  # fmt: skip
    parser.add_argument(
        "--data-flux-fit", choices=["joint", "share"], default=RefineSettings.data_flux_fit,
        help="with --flux-from-data: how the data measure it (RefineSettings.data_flux_fit)",
    )  # fmt: skip
    parser.add_argument("--record", action="store_true", help="write to benchmarks/RESULTS.md")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if args.limit < MIN_PER_BIN:
        parser.error(f"--limit must be at least {MIN_PER_BIN}")
    settings = RefineSettings(flux_sigma=args.flux_sigma, central_prior=args.central_prior,
                              flux_from_data=args.flux_from_data,
                              data_flux_fit=args.data_flux_fit)  # fmt: skip
    e = flux_errors(args.model, args.data, args.limit, args.positions, settings)
    worse = np.abs(e["refined"]) - np.abs(e["plain"])
    top = np.sort(worse)[-max(1, len(worse) // 20) :]
    body = "\n\n".join(
        [
            f"`{args.model}` on the first {len(worse)} stamps of `{args.data.name}`; r-band "
            "stamp sums of the central galaxy against its noiseless target (dF/F signed: "
            "positive is too bright), refinement with its default settings"
            + (
                f" and flux scales fitted (prior width {args.flux_sigma:g} in ln)"
                if args.flux_sigma
                else ""
            )
            + (
                f", the central galaxy's prior {args.central_prior}"
                if args.central_prior != RefineSettings.central_prior
                else ""
            )
            + (
                f", its flux measured on the data (model flux error {args.flux_from_data:g}, "
                f"{args.data_flux_fit} fit)"
                if args.flux_from_data
                else ""
            )
            + ", galaxies fitted "
            + (
                "at their true positions (truth table)."
                if args.positions == "truth"
                else "where it detects them."
            ),
            *(table(e, key) for key in BINS),
            f"All: mean abs(dF/F) one pass {np.mean(np.abs(e['plain'])):.3f}, refined "
            f"{np.mean(np.abs(e['refined'])):.3f}. Refined worse than one pass on "
            f"{100 * np.mean(worse > 0):.0f} % of the galaxies; the worst 5 % carry "
            f"{top.sum() / len(worse):+.4f} of the mean's change of {worse.mean():+.4f}.",
            args.note,
        ]
    )
    suffix = ", true positions" if args.positions == "truth" else ""
    suffix += f", flux scale {args.flux_sigma:g}" if args.flux_sigma else ""
    if args.central_prior != RefineSettings.central_prior:
        suffix += f", {args.central_prior} central"
    suffix += f", flux from the data ({args.flux_from_data:g})" if args.flux_from_data else ""
    if args.flux_from_data and args.data_flux_fit != RefineSettings.data_flux_fit:
        suffix += f", {args.data_flux_fit} fit"
    report(f"Refinement flux by stamp: {args.data.stem}{suffix}", body, args.record)


if __name__ == "__main__":
    main()
