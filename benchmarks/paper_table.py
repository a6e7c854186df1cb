"""The results table of Arcelin et al. (2021), reproduced with our simulations and models.

Rows as in ``paper_setup.md``: LSST centred, LSST + Euclid centred, LSST with +/-0.1" offsets,
LSST with detected peaks. Each row gets a fresh test set (``vaedeblend simulate``, seeds 9001-9004,
never used in training) of ``--n`` blends, is deblended by the model given for it and evaluated
by ``vaedeblend evaluate``'s code path; the paper's statistics (m from the KSB regression, the
binned |median| of the signed ellipticity and magnitude errors) are written next to the paper's.
Each row uses the deblender trained for its centring (the paper trained one per centring): by
default the shipped ``lsst-centred``, ``lsst+euclid-centred`` and ``lsst-uniform``; where one is
not installed, the row uses the ``detected`` one of its instruments and says so.

    python benchmarks/paper_table.py [--n 10000] [--workers 2] [--model-lsst DIR]
        [--model-lsst-euclid DIR] [--model-lsst-centred DIR] [--model-lsst-uniform DIR] [--model-lsst-euclid-centred DIR]

The per-centring deblenders are trained by ``bash benchmarks/train_centrings.sh MINUTES`` (into
``~/.cache/vaedeblend/runs/deblender_<name>``) and shipped by ``benchmarks/ship_pretrained.py
--centrings``; ``--centring-runs DIR`` takes all three from run directories instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import write_section  # noqa: E402

from vaedeblend.argtypes import positive_int  # noqa: E402

PAPER = {  # m, binned |median d|e||, binned |median dmag| (paper_setup.md)
    ("lsst", "centred"): (-0.056, 0.0035, 0.024),
    ("lsst+euclid", "centred"): (-0.016, None, None),
    ("lsst", "uniform"): (-0.081, 0.0125, 0.057),
    ("lsst", "detected"): (-0.084, 0.0231, 0.069),
}
SEEDS = {
    ("lsst", "centred"): 9001,
    ("lsst+euclid", "centred"): 9002,
    ("lsst", "uniform"): 9003,
    ("lsst", "detected"): 9004,
}


def simulate(instruments: str, centring: str, n: int, out: Path) -> Path:
    from vaedeblend.cli import main

    path = out / f"test_{instruments.replace('+', '_')}_{centring}.h5"
    if not path.exists():
        main(
            [
                "simulate",
                "--preset",
                "paper",
                "--instruments",
                instruments,
                "--kind",
                "blended",
                "--centring",
                centring,
                "--keep-undetected",
                "--n",
                str(n),
                "--seed",
                str(SEEDS[(instruments, centring)]),
                "--out",
                str(path),
                "--quiet",
            ]
        )
    return path


def evaluate_row(job: tuple) -> dict:
    """:func:`evaluate` of one row (model, data, out, label, workers), in a worker process
    (one torch thread each when rows run side by side)."""
    model, data, out, label, workers = job
    if workers > 1:
        import torch

        torch.set_num_threads(1)
    return evaluate(model, data, out, label)


def evaluate(model: str, data: Path, out: Path, label: str) -> dict:
    from vaedeblend.dataset import open_dataset
    from vaedeblend.evaluation import EvalConfig, evaluate_dataset
    from vaedeblend.evaluation.runner import run_model

    with open_dataset(data) as ds:
        output = run_model(model, ds, None, 256, "cpu")
        metrics = evaluate_dataset(ds, output, out, label=label, config=EvalConfig(figures=False))
        metrics["n_no_peak"] = ds.meta["n_no_peak"]
        metrics["n_undetected_kept"] = int((~ds.read("detected")).sum())
    return metrics


def row_models(args) -> dict:
    """Row -> (model, centring it was trained on). A row without its own deblender falls back
    to the detected-centring one of its instruments (the shipped models)."""

    def own_or_detected(own, detected):
        return (own, None) if own else (detected, "detected")

    rows = {
        ("lsst", "centred"): own_or_detected(args.model_lsst_centred, args.model_lsst),
        ("lsst+euclid", "centred"): own_or_detected(
            args.model_lsst_euclid_centred, args.model_lsst_euclid
        ),
        ("lsst", "uniform"): own_or_detected(args.model_lsst_uniform, args.model_lsst),
        ("lsst", "detected"): (args.model_lsst, "detected"),
    }
    return {key: (model, trained or key[1]) for key, (model, trained) in rows.items()}


def _short(model: str) -> str:
    """A model's name for the table: a shipped name as is, a run directory by its last part."""
    return Path(model).name if "/" in model else model


