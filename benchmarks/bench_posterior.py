"""Coverage of the refined model's flux and shape intervals (issue 15).

On a test set with known truth: refine each blend (``refined(model)``), draw the central
galaxy's Laplace posterior (``vaedeblend.refinement.posterior``), and count how often the truth
falls inside the 68 % (16-84 %) and 95 % (2.5-97.5 %) intervals: the r-band stamp-sum flux of
the noiseless target, and its adaptive-moment g1, g2 (measured as ``evaluate`` does). Overall,
by S/N bin (the target's S/N in r, paper formula) and by blendedness bin (the stored B_tot in
r), with the median signed flux error of the posterior median (the decoder's own bias, which no
interval can hide) and the median interval width. Also the seconds per galaxy for the posterior
alone.

    python benchmarks/bench_posterior.py --data TEST.h5 [--model lsst] [--limit 200] \\
        [--prior DIR] [--samples 64] [--central-prior deblender|fixed] [--flux-from-data E] \\
        [--pixels-from-data F] [--record] [--note TEXT]

``--central-prior deblender``: refine (and take the Laplace approximation) with the deblender's
q(z | stamp) as the central galaxy's prior; the prior's calibration must have been measured
with it (``vaedeblend prior ... --calibrate-on BLENDS.h5 --central-prior deblender``). Its
section in RESULTS.md is its own. ``--central-prior fixed --flux-from-data E`` likewise
(``RefineSettings`` fields of those names; a calibration measured with both).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from results import report  # noqa: E402

from vaedeblend.argtypes import positive_float  # noqa: E402
from vaedeblend.dataset import open_dataset  # noqa: E402
from vaedeblend.evaluation.coverage import bin_label, interval_coverage  # noqa: E402
from vaedeblend.measure import flux_sum, measure_shapes, snr  # noqa: E402
from vaedeblend.pretrained import resolve_model  # noqa: E402
from vaedeblend.refinement import RefineSettings, refined  # noqa: E402
from vaedeblend.refinement.posterior import central_posterior  # noqa: E402

INTERVALS = {"68": (1, 3), "95": (0, 4)}  # indices into QUANTILES (2.5, 16, 50, 84, 97.5 %)


def table_row(r: dict) -> str:
    return (
        f"| {bin_label(r)} | {r['n']} | {100 * r['flux_in_68']:.0f} % | {100 * r['flux_in_95']:.0f} % "
        f"| {100 * r['g_in_68']:.0f} % | {100 * r['g_in_95']:.0f} % | {100 * r['flux_bias']:+.1f} % "
        f"| {100 * r['flux_width']:.1f} % |"
    )


def intervals_hold(prior) -> str:
    """What the posterior intervals of ``prior`` carry besides the noise, in words."""
    calibration = prior.refined_error
    if calibration is not None:
        source = prior.config["refined_error"]
        return (
            f"the refined estimate's residuals on {len(calibration.snr)} simulated blends "
            f"(`{Path(source['data']).name}`; they hold the noise, no Laplace draws added; "
            "bias by S/N and estimated blendedness corrected; prior/config.json 'refined_error')"
        )
    if prior.decoder_error is not None:
        n = len(prior.decoder_error.snr)
        return f"noise and the decoder's own error (residuals of {n} isolated galaxies)"
    return "noise only (this prior carries no decoder error)"


def settings_text(settings: RefineSettings) -> str:
    """The refinement's central-galaxy settings in words."""
    text = {"fixed": "the central galaxy fixed at the one pass"}.get(
        settings.central_prior, f"{settings.central_prior} prior on the central galaxy"
    )
    if settings.flux_from_data is not None:
        text += f", its flux measured on the data (model error {settings.flux_from_data:g})"
    if settings.pixels_from_data is not None:
        text += f", its pixels from the data (model error {settings.pixels_from_data:g})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default="lsst")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument(
        "--prior", default=None, help="latent prior directory (default: the model's)"
    )
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--central-prior", choices=("flow", "deblender", "fixed"), default="flow")
    parser.add_argument("--flux-from-data", type=positive_float, default=None)
    parser.add_argument("--pixels-from-data", type=positive_float, default=None)
    parser.add_argument("--note", default="")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = resolve_model(args.model)
    settings = RefineSettings(central_prior=args.central_prior, flux_from_data=args.flux_from_data,
                              pixels_from_data=args.pixels_from_data)  # fmt: skip
    refiner = refined(model, prior=args.prior, settings=settings)
    intervals = intervals_hold(refiner.prior)
    with open_dataset(args.data) as ds:
        n = min(args.limit, len(ds))
        to_model = [ds.band_ids.index(b) for b in model.band_ids]
        blends = np.ascontiguousarray(ds.read("blend", slice(0, n))[:, to_model])
        targets = ds.read("target", slice(0, n))[:, to_model]
        b_tot = ds.read("blendedness", slice(0, n)) if "blendedness" in ds.keys() else None
        what = f"{ds.meta['kind']}, {ds.meta['centring']} centring, seed {ds.meta['seed']}"
    ref = model.band_ids.index("lsst_r")
    result = refiner.refine(blends)
    start = time.perf_counter()
    post = central_posterior(refiner, blends, result, n_samples=args.samples, shape_channel=ref)
    seconds = (time.perf_counter() - start) / n
    sky = float(model.config["sky_levels_electrons"][ref])
    flux_t = flux_sum(targets)[:, ref]
    truth_shapes = measure_shapes(targets[:, ref], None, model.config["pixel_scales_arcsec"][ref],
                                  method="adaptive")  # fmt: skip
    g_t = np.stack([truth_shapes.g1, truth_shapes.g2], axis=1)
    s = snr(targets[:, ref], sky)
    lines = [
        f"`{args.model}` refined ({settings_text(settings)}), Laplace "
        f"posterior of the central galaxy, {args.samples} "
        f"latent draws per galaxy, on the first {n} stamps of `{args.data.name}` ({what}). "
        "Coverage: share of truths inside the interval (target: 68 % and 95 %). Flux: r-band "
        "stamp sum of the noiseless target; shapes: its adaptive-moment g1 and g2 (both "
        "pooled). Bias: median (posterior median - truth) / truth of the flux; width: median "
        f"68 % interval width / posterior median. The intervals hold: {intervals}.",
        "",
        "| bin (r) | galaxies | flux in 68 % | flux in 95 % | g in 68 % | g in 95 % "
        "| flux bias | flux 68 % width |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = interval_coverage(flux_t, post.flux_electrons[:, ref], g_t, post.ellipticity, s,
                             INTERVALS, median=2, blendedness=b_tot)  # fmt: skip
    lines += [table_row(r) for r in rows]
    lines += [
        "",
        f"Posterior: {seconds:.3g} s per galaxy on one thread (refinement not included); "
        f"{100 * post.shape_failures.mean():.1f} % of the drawn images failed the shape "
        f"measurement. {args.note}",
    ]
    body = "\n".join(lines)
    own = {"flow": "", "fixed": ", fixed central"}.get(
        args.central_prior, f", {args.central_prior} prior on the central galaxy"
    )
    if args.flux_from_data is not None:
        own += f", flux from the data ({args.flux_from_data:g})"
    if args.pixels_from_data is not None:
        own += f", pixels from the data ({args.pixels_from_data:g})"
    report(f"Posterior coverage: {args.data.stem}{own}", body, args.record)


if __name__ == "__main__":
    main()
