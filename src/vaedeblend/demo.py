"""``vaedeblend demo``: the whole method on fresh blends, in minutes on a laptop CPU.

1. simulate a test set per instrument choice (LSST; LSST + Euclid) with a seed never used in
   training, ``detected`` centring as the shipped models were trained;
2. deblend it with the shipped models (``load_pretrained``) and, for reference, measure the
   blend itself (no deblending); for LSST also the shipped model refined as stamp mode does
   best (``REFINED_IN_DEMO``: every detected neighbour fitted, the central galaxy's flux and
   bright pixels from the data; docs/refinement.md);
3. evaluate each with ``vaedeblend evaluate``'s code path and print one table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaedeblend.pretrained import PRETRAINED, is_shipped

DEMO_INSTRUMENTS = ("lsst", "lsst+euclid")
# the instruments whose refined row the demo adds (about 0.3 s per blend on one thread); the
# refinement is the one --refine runs by default (STAMP_REFINEMENT, docs/refinement.md)
REFINED_IN_DEMO = ("lsst",)


def simulate_test_set(instruments: str, seed: int, n: int, out: Path) -> Path:
    from vaedeblend.instruments import make_setup
    from vaedeblend.simulation import CatalogSpec, SimSpec, simulate_dataset
    from vaedeblend.simulation.blends import BlendConfig

    setup = make_setup("paper", instruments)
    spec = SimSpec(
        setup.to_json(),
        CatalogSpec(seed=seed, size=20_000),
        BlendConfig(kind="blended", centring="detected"),
        n,
        seed,
    )
    path = out / f"test_{instruments.replace('+', '_')}.h5"
    if _holds(path, spec.fingerprint):
        return path  # a rerun of the demo with the same seed and size: same bytes, reused
    # the demo folder is the demo's own: a test set of other arguments there is replaced
    return simulate_dataset(spec, path, shard_size=max(1, n // 4), workers=0, overwrite=True)


def _holds(path: Path, fingerprint: str) -> bool:
    """Whether ``path`` is a complete dataset of this fingerprint."""
    from vaedeblend.dataset import DatasetError, open_dataset

    if not path.exists():
        return False
    try:
        with open_dataset(path) as ds:
            return ds.meta.get("fingerprint") == fingerprint
    except DatasetError:
        return False


def run_demo(seed: int, n: int, out: Path) -> int:
    from vaedeblend.dataset import open_dataset
    from vaedeblend.evaluation import compare_runs, evaluate_dataset
    from vaedeblend.evaluation.runner import headline_table, run_model

    out.mkdir(parents=True, exist_ok=True)
    print(
        f"vaedeblend demo: test seed {seed} (never used in training), {n} blends per "
        f"instrument choice; output in {out}/"
    )
    runs = []
    for instruments in DEMO_INSTRUMENTS:
        path = simulate_test_set(instruments, seed, n, out)
        with open_dataset(path) as data:
            if instruments == "lsst+euclid":
                plot_blends(data, out / "blends.png", n_show=min(n, 6))
            for model, refine in _demo_rows(instruments):
                label = f"{instruments}: " + ("deblended" if model != "none" else "no deblending")
                label += ", refined" if refine else ""
                if model in PRETRAINED and not is_shipped(model):
                    print(
                        f"  (pretrained model {model!r} is not shipped in this installation: "
                        "skipped)"
                    )
                    continue
                name = label.replace(": ", "_").replace(", ", "_").replace(" ", "_")
                run_dir = out / "reports" / name
                output = run_model(model, data, None, 256, "cpu", refine=refine,
                                   settings=_demo_refinement() if refine else None)  # fmt: skip
                runs.append(evaluate_dataset(data, output, run_dir, label=label))
                runs[-1]["_dir"] = run_dir
    compare_runs([r.pop("_dir") for r in runs], out / "comparison")
    print()
    print(headline_table(runs))
    print(
        f"\nreports: {out / 'reports'}/*/summary.md; side by side: {out / 'comparison'}; "
        f"blends: {out / 'blends.png'}"
    )
    return 0


def _demo_rows(instruments: str) -> list[tuple[str, bool]]:
    """(model, refined) of each row of one instrument choice: the shipped model, refined too
    where the demo shows it, and no deblending."""
    rows = [(instruments, False)]
    if instruments in REFINED_IN_DEMO:
        rows.append((instruments, True))
    return rows + [("none", False)]


def _demo_refinement():
    from vaedeblend.refinement import STAMP_REFINEMENT, RefineSettings

    return RefineSettings(**STAMP_REFINEMENT)


def plot_blends(data, path: Path, n_show: int = 6) -> Path:
    """A grid of blends: LSST r, Euclid VIS, and the noiseless central galaxy (LSST r)."""
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
                np.arcsinh(images[row, ch] / (3 * np.sqrt(sky[ch]))), origin="lower", cmap="gray_r"
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
