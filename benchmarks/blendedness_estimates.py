"""Which estimate of a target's blendedness, known at use time, tracks the refined flux error
(issue 15): the posterior calibration draws each galaxy's residuals from calibration galaxies of
similar S/N and estimated blendedness, so the estimate should rank galaxies by how wrong their
refined flux is, and pick out the strongly blended ones (true B_tot > 0.3) whose refined flux
is far too bright.

Refines the first ``--limit`` blends of a simulated set with the model's shipped prior and the
calibration's refinement settings, and compares, for each estimate, its Spearman correlation
with the refined r-band |dF/F| and its AUC for telling true B_tot > 0.3 apart:
``refined`` (:func:`estimated_blendedness` of the refined central against the rest of the
stamp), ``one-pass`` (the same for the deblender's one-pass central), ``max_one_pass`` (the
larger of the two, :func:`blendedness_estimate`), and ``disagreement`` (|ln F_refined /
F_one-pass|).

    python benchmarks/blendedness_estimates.py --data BLENDS.h5 [--model lsst] [--limit 1000]
        [--record]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu, spearmanr

sys.path.insert(0, str(Path(__file__).parent))
from results import report  # noqa: E402

from vaedeblend.argtypes import positive_int  # noqa: E402

STRONG = 0.3  # true B_tot above which the refined flux is far too bright (RESULTS.md)


def auc(feature: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive has a larger ``feature`` than a random negative."""
    u = mannwhitneyu(feature[positive], feature[~positive]).statistic
    return float(u / (positive.sum() * (~positive).sum()))


def estimates(model, refiner, blend: np.ndarray, channel: int) -> tuple[np.ndarray, dict]:
    """(refined centrals (N, C, H, W), {name: (N,) estimate})."""
    from vaedeblend.refinement.decoder_error import blendedness_estimate, estimated_blendedness

    central = refiner.refine(blend).central
    one_pass = model.deblend(blend, bands=model.band_ids)
    c = channel
    flux_refined = central[:, c].sum((1, 2))
    flux_one_pass = one_pass[:, c].sum((1, 2))
    floor = 1.0  # electrons: a centre refined or deblended to nothing still gets a finite ratio
    return central, {
        "refined": estimated_blendedness(central[:, c], blend[:, c]),
        "one-pass": estimated_blendedness(one_pass[:, c], blend[:, c]),
        "max_one_pass": blendedness_estimate(
            "max_one_pass", central[:, c], blend[:, c], one_pass[:, c]
        ),  # fmt: skip
        "disagreement": np.abs(
            np.log(np.clip(flux_refined, floor, None) / np.clip(flux_one_pass, floor, None))
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="simulated blends")
    parser.add_argument("--model", default="lsst")
    parser.add_argument("--limit", type=positive_int, default=1000)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    from vaedeblend import load_pretrained
    from vaedeblend.dataset import open_dataset
    from vaedeblend.measure import blendedness
    from vaedeblend.refinement import RefineSettings, refined
    from vaedeblend.refinement.decoder_error import r_channel
    from vaedeblend.refinement.fit import default_prior_dir
    from vaedeblend.refinement.prior import load_prior

    model = load_pretrained(args.model)
    prior = load_prior(default_prior_dir(model), model.decoder_fingerprint())
    refiner = refined(model, settings=RefineSettings(**prior.config["refined_error"]["refined"]))
    c = r_channel(model.band_ids)
    with open_dataset(args.data) as ds:
        n = min(args.limit, len(ds))
        blend, target, others = (ds.read(k)[:n] for k in ("blend", "target", "others"))
    central, found = estimates(model, refiner, blend, c)
    true_flux = target[:, c].sum((1, 2))
    error = np.abs(central[:, c].sum((1, 2)) / true_flux - 1)
    strong = blendedness(target[:, c], others[:, c]) > STRONG
    lines = [
        f"{n} blends of {args.data.name}, model `{args.model}` refined with its calibration's "
        f"settings; {int(strong.sum())} with true B_tot > {STRONG} (median refined r |dF/F| "
        f"{np.median(error[strong]):.2f}, others {np.median(error[~strong]):.3f}).",
        "",
        "| estimate | Spearman with refined r \\|dF/F\\| | AUC for B_tot > 0.3 |",
        "|---|---|---|",
    ]
    for name, value in found.items():
        rho = spearmanr(value, error).correlation
        lines.append(f"| {name} | {rho:+.3f} | {auc(value, strong):.3f} |")
    report("Blendedness estimates for the posterior calibration", "\n".join(lines), args.record)


if __name__ == "__main__":
    main()
