"""``vaedeblend demo``: the whole method on a few fresh blends, in minutes on a laptop CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def run_demo(seed: int, n: int, out: Path) -> int:
    from vaedeblend.blends import BlendConfig
    from vaedeblend.dataset import open_dataset
    from vaedeblend.instruments import make_setup
    from vaedeblend.simulation import CatalogSpec, SimSpec, simulate_dataset

    out.mkdir(parents=True, exist_ok=True)
    print(f"vaedeblend demo: test seed {seed} (never used in training); output in {out}/")
    setup = make_setup("paper", "lsst+euclid")
    spec = SimSpec(
        setup.to_json(),
        CatalogSpec(seed=seed, size=20_000),
        BlendConfig(kind="blended", centring="centred"),
        n,
        seed,
    )
    path = simulate_dataset(spec, out / "blends.h5", shard_size=max(1, n // 2), workers=0)
    with open_dataset(path) as data:
        figure = plot_blends(data, out / "blends.png", n_show=min(n, 6))
    print(f"wrote {path} and {figure}")
    return 0


def asinh_stretch(image: np.ndarray, scale: float) -> np.ndarray:
    return np.arcsinh(image / scale)


def plot_blends(data, path: Path, n_show: int = 6) -> Path:
    """A grid of blends: LSST gri colour, VIS, and the noiseless central galaxy (r band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bands = data.band_ids
    blend, target = data.read("blend", slice(0, n_show)), data.read("target", slice(0, n_show))
    sky = data.sky_levels_electrons
    columns = [("LSST r", "lsst_r", blend), ("target LSST r", "lsst_r", target)]
    if "euclid_vis" in bands:
        columns.insert(1, ("Euclid VIS", "euclid_vis", blend))
    fig, axes = plt.subplots(
        n_show, len(columns), figsize=(2.2 * len(columns), 2.2 * n_show), squeeze=False
    )
    for row in range(n_show):
        for col, (title, band, images) in enumerate(columns):
            ch = bands.index(band)
            ax = axes[row, col]
            ax.imshow(
                asinh_stretch(images[row, ch], 3 * np.sqrt(sky[ch])), origin="lower", cmap="gray_r"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
    return path
