"""How a posterior calibration should match a galaxy to its residuals (issue 15), measured on
the calibration itself, with no refinement to run.

A calibration (``vaedeblend prior --calibrate-on``) keeps, for each simulated blend, the refined
central galaxy's residuals against the truth, its S/N and its estimated blendedness. Split it in
two halves at random: calibrate on one, and count how often the other half's true residuals
fall inside the 68 % intervals drawn for them (:meth:`DecoderError.draw`), overall, in the top
12 % of estimated blendedness (the share of targets with B_tot > 0.3 on detected LSST blends)
and at S/N 20-50. Matching schemes: S/N bins only, S/N bins with blendedness quarters, and the
nearest neighbours in (S/N rank, weight x blendedness rank). Repeated over random splits.

    python benchmarks/calibration_matching.py [--prior DIR] [--splits 20] [--record]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import report  # noqa: E402

from vaedeblend.pretrained import pretrained_dir  # noqa: E402
from vaedeblend.refinement.prior import load_prior  # noqa: E402

TOP_SHARE = 0.12  # the 12 % most blended by the estimate
LEVELS = 64  # draws per galaxy, as the posteriors use


def schemes(n_half: int) -> dict[str, dict]:
    """The matching settings compared (DecoderError fields), for a calibration of ``n_half``."""
    share = max(50, round(0.05 * n_half))
    return {
        "S/N bins (5)": {"n_blend_bins": 1, "n_neighbours": 0},
        "S/N bins x blendedness quarters": {"n_blend_bins": 4, "n_neighbours": 0},
        "S/N bins (3) x blendedness eighths": {"n_bins": 3, "n_blend_bins": 8, "n_neighbours": 0},
        f"{share} neighbours, blendedness weight 1": {"n_neighbours": share, "blend_weight": 1.0},
        f"{share} neighbours, blendedness weight 4": {"n_neighbours": share, "blend_weight": 4.0},
        f"{2 * share} neighbours, blendedness weight 4": {
            "n_neighbours": 2 * share,
            "blend_weight": 4.0,
        },
    }


def inside_68(error, residual_flux, residual_g, snr, blendedness, channel):
    """Per galaxy: (flux residual in its 68 % interval, share of g1, g2 in theirs)."""
    flux, g = error.draw(snr, LEVELS, np.random.default_rng(0), blendedness)
    lo, hi = np.quantile(flux[:, :, channel], [0.16, 0.84], axis=1)
    g_lo, g_hi = np.quantile(g, [0.16, 0.84], axis=1)
    in_flux = (residual_flux[:, channel] >= lo) & (residual_flux[:, channel] <= hi)
    in_g = ((residual_g >= g_lo) & (residual_g <= g_hi)).mean(axis=1)
    return in_flux, in_g


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", type=Path, default=None, help="default: lsst's shipped prior")
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    if args.splits < 1:
        parser.error("--splits must be at least 1")
    prior_dir = args.prior or pretrained_dir("lsst", "prior")
    full = load_prior(prior_dir).refined_error
    if full is None or full.blendedness is None:
        parser.error(f"{prior_dir}: no calibration with an estimated blendedness")
    n, c = len(full.snr), full.shape_channel
    rng = np.random.default_rng(args.seed)
    top = full.blendedness >= np.quantile(full.blendedness, 1 - TOP_SHARE)
    mid = (full.snr > 20) & (full.snr < 50)
    rows = []
    for label, fields in schemes(n // 2).items():
        flux_in, g_in, where = [], [], []
        for _ in range(args.splits):
            perm = rng.permutation(n)
            a, b = perm[: n // 2], perm[n // 2 :]
            half = replace(
                full, snr=full.snr[a], flux_rel=full.flux_rel[a], g=full.g[a],
                blendedness=full.blendedness[a], **fields,
            )  # fmt: skip
            f, g = inside_68(half, full.flux_rel[b], full.g[b], full.snr[b],
                             full.blendedness[b], c)  # fmt: skip
            flux_in.append(f), g_in.append(g), where.append(b)
        f, g, idx = map(np.concatenate, (flux_in, g_in, where))
        cells = [f"{100 * f[s].mean():.0f} % / {100 * g[s].mean():.0f} %"
                 for s in (slice(None), top[idx], mid[idx])]  # fmt: skip
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    body = "\n".join([
        f"Calibration `{prior_dir}` ({n} refined blends), split {args.splits} times at random "
        f"into halves (seed {args.seed}): calibrated on one half, the other half's true "
        "residuals (refined - truth) counted inside their 68 % intervals (target 68 %), r-band "
        f"flux / adaptive-moment g1, g2; {LEVELS} quantile draws per galaxy. Top 12 %: the "
        "most blended by the estimate (the share of B_tot > 0.3 on detected LSST blends).",
        "",
        "| matching | all: flux / g | top 12 % blendedness | S/N 20-50 |",
        "|---|---|---|---|",
        *rows,
    ])  # fmt: skip
    report("Posterior calibration matching", body, args.record)


if __name__ == "__main__":
    main()