def fmt(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def shipped_or_none(name: str) -> str | None:
    """``name`` where that per-centring deblender is installed, else None (the row falls back)."""
    from vaedeblend.pretrained import is_shipped

    return name if is_shipped(name) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=positive_int, default=10_000)
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="rows evaluated side by side (processes)"
    )
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache/vaedeblend/paper_table")
    parser.add_argument("--note", default="", help="text recorded under the table")
    parser.add_argument("--model-lsst", default="lsst", help="detected-centring LSST model")
    parser.add_argument("--model-lsst-euclid", default="lsst+euclid")
    parser.add_argument("--model-lsst-centred", default=shipped_or_none("lsst-centred"))
    parser.add_argument("--model-lsst-uniform", default=shipped_or_none("lsst-uniform"))
    parser.add_argument(
        "--model-lsst-euclid-centred", default=shipped_or_none("lsst+euclid-centred")
    )
    parser.add_argument(
        "--centring-runs",
        type=Path,
        default=None,
        help="directory holding deblender_lsst_centred, deblender_lsst_uniform and "
        "deblender_lsst_euclid_centred (benchmarks/train_centrings.sh); overrides the three above",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.centring_runs is not None:
        for name in ("lsst_centred", "lsst_uniform", "lsst_euclid_centred"):
            setattr(args, f"model_{name}", str(args.centring_runs / f"deblender_{name}"))
    models = row_models(args)
    jobs = []
    for instruments, centring in PAPER:
        data = simulate(instruments, centring, args.n, args.out)
        label = f"{instruments} {centring}"
        out = args.out / label.replace(" ", "_").replace("+", "_")
        jobs.append((models[(instruments, centring)][0], data, out, label, args.workers))
    # the rows are independent: --workers processes evaluate them side by side
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(evaluate_row, jobs))
    rows = []
    for ((instruments, centring), paper), m in zip(PAPER.items(), results, strict=True):
        trained_on = models[(instruments, centring)][1]
        h = m["headline"]
        rows.append(
            f"| {instruments}, {centring} | {trained_on} | {m['n']} | "
            f"{fmt(h.get('m'))} ± {fmt(h.get('m_err'))} | {fmt(paper[0], 3)} | "
            f"{fmt(h.get('binned_abs_median_delta_abs_e'))} | {fmt(paper[1])} | "
            f"{fmt(h.get('binned_abs_median_delta_mag'))} | {fmt(paper[2], 3)} | "
            f"{fmt(max(abs(h.get('c1', 0)), abs(h.get('c2', 0))), 4)} | "
            f"{h.get('ksb_failed_output', '-')} | {m['n_no_peak']} |"
        )
        print(rows[-1], flush=True)
    body = "\n".join(
        [
            f"Test sets: {args.n} blends per row, `paper` preset, synthetic catalogue (F814W < 25.2), "
            "seeds 9001-9004; galaxies from our synthetic catalogue, not COSMOS 25.2 as in the paper, "
            "so the comparison is of method on similar, not identical, galaxies. Fluxes: AB "
            "magnitudes through the bandpasses with zero point and exposure (paper_setup.md). "
            "`detected` rows keep undetected samples (flagged) and the count of draws with no peak "
            "is given. m: KSB ellipticity regression (not a shear bias); error columns: the paper's "
            "binned |median| statistic (10 B_tot bins over [0, 0.55]).",
            "",
            "Models: "
            + "; ".join(f"{i}, {c}: `{_short(models[(i, c)][0])}`" for i, c in PAPER)
            + ' (a name is a shipped model: its training is in the "Pretrained models" sections; '
            "the per-centring ones (lsst-centred, ...) and any deblender_* run are "
            "benchmarks/train_centrings.sh's, each trained on a VAE of its instruments and "
            "carrying that VAE's frozen decoder, which need not be the one shipped now).",
            "",
            "| test set | deblender trained on | N | m (ours) | m (paper) | binned abs(median "
            "d abs(e)) ours | paper | binned abs(median dmag) ours | paper | max abs(c) | KSB "
            "failures (output) | draws with no peak |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            *(["", args.note] if args.note else []),
        ]
    )
    print(body)
    command = " ".join(["python benchmarks/paper_table.py", *sys.argv[1:]])
    write_section("Paper table", command, body)
    (args.out / "table.json").write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
