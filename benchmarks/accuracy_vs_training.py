"""What more training buys: the accuracy of VAEs (or deblenders) of one setup against the
CPU-hours of their whole lineage, on one test set.

Each model (a directory or a shipped name) is evaluated by ``vaedeblend evaluate``'s code path
on the same fresh test set; its steps and CPU-hours come from the training record's lineage
(every run it continued with ``--init-from``). Also measured: the worst median magnitude error
over the S/N bins above 10, the r-band pedestal share of model and truth, and the KL per latent
dimension. The table is written to RESULTS.md ("Accuracy against CPU-hours", with
``--record``), next to the paper's VAE (slope 0.930 on LSST, i.e. m = -0.07).

    python benchmarks/accuracy_vs_training.py --data TEST.h5 MODEL [MODEL ...] [--record] \\
        [--section NAME] [--note TEXT]

``--teacher VAE`` adds a row for that VAE run on each blend less its target's neighbours (their
noiseless images; the noise stays): what a deblender trained with ``--teacher-weight`` would give
if it matched its teacher exactly, the distillation's limit.

A test set for the VAEs of the LSST model: isolated galaxies, centred, a seed never used in
training, e.g. ``vaedeblend simulate --preset paper --instruments lsst --kind isolated
--centring centred --n 1000 --seed 9010 --out iso_test.h5``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
from results import report  # noqa: E402

PAPER_VAE_M = 0.930 - 1  # paper_setup.md: the VAE alone on isolated galaxies, LSST, g1 slope


def evaluate(model: str, data: Path, out: Path, alone: bool = False) -> tuple[dict, dict]:
    """(metrics, extras): ``evaluate``'s metrics of ``model`` on ``data``, and the r-band
    pedestal shares (model and truth) and the KL per latent dimension on the same stamps.
    ``alone``: the model sees each blend less its target's neighbours (noiseless ``others``)."""
    from bench_hsc_scene import pedestal_share

    from vaedeblend.dataset import open_dataset
    from vaedeblend.evaluation import EvalConfig, evaluate_dataset
    from vaedeblend.pretrained import resolve_model

    with open_dataset(data) as ds:
        blends, targets = ds.read("blend"), ds.read("target")
        if alone:
            blends = blends - ds.read("others")
        model_obj = resolve_model(model)
        output = model_obj.deblend(blends, bands=ds.band_ids)
        ref = ds.band_ids.index(ds.meta.get("reference_band", "lsst_r"))
        mu, sigma = model_obj.encode(blends, bands=ds.band_ids)
        metrics = evaluate_dataset(
            ds, output, out, label=out.name, config=EvalConfig(figures=False)
        )
    kl = 0.5 * (mu**2 + sigma**2 - 1 - 2 * np.log(sigma))  # (N, latent), nats
    extras = {
        "pedestal_model": float(pedestal_share(output)[ref]),
        "pedestal_truth": float(pedestal_share(targets)[ref]),
        "kl_per_dim": kl.mean(axis=0),
    }
    return metrics, extras


def model_label(model: str) -> str:
    """A shipped name as is; a directory by its last three path parts (``runs/old/vae`` and
    ``pretrained/lsst/vae`` stay apart)."""
    path = Path(model)
    return "/".join(path.resolve().parts[-3:]) if path.exists() else model


def worst_snr_dmag(metrics: dict, min_snr: float = 10.0) -> float:
    """Largest |median dmag| over the S/N bins above ``min_snr`` that hold galaxies."""
    bins = metrics["binned"]["snr"]["delta_mag"]
    edges, medians = bins["edges"], bins["median"]
    vals = [
        abs(m) for lo, m in zip(edges[:-1], medians, strict=True)
        if lo >= min_snr and m is not None and np.isfinite(m)
    ]  # fmt: skip
    return max(vals) if vals else float("nan")


def m_by_snr(metrics: dict, min_snr: float = 10.0) -> str:
    """KSB m in each S/N bin above ``min_snr`` ("a / b / ..."; "-" where a bin has too few
    galaxies): where the shrinkage of shapes sits."""
    bins = metrics["binned"]["snr"]["m"]
    return " / ".join(
        "-" if not np.isfinite(m) else f"{m:+.2f}"
        for lo, m in zip(bins["edges"][:-1], bins["m"], strict=True)
        if lo >= min_snr
    )


