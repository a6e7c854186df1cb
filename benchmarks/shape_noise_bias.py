"""Shape bias m against the bias of abs(e): how much of a deblender's abs(e) bias its scatter explains.

The accuracy issue asks for both a small m (the slope of output against true ellipticity)
and a small median d abs(e) = abs(g_out) - abs(g_true). An estimator whose g scatters by
sigma per component about (1 + m) g_true has, at m = 0, a positive median d abs(e) of about
sigma^2 / (2 abs(g)) (the modulus of a noisy vector is biased up); it is 0 only for a shrunk
estimator (m < 0). This benchmark measures, per S/N bin of a test set, from ``evaluate``'s
per-galaxy KSB shapes (reference band, noiseless output against noiseless target):

- m (the regression ``evaluate`` reports) and sigma, the robust scatter (1.4826 x the median
  absolute deviation, both components pooled) of g_out about (1 + m) g_true + c;
- the measured median d abs(e), and that of the scatter model at the measured m (a check
  that the model explains it), at m = 0, and the m at which the model's median d abs(e) is 0.

The model: each galaxy's g_true, scaled by (1 + m), plus ``--draws`` Gaussian draws of sigma
per component (seeded). A bin whose "m for 0" is well below 0 cannot have both targets at its
scatter: only a smaller sigma (a better network) buys both.

    python benchmarks/shape_noise_bias.py --model lsst-centred --data cen_val.h5 \\
        [--limit N] [--record] [--note TEXT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from deblending_helps import evaluated  # noqa: E402
from results import add_test_set_arguments, check_at_least_one, report, table_body  # noqa: E402

from vaedeblend.evaluation.bias import linear_fit  # noqa: E402
from vaedeblend.evaluation.binned import SNR_EDGES  # noqa: E402

MAD_TO_SIGMA = 1.4826  # a Gaussian's sigma over its median absolute deviation
MIN_GALAXIES = 30  # fewer in a bin: its m's standard error exceeds ~0.05, the bin is skipped
M_RANGE = (-0.9, 0.5)  # where the m of zero median d abs(e) is looked for


def model_median_dabs(g_true: np.ndarray, sigma: float, m: float, noise: np.ndarray) -> float:
    """Median over galaxies and draws of abs((1 + m) g_true + sigma n) - abs(g_true), for
    ``g_true`` (N, 2) and unit Gaussian draws ``noise`` (K, N, 2)."""
    g = (1 + m) * g_true[None] + sigma * noise
    return float(np.median(np.hypot(g[..., 0], g[..., 1]) - np.hypot(*g_true.T)[None]))


def m_for_zero_dabs(g_true: np.ndarray, sigma: float, noise: np.ndarray) -> float:
    """The m at which :func:`model_median_dabs` is 0 (it increases with m), by bisection
    within :data:`M_RANGE`; the nearer end where it has no root there."""
    lo, hi = M_RANGE
    if model_median_dabs(g_true, sigma, lo, noise) >= 0:
        return lo
    if model_median_dabs(g_true, sigma, hi, noise) <= 0:
        return hi
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if model_median_dabs(g_true, sigma, mid, noise) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def bin_row(g_true: np.ndarray, g_out: np.ndarray, draws: int, seed: int) -> dict:
    """The measured and modelled statistics of one bin's (N, 2) shapes."""
    fits = [linear_fit(g_true[:, k], g_out[:, k]) for k in range(2)]
    m = float(np.mean([f.m for f in fits]))
    c = np.array([f.c for f in fits])
    residual = (g_out - (1 + m) * g_true - c).ravel()
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(residual - np.median(residual))))
    noise = np.random.default_rng(seed).standard_normal((draws, *g_true.shape))
    measured = float(np.median(np.hypot(*g_out.T) - np.hypot(*g_true.T)))
    return {
        "n": len(g_true),
        "m": m,
        "sigma": sigma,
        "measured": measured,
        "model_at_m": model_median_dabs(g_true, sigma, m, noise),
        "model_at_0": model_median_dabs(g_true, sigma, 0.0, noise),
        "m_for_0": m_for_zero_dabs(g_true, sigma, noise),
    }


def rows_by_snr(per: dict, band: str, draws: int, seed: int) -> list[tuple[str, dict]]:
    """(label, :func:`bin_row`) per S/N bin holding at least :data:`MIN_GALAXIES` galaxies
    whose KSB shapes were measured (abs(g) <= 1) in both output and target."""
    g_true, g_out = per[f"ksb.{band}.g_target"], per[f"ksb.{band}.g_output"]
    usable = np.isfinite(g_true).all(1) & np.isfinite(g_out).all(1)
    usable &= (np.hypot(*g_true.T) <= 1) & (np.hypot(*g_out.T) <= 1)
    rows = []
    for lo, hi in zip(SNR_EDGES[:-1], SNR_EDGES[1:], strict=True):
        inside = usable & (per["snr"] >= lo) & (per["snr"] < hi)
        if inside.sum() >= MIN_GALAXIES:
            label = f"{lo:g}-{hi:g}" if hi < 1e5 else f"> {lo:g}"
            rows.append((label, bin_row(g_true[inside], g_out[inside], draws, seed)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_test_set_arguments(parser, "test set (vaedeblend simulate)")
    parser.add_argument("--draws", type=int, default=20, help="scatter draws per galaxy")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scatter draws")
    args = parser.parse_args()
    check_at_least_one(parser, limit=args.limit, draws=args.draws)
    with tempfile.TemporaryDirectory() as tmp:
        per, band = evaluated(args.model, args.data, args.limit, Path(tmp))
    rows = rows_by_snr(per, band, args.draws, args.seed)
    if not rows:
        sys.exit(f"error: no S/N bin of {args.data} holds {MIN_GALAXIES} measured galaxies")
    table = [
        f"| {label} | {r['n']} | {r['m']:+.3f} | {r['sigma']:.3f} | {r['measured']:+.4f} | "
        f"{r['model_at_m']:+.4f} | {r['model_at_0']:+.4f} | {r['m_for_0']:+.3f} |"
        for label, r in rows
    ]
    n = np.array([r["n"] for _, r in rows])
    pooled = float(np.sum(n * [r["m_for_0"] for _, r in rows]) / n.sum())
    intro = (
        f"Test set `{args.data.name}` ({len(per['snr'])} targets), model `{args.model}`; "
        f"KSB in {band}, noiseless output against noiseless target. sigma: robust scatter "
        "per component of g_out about (1 + m) g_true + c. Model columns: the bin's true "
        f"shapes scaled by (1 + m) plus {args.draws} Gaussian draws of sigma per galaxy "
        f"(seed {args.seed}). Galaxy-weighted mean over the bins of the m that zeroes the "
        f"median d abs(e): {pooled:+.3f}. {args.note}"
    )
    columns = ["S/N", "N", "m", "sigma", "median d abs(e)", "model at m", "model at m = 0",
               "m for median d abs(e) = 0"]  # fmt: skip
    body = table_body(intro, columns, table)
    label = "/".join(Path(args.model).parts[-2:])
    report(f"Shape bias against abs(e) bias: {args.data.stem}, {label}", body, args.record)


if __name__ == "__main__":
    main()
