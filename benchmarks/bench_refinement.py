"""Refined against unrefined: the same model on the same blends, measured by one code path.

For a test set, the model's one-pass outputs and its refined outputs (``refined(model)``: all
detected galaxies of each stamp fitted jointly through the decoder under the latent prior,
issue 15) are written as ``deblended`` files and measured by ``evaluate_dataset``, as in
``side_by_side.py``: m, binned abs(median d abs(e)) and abs(median dmag), mean abs(dF/F) in r,
sigma(e1), plus the refinement's seconds per galaxy fitted (the goal: 10x faster than
MADNESS's quoted 1.3-1.9 s, i.e. <= 0.15 s) and the fit's median loss change.

    python benchmarks/bench_refinement.py --data TEST.h5 --model lsst [--limit 1000] \\
        [--threads 1] [--iterations N] [--central-prior deblender|fixed] \\
        [--flux-anchor SIGMA] [--flux-from-data ERROR] [--pixels-from-data ERROR] \\
        [--record] [--note TEXT]

``--iterations``: the most Adam steps per batch (``RefineSettings.iterations``; default its
default); ``--central-prior``: ``RefineSettings.central_prior``; ``--flux-anchor``:
``RefineSettings.flux_anchor_sigma`` (natural log); ``--flux-from-data``:
``RefineSettings.flux_from_data`` (the central's flux measured on the data, the model's given
this fractional error); ``--pixels-from-data``: a third row, the same refinement with
``RefineSettings.pixels_from_data`` (the central's pixels combined with its share of the data,
the model's given this fractional error per pixel), run on the same blends. A run with other
settings than the defaults is recorded in its own section.

Timings are only meaningful with nothing else running on the machine (``--note`` says when a
figure was measured beside a background job).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from results import report  # noqa: E402
from side_by_side import measure, weights_hash  # noqa: E402

from vaedeblend.argtypes import positive_float, positive_int  # noqa: E402
from vaedeblend.dataset import open_dataset, write_h5  # noqa: E402
from vaedeblend.pretrained import resolve_model  # noqa: E402
from vaedeblend.refinement import RefineSettings, refined  # noqa: E402

# quoted from anchors.md (MADNESS, Biswas et al. 2024): r-band mean abs(dF/F), seconds/galaxy
MADNESS_QUOTE = {"debvader": 0.0391, "scarlet": 0.0278, "madness": 0.0197, "s_per_gal": (1.3, 1.9)}


def outputs(
    model_name: str,
    data: Path,
    limit: int | None,
    work: Path,
    settings: RefineSettings,
    pixels_from_data: float | None = None,
) -> dict:
    """Write the unrefined and refined outputs (and, with ``pixels_from_data``, the refined
    ones with the data's pixels); time each."""
    model = resolve_model(model_name)
    refiner = refined(model, settings=settings)
    with open_dataset(data) as ds:
        n = len(ds) if limit is None else min(limit, len(ds))
        blends = ds.read("blend", slice(0, n))
        bands = ds.band_ids
        meta = {"fingerprint": ds.meta["fingerprint"], "band_ids": json.dumps(bands)}
    start = time.perf_counter()
    plain = model.deblend(blends, bands=bands)
    plain_s = time.perf_counter() - start
    to_model = [bands.index(b) for b in model.band_ids]
    start = time.perf_counter()
    result = refiner.refine(np.ascontiguousarray(blends[:, to_model]))
    refine_s = time.perf_counter() - start
    to_input = [model.band_ids.index(b) for b in bands]
    write_h5(work / "plain.h5", {"deblended": plain}, meta)
    write_h5(work / "refined.h5", {"deblended": result.central[:, to_input]}, meta)
    pixels_s = None
    if pixels_from_data is not None:
        with_pixels = refined(model, settings=replace(settings, pixels_from_data=pixels_from_data))
        start = time.perf_counter()
        central = with_pixels.refine(np.ascontiguousarray(blends[:, to_model])).central
        pixels_s = (time.perf_counter() - start) / n
        write_h5(work / "pixels.h5", {"deblended": central[:, to_input]}, meta)
    return {
        "n": n, "plain_s_per_blend": plain_s / n, "refine_s_per_blend": refine_s / n,
        "pixels_s_per_blend": pixels_s,
        "galaxies": int(result.n_galaxies.sum()),
        "s_per_galaxy": refine_s / max(1, int(result.n_galaxies.sum())),
        "median_loss_change": float(np.median(result.final_loss - result.initial_loss)),
        "worse": int(np.sum(result.final_loss > result.initial_loss)),
        "iterations": int(np.median(result.iterations)),
        "weights": weights_hash(model),
    }  # fmt: skip


def table(t: dict, plain: dict, refined_row: dict, pixels: dict | None = None) -> str:
    lines = [
        "| output | m | binned abs(med d abs(e)) | binned abs(med dmag) | median abs(d abs(e)) "
        "| mean abs(dF/F) r, aperture / sum | sigma(e1) adaptive | KSB failures | s per blend |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("one pass", plain, t["plain_s_per_blend"]),
            ("refined", refined_row, t["refine_s_per_blend"])]  # fmt: skip
    if pixels is not None:
        rows.append(("refined, pixels from the data", pixels, t["pixels_s_per_blend"]))
    for name, r, s in rows:
        lines.append(
            f"| {name} | {r['m']:.3f} | {r['binned_de']:.3f} | {r['binned_dmag']:.3f} | "
            f"{r['median_de']:.3f} | "
            f"{100 * r['dff_aperture']:.1f} % / {100 * r['dff_sum']:.1f} % | "
            f"{r['sigma_e1']:.3f} | {r['failures']} | {s:.4f} |"
        )
    lo, hi = MADNESS_QUOTE["s_per_gal"]
    spg = t["s_per_galaxy"]
    lines += [
        "",
        f"Refinement: {t['galaxies']} galaxies fitted in {t['n']} blends "
        f"({t['galaxies'] / t['n']:.2f} per blend), {spg:.3f} s per galaxy: "
        f"{lo / spg:.1f}-{hi / spg:.1f}x MADNESS's quoted {lo}-{hi} s (goal: 10x). "
        f"Median loss change {t['median_loss_change']:.1f} nats per blend; "
        f"{t['worse']} blends ended above their start (must be 0); "
        f"median {t['iterations']} Adam steps.",
        "",
        "Flux-error ratio refined / one pass (mean abs(dF/F) r, stamp sum): "
        f"{refined_row['dff_sum'] / plain['dff_sum']:.2f}; MADNESS's quoted gain over debvader "
        f"{MADNESS_QUOTE['madness'] / MADNESS_QUOTE['debvader']:.2f} "
        f"({100 * MADNESS_QUOTE['debvader']:.2f} % -> {100 * MADNESS_QUOTE['madness']:.2f} %, "
        "anchors.md, other galaxies and metric details).",
    ]
    if pixels is not None:
        lines += [
            "",
            "Pixels from the data against the refined model (ratios, same blends): median "
            f"abs(d abs(e)) {pixels['median_de'] / refined_row['median_de']:.2f}, sigma(e1) "
            f"{pixels['sigma_e1'] / refined_row['sigma_e1']:.2f}, mean abs(dF/F) r "
            f"{pixels['dff_sum'] / refined_row['dff_sum']:.2f}.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default="lsst")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=positive_int, default=RefineSettings.iterations)
    parser.add_argument(
        "--central-prior",
        choices=["flow", "deblender", "fixed"],
        default=RefineSettings.central_prior,
    )
    parser.add_argument("--flux-anchor", type=positive_float, default=None)
    parser.add_argument("--flux-from-data", type=positive_float, default=None)
    parser.add_argument(
        "--pixels-from-data", type=positive_float, default=None,
        help="also the refinement with RefineSettings.pixels_from_data of this value (a row)",
    )  # fmt: skip
    parser.add_argument("--note", default="")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = RefineSettings(iterations=args.iterations, central_prior=args.central_prior,
                              flux_anchor_sigma=args.flux_anchor,
                              flux_from_data=args.flux_from_data)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        timing = outputs(args.model, args.data, args.limit, work, settings, args.pixels_from_data)
        n = timing["n"]
        plain = measure(args.data, work / "plain.h5", work / "plain", n)
        refined_row = measure(args.data, work / "refined.h5", work / "refined", n)
        pixels = None
        if args.pixels_from_data is not None:
            pixels = measure(args.data, work / "pixels.h5", work / "pixels", n)
    with open_dataset(args.data) as ds:
        what = f"{ds.meta['kind']}, {ds.meta['centring']} centring, seed {ds.meta['seed']}"
    body = (
        f"`{args.model}` (weights {timing['weights']}) on the first {n} stamps of "
        f"`{args.data.name}` ({what}), "
        f"{args.threads} torch thread(s).\n\n" + table(timing, plain, refined_row, pixels)
        + (f"\n\n{args.note}" if args.note else "")
    )  # fmt: skip
    budget = "" if args.iterations == RefineSettings.iterations else f", {args.iterations} steps"
    if args.central_prior == "fixed":
        budget += ", fixed central"
    elif args.central_prior != RefineSettings.central_prior:
        budget += f", {args.central_prior} prior on the central galaxy"
    if args.flux_anchor is not None:
        budget += f", flux anchored to the one pass ({args.flux_anchor:g})"
    if args.flux_from_data is not None:
        budget += f", flux from the data ({args.flux_from_data:g})"
    if args.pixels_from_data is not None:
        budget += f", pixels from the data ({args.pixels_from_data:g})"
    report(f"Refinement: {args.data.stem}{budget}", body, args.record)


if __name__ == "__main__":
    main()
