"""Field mode with and without refinement on simulated LSST fields with known truth (issue 15).

Simulates ``--fields`` fields of ``--instruments`` (``lsst`` or ``lsst+euclid``; 40" wide, 60
galaxies per arcmin^2, seeds ``--first-seed``, +1, ...; the test fields' recipe) and deblends
each with the shipped model of those instruments: one pass and three passes,
without and with ``--refine`` (each galaxy's stamp fitted jointly with the neighbours found in
it, under the latent prior). Scores against the truth (``vaedeblend.evaluation.fields``):
completeness (true r < 25), purity, median |dF/F| in r of the matched r < 25 galaxies (model
flux, and the image flux shared in the models' ratio), median |e_KSB - e_true| (r < 24.5).
Seconds per galaxy of the refinement: (refined run - plain run) / galaxies, median over
fields, against MADNESS's quoted 1.3-1.9 s (anchors.md; it cannot run here). With
``--posterior``, the same for the posterior quantile columns, and the share of true r fluxes and
observed shapes inside their 68 % intervals. With ``--catalogue``, also one
pass at the true positions of every simulated galaxy (``deblend --sources``: a deeper
catalogue, the setting of MADNESS and scarlet), plain and refined (each stamp fitting its
catalogue neighbours at their positions).

    python benchmarks/bench_refined_field.py [--instruments lsst] [--fields 6] \\
        [--first-seed 301] [--posterior] [--catalogue] [--central-prior deblender|fixed] \\
        [--flux-from-data ERROR] [--pixels-from-data ERROR] [--work DIR] [--record] \\
        [--note TEXT]

``--central-prior``: ``RefineSettings.central_prior``; ``--flux-from-data``:
``RefineSettings.flux_from_data``; ``--pixels-from-data``: ``RefineSettings.pixels_from_data``
(each recorded in its own section when not the default).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from astropy.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from results import report  # noqa: E402

from vaedeblend import cli  # noqa: E402
from vaedeblend.argtypes import positive_float, positive_int  # noqa: E402
from vaedeblend.evaluation.fields import field_scores, match  # noqa: E402
from vaedeblend.fieldmode import deblend_field, make_settings, read_fits  # noqa: E402
from vaedeblend.pretrained import resolve_model  # noqa: E402
from vaedeblend.refinement import RefineSettings, refined  # noqa: E402

MADNESS_SECONDS_PER_GALAXY = (1.3, 1.9)  # quoted from anchors.md


def simulate_field(out: Path, instruments: str, seed: int) -> Path:
    """One field as the tests draw them (``tests/test_deblend_field.py``)."""
    if not (out / "truth.fits").exists():
        args = ["simulate", "--kind", "field", "--preset", "paper", "--instruments", instruments,
                "--field-size", "40", "--density", "60", "--n", "1", "--seed", str(seed),
                "--out", str(out), "--catalog-size", "3000", "--quiet"]  # fmt: skip
        if cli.main(args) != 0:
            raise SystemExit(f"simulating field {seed} failed")
    return out


def images_of(field: Path):
    files = sorted(p for p in field.glob("*.fits")
                   if not p.name.endswith("_noiseless.fits") and p.name != "truth.fits")  # fmt: skip
    return read_fits(files)


def true_positions(field: Path) -> Table:
    """A catalogue of every simulated galaxy of a field (sky positions, degrees)."""
    truth = Table.read(field / "truth.fits")
    return Table({"ra": truth["ra_deg"], "dec": truth["dec_deg"]})


def run(fields, model, passes: int, posterior: bool = False, catalogue: bool = False):
    """(catalogues with truths, seconds per field); ``catalogue``: deblend the true positions
    instead of detecting."""
    settings = make_settings(max_iterations=passes, posterior=posterior)
    runs, seconds = [], []
    for field in fields:
        sources = true_positions(field) if catalogue else None
        start = time.perf_counter()
        cat = deblend_field(images_of(field), model, settings=settings, sources=sources).catalog
        seconds.append(time.perf_counter() - start)
        runs.append((cat, Table.read(field / "truth.fits")))
    return runs, np.array(seconds)


def flux_coverage(runs) -> tuple[int, int]:
    """(galaxies whose true r flux lies in their 16-84 % posterior interval, matched true
    r < 25 galaxies with finite quantiles) over several fields."""
    inside = total = 0
    for cat, truth in runs:
        di, ti = match(cat, truth)
        keep = truth["mag_lsst_r"][ti] < 25
        di, ti = di[keep], ti[keep]
        low = np.asarray(cat["flux_q16_lsst_r"][di], dtype=float)
        high = np.asarray(cat["flux_q84_lsst_r"][di], dtype=float)
        true = np.asarray(truth["flux_lsst_r"][ti], dtype=float)
        ok = np.isfinite(low) & np.isfinite(high)
        inside += int(((low <= true) & (true <= high))[ok].sum())
        total += int(ok.sum())
    return inside, total


def shape_coverage(runs) -> tuple[int, int]:
    """(e1 and e2 components whose true value lies in their 16-84 % posterior interval,
    components of matched true r < 25 galaxies with finite quantiles and truth) over several
    fields. The truth is the galaxy's observed shape (``g1_observed``, ``g2_observed``:
    adaptive moments of it alone, noiseless and PSF-convolved, as the intervals are of)."""
    inside = total = 0
    for cat, truth in runs:
        if "g1_observed" not in truth.colnames:
            raise SystemExit("these fields predate truth.fits's observed shapes: simulate anew")
        di, ti = match(cat, truth)
        keep = truth["mag_lsst_r"][ti] < 25
        di, ti = di[keep], ti[keep]
        for component in ("1", "2"):
            low = np.asarray(cat[f"e{component}_q16"][di], dtype=float)
            high = np.asarray(cat[f"e{component}_q84"][di], dtype=float)
            true = np.asarray(truth[f"g{component}_observed"][ti], dtype=float)
            ok = np.isfinite(low) & np.isfinite(high) & np.isfinite(true)
            inside += int(((low <= true) & (true <= high))[ok].sum())
            total += int(ok.sum())
    return inside, total


def row(name: str, scores: dict) -> str:
    return (
        f"| {name} | {scores['n_detected']} | {100 * scores['completeness']:.0f} % "
        f"| {100 * scores['purity']:.0f} % | {100 * scores['flux']:.1f} % "
        f"| {100 * scores['flux_data']:.1f} % | {scores['shape']:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instruments", default="lsst", choices=["lsst", "lsst+euclid"])
    parser.add_argument("--fields", type=positive_int, default=6)
    parser.add_argument("--first-seed", type=int, default=301)
    parser.add_argument("--posterior", action="store_true")
    parser.add_argument("--catalogue", action="store_true", help="also at the true positions")
    parser.add_argument("--work", type=Path, default=None, help="keep the fields here")
    parser.add_argument(
        "--central-prior",
        choices=["flow", "deblender", "fixed"],
        default=RefineSettings.central_prior,
    )
    parser.add_argument(
        "--flux-from-data", type=positive_float, default=None, metavar="MODEL_ERROR"
    )
    parser.add_argument(
        "--pixels-from-data", type=positive_float, default=None, metavar="MODEL_ERROR"
    )
    parser.add_argument("--note", default="")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="refined_field_"))
    seeds = range(args.first_seed, args.first_seed + args.fields)
    fields = [simulate_field(work / f"{args.instruments}_{s}", args.instruments, s) for s in seeds]
    model = resolve_model(args.instruments)
    settings = RefineSettings(central_prior=args.central_prior, flux_from_data=args.flux_from_data,
                              pixels_from_data=args.pixels_from_data)  # fmt: skip
    lines = [
        f"`{args.instruments}` (shipped) on {args.fields} simulated {args.instruments} fields "
        f'(40" wide, 60 galaxies per arcmin^2, seeds {seeds[0]}-{seeds[-1]}), one torch thread. '
        "Flux: median |dF/F| in r of the matched "
        "true r < 25 galaxies (model flux; image flux shared in the models' ratio); shape: "
        "median |e_KSB - e_true| of the matched r < 24.5 ones.",
        "",
        "| run | detections | completeness | purity | flux | image flux | shape |",
        "|---|---|---|---|---|---|---|",
    ]
    per_galaxy = {}
    for passes in (1, 3):
        plain, t_plain = run(fields, model, passes)
        refine, t_refine = run(fields, refined(model, settings=settings), passes)
        n = np.array([len(c) for c, _ in refine])
        per_galaxy[passes] = float(np.median((t_refine - t_plain) / np.maximum(n, 1)))
        lines += [row(f"{passes} pass(es)", field_scores(plain)),
                  row(f"{passes} pass(es), refined", field_scores(refine))]  # fmt: skip
    if args.catalogue:
        plain, _ = run(fields, model, 1, catalogue=True)
        refine, _ = run(fields, refined(model, settings=settings), 1, catalogue=True)
        lines += [row("1 pass at true positions", field_scores(plain)),
                  row("1 pass at true positions, refined", field_scores(refine))]  # fmt: skip
    low, high = MADNESS_SECONDS_PER_GALAXY
    text = (
        f"Refinement: {per_galaxy[1]:.2f} s per galaxy with one pass, {per_galaxy[3]:.2f} s with "
        f"three (median over fields); MADNESS quoted {low}-{high} s per galaxy, "
        f"{low / per_galaxy[1]:.1f}-{high / per_galaxy[1]:.1f}x the one-pass time here "
        "(the goal: 10x)."
    )
    if args.posterior:
        with_post, t_post = run(
            fields, refined(model, settings=settings, posterior=True), 1, posterior=True
        )
        _, t_ref1 = run(fields, refined(model, settings=settings), 1)
        n = np.array([len(c) for c, _ in with_post])
        inside, total = flux_coverage(with_post)
        shapes_in, shapes_total = shape_coverage(with_post)
        text += (
            f" Posterior columns (--posterior): "
            f"{float(np.median((t_post - t_ref1) / np.maximum(n, 1))):.2f} s more per galaxy; "
            f"the true r flux of {100 * inside / max(total, 1):.0f} % of the {total} matched "
            "r < 25 galaxies lies in their 68 % interval (target 68 %; the truth: the galaxy's "
            f"total electrons, truth.fits), and {100 * shapes_in / max(shapes_total, 1):.0f} % "
            f"of their {shapes_total} shape components e1, e2 (the truth: `g1_observed`, "
            "`g2_observed`, adaptive moments of the galaxy alone, noiseless and PSF-convolved, "
            "as the intervals are of)."
        )
    lines += ["", text + (f" {args.note}" if args.note else "")]
    which = {"flow": "", "fixed": ", fixed central"}.get(
        args.central_prior, f", {args.central_prior} prior on the central"
    )
    if args.flux_from_data is not None:
        which += f", flux from the data ({args.flux_from_data:g})"
    if args.pixels_from_data is not None:
        which += f", pixels from the data ({args.pixels_from_data:g})"
    report(f"Refined field mode: {args.instruments}{which}", "\n".join(lines), args.record)


if __name__ == "__main__":
    main()