def snr_bin_names(metrics: dict, min_snr: float = 10.0) -> str:
    """The S/N bins of :func:`m_by_snr`, e.g. "10-20 / 20-50 / 50-200 / >200"."""
    edges = metrics["binned"]["snr"]["m"]["edges"]
    return " / ".join(
        f">{lo:g}" if not np.isfinite(hi) else f"{lo:g}-{hi:g}"
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
        if lo >= min_snr
    )


def lineage_of(training: dict) -> tuple[int, str]:
    """(optimiser steps, hours) of a model and every model it continued: CPU-hours, plus
    accelerator hours where a run used one ("4.79 + 0.02 GPU-h"); records written before
    lineages existed give their own steps and their time limit on one core."""
    from vaedeblend.models.training import lineage_hours

    lineage = training.get("lineage")
    if not lineage:
        limit = training["settings"].get("max_time")
        return int(training["global_step"]), (f"{float(limit) / 3600:.2f}" if limit else "?")
    cpu, accelerator = lineage_hours(lineage["runs"])
    hours = "?" if cpu is None else f"{cpu:.2f}"
    return int(lineage["steps"]), hours + (f" + {accelerator:.2f} GPU-h" if accelerator else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="test set (vaedeblend simulate)")
    parser.add_argument("models", nargs="+", help="model directories or shipped names")
    parser.add_argument(
        "--teacher", help="a VAE also run on the blends less their neighbours (a last row)"
    )
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache/vaedeblend/accuracy")
    parser.add_argument("--note", default="", help="how the models were trained (recorded)")
    parser.add_argument("--record", action="store_true", help="write to benchmarks/RESULTS.md")
    parser.add_argument(
        "--section", default="", help="RESULTS.md section suffix (one section per model family)"
    )
    args = parser.parse_args()
    rows, bin_names = [], ""
    runs = [(m, False) for m in args.models] + ([(args.teacher, True)] if args.teacher else [])
    for model, alone in runs:
        from vaedeblend.pretrained import resolve_model

        config = resolve_model(model).config
        training = config["training"]
        steps, hours = lineage_of(training)
        label = model_label(model)
        where = args.out / (label.replace("/", "_") + ("_alone" if alone else ""))
        metrics, extra = evaluate(model, args.data, where, alone)
        label = f"`{label}`" + (" on the blends less their neighbours" if alone else "")
        h = metrics["headline"]
        kl = extra["kl_per_dim"]
        rows.append(
            f"| {label} | {config.get('output_head', 'sigmoid')} / {config['loss']} "
            f"| {steps} | {hours} | {h['m']:.3f} ± {h['m_err']:.3f} | "
            f"{h['binned_abs_median_delta_abs_e']:.3f} | {h['binned_abs_median_delta_mag']:.3f} | "
            f"{h['median_abs_delta_abs_e']:.3f} | {h['median_abs_delta_mag']:.3f} | "
            f"{worst_snr_dmag(metrics):.3f} | {m_by_snr(metrics)} | "
            f"{100 * extra['pedestal_model']:.2f} ({100 * extra['pedestal_truth']:.2f}) | "
            f"{kl.sum():.1f} / {(kl > 0.1).sum()} |"
        )
        bin_names = snr_bin_names(metrics)
        print(rows[-1], flush=True)
    body = "\n".join(
        [
            f"Test set `{args.data.name}`; each model evaluated on all of it. Steps and "
            "CPU-hours count the model's whole lineage (every run it continued; records from "
            "before lineages: the run's own steps and its time limit on one core). m: KSB "
            f"ellipticity regression (paper_setup.md); the paper's VAE alone: m = "
            f"{PAPER_VAE_M:.2f} (LSST). Worst S/N-bin dmag: the largest abs(median dmag) over "
            "the S/N bins above 10 (target: <= 0.05). m by S/N: KSB m in the r-band S/N bins "
            f"{bin_names}. Pedestal: share of the r-band model "
            "flux that is a flat border level, in % (the truth's on the same stamps in "
            "brackets). KL: nats per galaxy summed over latent dimensions / dimensions above "
            "0.1 nat (posterior collapse shows as few). " + args.note,
            "",
            "| model | head / loss | steps | CPU-hours | m | binned abs(med d abs(e)) | "
            "binned abs(med dmag) | median abs(d abs(e)) | median abs(dmag) | "
            "worst S/N-bin dmag | m by S/N | r pedestal % | KL / active dims |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    title = "Accuracy against CPU-hours" + (f": {args.section}" if args.section else "")
    report(title, body, args.record)


if __name__ == "__main__":
    main()
