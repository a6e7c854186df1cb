"""A real Hyper Suprime-Cam g,r,i,z,y scene deblended by field mode with the shipped HSC model:
how much of the image's structure is left in the residual.

The scene (``../shared/data/hsc_real/hsc_cosmos_scene.npz``, scarlet's ``hsc_cosmos``) is a coadd
in zero-point-27 units, given to field mode as such (``image_zeropoint_mag=27``): it converts it to
electrons at the HSC wide depth the model was trained for (``--preset survey --instruments hsc``):
per band, electrons per unit = the electrons an AB 27 source gives over the survey exposure. Its noise (sep's global
background rms, 131-299 electrons) is within a factor 1.6 of the training sets' sqrt(sky)
(130-450 electrons). The noise sigma of each band, measured on the input, is used for the input
and for the residual alike; ``vaedeblend.fieldmode.quality`` defines the three numbers.

    python benchmarks/bench_hsc_scene.py [--model hsc] [--figure PATH] [--record]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import report  # noqa: E402

SCENE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "hsc_real" / "hsc_cosmos_scene.npz"
)
BANDS = ["hsc_g", "hsc_r", "hsc_i", "hsc_z", "hsc_y"]
IMAGE_ZEROPOINT_MAG = 27.0  # AB magnitude of one unit of the coadd
PIXEL_SCALE_ARCSEC = 0.168


def load_scene(path: Path = SCENE):
    """(images (5, H, W) coadd units, PSFs (5, P, P), scarlet's sep catalog)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (the shared data of this project)")
    data = np.load(path, allow_pickle=False)
    return data["images"].astype(np.float64), data["psfs"], data["catalog"]


def electrons_per_unit() -> list[float]:
    """Gain per band: electrons of one coadd unit at HSC wide depth (what field mode uses)."""
    from vaedeblend.instruments import band_at_depth

    return [band_at_depth(b, "survey").mag_to_electrons(IMAGE_ZEROPOINT_MAG) for b in BANDS]


def run(model="hsc", path: Path = SCENE):
    """Deblend the scene; returns (FieldResult, {band: (input Structure, residual Structure)})."""
    import sep

    from vaedeblend.fieldmode import apply_image_zeropoint, deblend_field, from_arrays
    from vaedeblend.fieldmode.quality import image_structure

    images, psfs, _ = load_scene(path)
    gains = electrons_per_unit()
    field = from_arrays(
        list(images), BANDS, psf=list(psfs), gain=1.0, pixel_scale_arcsec=PIXEL_SCALE_ARCSEC
    )
    apply_image_zeropoint(field, IMAGE_ZEROPOINT_MAG)  # HSC coadd units -> electrons
    result = deblend_field(field, model)
    structure = {}
    for band, image, gain in zip(BANDS, images, gains, strict=True):
        electrons = image * gain
        sigma = sep.Background(np.ascontiguousarray(electrons)).globalrms
        structure[band] = (
            image_structure(electrons, sigma),
            image_structure(result.residual[band], sigma),
        )
    return result, structure


def pedestal_share(stamps: np.ndarray) -> np.ndarray:
    """Per band (C,): the share of the model stamps' summed flux that is a flat pedestal, the
    median of each stamp's border pixels times its area (a model should fall to 0 there)."""
    border = np.concatenate(
        [stamps[..., 0, :], stamps[..., -1, :], stamps[..., :, 0], stamps[..., :, -1]], axis=-1
    )
    area = stamps.shape[-1] * stamps.shape[-2]
    return (np.median(border, axis=-1) * area).sum(axis=0) / stamps.sum(axis=(0, 2, 3))


def figure(result, path: Path, band: str = "hsc_i") -> None:
    """Input, sum of the models and residual of one band, on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = result.models[band]
    residual = result.residual[band]
    image = model + np.nan_to_num(residual)
    vmax = np.nanpercentile(image, 99.5)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    panels = [("input", image), ("models", model), ("residual", residual)]
    for ax, (title, img) in zip(axes, panels, strict=True):
        ax.imshow(np.arcsinh(img / (0.05 * vmax)), origin="lower", cmap="gray_r", vmin=-2)
        ax.set_title(f"{band} {title}")
        ax.set_xticks([])
        ax.set_yticks([])
    cat = result.catalog
    axes[0].plot(cat["x"], cat["y"], "r+", ms=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="hsc", help="shipped name or model directory")
    parser.add_argument("--figure", type=Path, default=None, help="PNG of input, models, residual")
    parser.add_argument("--record", action="store_true", help="write to benchmarks/RESULTS.md")
    args = parser.parse_args()
    result, structure = run(args.model)
    if args.figure:
        figure(result, args.figure)
    rows = [
        f"| {band} | {a.excess_chi2_per_pixel:.2f} | {b.excess_chi2_per_pixel:.2f} | "
        f"{b.excess_chi2_per_pixel / a.excess_chi2_per_pixel:.3f} | {a.n_sources} | "
        f"{b.n_sources} | {a.frac_above_3sigma:.3f} | {b.frac_above_3sigma:.3f} |"
        for band, (a, b) in structure.items()
    ]
    body = "\n".join(
        [
            f"Real HSC scene (5 x {result.residual['hsc_r'].shape[0]} x "
            f"{result.residual['hsc_r'].shape[1]} pixels, scarlet's hsc_cosmos) deblended by "
            f"`deblend_field` with model `{args.model}`: {len(result.catalog)} galaxies in the "
            f"catalog (iterations {sorted(set(int(i) for i in result.catalog['iteration']))}). "
            "Structure of the input and of the residual against the input's noise sigma "
            "(sep global rms); pure noise gives excess chi^2 0, no source and 0.00135 above "
            "3 sigma. Ratio: residual / input excess chi^2 (below 1: the models took that "
            "share of the structure out).",
            "",
            "| band | excess chi^2/pixel input | residual | ratio | sep sources (5 sigma) input "
            "| residual | frac > 3 sigma input | residual |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Share of the model stamps' summed flux that is a flat pedestal (median border "
            "pixel x stamp area; an under-trained decoder does not fall to 0 at the stamp edge), "
            "per band: "
            + ", ".join(
                f"{b} {p:.2f}"
                for b, p in zip(result.band_ids, pedestal_share(result.stamps), strict=True)
            )
            + ".",
        ]
    )
    report("HSC scene", body, args.record)


if __name__ == "__main__":
    main()
