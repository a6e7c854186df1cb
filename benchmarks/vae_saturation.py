"""Do bright cores cost the sigmoid head its shapes? The KSB ellipticity bias m of VAEs on
isolated galaxies, split by how close each galaxy's brightest pixel comes to the sigmoid's
ceiling (issue 12).

The sigmoid head's output space is y = tanh(asinh(2.5 x / I_b)) (paper_setup.md): y -> 1 as
the pixel x grows, and near 1 an error of 0.001 in y is several % of the pixel's electrons, so
a network trained with BCE in y flattens bright cores. Each galaxy is classed by its noiseless
target's peak y under the *first* model's I_b (the same galaxies in each class for every
model), and m is fitted per class on the galaxies at S/N >= 50 (where noise no longer rounds
the shapes). The models are evaluated by ``vaedeblend evaluate``'s code path
(``accuracy_vs_training.evaluate``).

    python benchmarks/vae_saturation.py --data ISO_TEST.h5 MODEL [MODEL ...] [--record]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from accuracy_vs_training import evaluate, model_label  # noqa: E402
from results import report  # noqa: E402

PEAK_CLASSES = ((0.0, 0.9), (0.9, 0.99), (0.99, 1.0))  # peak y of the target, first model's I_b
MIN_SNR = 50.0


def peak_y(targets: np.ndarray, norm_electrons: np.ndarray) -> np.ndarray:
    """(N,) the largest y = tanh(asinh(2.5 x / I_b)) over the pixels and bands of each
    noiseless target (N, C, H, W electrons)."""
    u = 2.5 * targets / np.asarray(norm_electrons, dtype=float)[None, :, None, None]
    return np.tanh(np.arcsinh(u)).max(axis=(1, 2, 3))


def main() -> None:
    from vaedeblend.dataset import open_dataset
    from vaedeblend.evaluation.bias import ellipticity_bias
    from vaedeblend.pretrained import resolve_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("vae_saturation"))
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    first = resolve_model(args.models[0])
    with open_dataset(args.data) as ds:
        targets = ds.read("target")
        order = [ds.band_ids.index(b) for b in first.band_ids]
    peaks = peak_y(targets[:, order], first.config["norm_constants_electrons"])
    rows = []
    for model in args.models:
        out = args.out / model_label(model).replace("/", "_")
        evaluate(model, args.data, out)
        per = np.load(out / "per_galaxy.npz")
        bright = per["snr"] >= MIN_SNR
        g_true, g_out = per["ksb.lsst_r.g_target"], per["ksb.lsst_r.g_output"]
        cells = []
        for lo, hi in PEAK_CLASSES:
            pick = bright & (peaks >= lo) & (peaks < hi if hi < 1 else peaks <= hi)
            fit = ellipticity_bias(g_true[pick], g_out[pick])
            cells.append(f"{fit.m:+.3f} ± {fit.m_err:.3f} ({int(pick.sum())})")
        ratio = np.asarray(resolve_model(model).config["norm_constants_electrons"]) / np.asarray(
            first.config["norm_constants_electrons"]
        )
        rows.append(
            f"| `{model_label(model)}` | {np.median(ratio):.2f} | " + " | ".join(cells) + " |"
        )
    classes = " | ".join(f"m, peak y {lo}-{hi} (galaxies)" for lo, hi in PEAK_CLASSES)
    share = ", ".join(f"{100 * np.mean(peaks > t):.1f} % above {t}" for t in (0.9, 0.99))
    body = "\n".join([
        f"Test set `{args.data.name}` ({len(peaks)} isolated galaxies). Peak y: the noiseless "
        f"target's brightest pixel over all bands in the first model's output space "
        f"(y = tanh(asinh(2.5 x / I_b))): {share}. m: KSB ellipticity bias (r band) of the "
        f"galaxies at S/N >= {MIN_SNR:.0f} in each class; I_b ratio: each model's constants "
        f"over the first model's (median over bands). {args.note}",
        "",
        f"| model | I_b ratio | {classes} |",
        "|---|---|" + "---|" * len(PEAK_CLASSES),
        *rows,
    ])  # fmt: skip
    report("Bright cores and the sigmoid head: lsst VAE", body, args.record)


if __name__ == "__main__":
    main()
