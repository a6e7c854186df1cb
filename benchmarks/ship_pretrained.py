"""Copy the models trained by ``train_pretrained.sh`` into the package and record their training.

For each instrument choice, ``src/vaedeblend/pretrained/<name>/{vae,deblender}/`` receives
``model.safetensors`` and ``config.json`` (the absolute data path replaced by its file name), and
the "Pretrained models" section of RESULTS.md gets the seeds, sizes, steps and CPU-hours of the
model's whole lineage, and the validation loss as training went on (from each run's
metrics.csv). With ``--float16`` the weights are stored as float16 (half the size); the largest
difference this makes to the outputs, relative to the output's peak, is measured on simulated
stamps and recorded.

    python benchmarks/ship_pretrained.py [--runs DIR] [--tag TAG] [--float16] [--how TEXT] [NAME ...]

``--tag bce`` ships ``vae_<name>_bce`` and ``deblender_<name>_bce``; ``--how`` says how they were
trained (recorded). ``--centrings`` ships the per-centring deblenders of ``train_centrings.sh``
instead (``deblender_lsst_centred`` -> ``lsst/deblender_centred``, the shipped name
``lsst-centred``; names: ``lsst_centred lsst_uniform lsst_euclid_centred``). ``--parts
deblender`` ships a detected deblender alone; like the per-centring ones, it must have been
trained on the shipped VAE's decoder (checked). ``--parts vae`` ships a VAE alone: its decoder
must be the shipped one (a VAE continued with ``vaedeblend train vae --encoder-only``; checked),
since the shipped deblenders and latent prior were fitted on it. ``--store-float16 NAME``
re-stores an already shipped float32 model as float16 in place (its record kept) and records
the effect on its outputs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import write_section  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaedeblend" / "pretrained"
# run-directory key -> shipped name, and the seed of its VAE set (train_pretrained.sh's SPEC;
# the deblender set's seed is one more)
NAMES = {"lsst_euclid": "lsst+euclid", "lsst": "lsst", "hsc": "hsc"}
# train_centrings.sh's run key -> (instrument directory here, centring)
CENTRINGS = {
    "lsst_centred": ("lsst", "centred"),
    "lsst_uniform": ("lsst", "uniform"),
    "lsst_euclid_centred": ("lsst_euclid", "centred"),
}


def shipments(args) -> list[tuple[str, str, Path, Path]]:
    """(shipped name, part, run directory, destination) of every model to ship."""
    if args.centrings:
        out = []
        for key in args.names or list(CENTRINGS):
            if key not in CENTRINGS:
                raise SystemExit(f"unknown per-centring run {key!r} ({', '.join(CENTRINGS)})")
            base, centring = CENTRINGS[key]
            name = f"{NAMES[base]}-{centring}"
            part = f"deblender_{centring}"
            out.append((name, part, args.runs / f"deblender_{key}", PACKAGE / base / part))
        return out
    tag = f"_{args.tag}" if args.tag else ""
    return [
        (NAMES[key], part, args.runs / f"{part}_{key}{tag}", PACKAGE / key / part)
        for key in args.names or list(NAMES)
        for part in args.parts
    ]


def check_trained_on_shipped_vae(run: Path, dest: Path) -> None:
    """Refuse a deblender whose frozen decoder is not the shipped VAE's beside ``dest``:
    shipped alone, it would be paired with a decoder it was never trained on."""
    if not _decoder_matches(run, dest.parent / "vae"):
        raise SystemExit(
            f"{run} was trained on another decoder than the shipped {dest.parent / 'vae'}'s; "
            "ship its VAE with it (--parts vae deblender)"
        )


def check_keeps_shipped_decoder(run: Path, dest: Path) -> None:
    """Refuse a VAE shipped without its deblenders unless its decoder is the shipped one
    (a VAE continued with ``--encoder-only``): the shipped deblenders and prior use it."""
    if dest.exists() and not _decoder_matches(run, dest):
        raise SystemExit(
            f"{run} has another decoder than the shipped {dest}: the shipped deblenders and "
            "prior were trained on that one; ship them with it (--parts vae deblender)"
        )


def _decoder_matches(run: Path, shipped: Path) -> bool:
    from vaedeblend.models.io import load_vae
    from vaedeblend.models.training import same_decoder

    (a, _), (b, _) = load_vae(run), load_vae(shipped)
    return same_decoder(a.state_dict(), b.state_dict())


def validation_curve(run: Path) -> list[tuple[int, float]]:
    """(global step, validation loss) at every validation of the run, in order."""
    rows = []
    for metrics in sorted(run.glob("logs/version_*/metrics.csv")):
        with open(metrics) as f:
            for row in csv.DictReader(f):
                if row.get("val_loss"):
                    rows.append((int(row["step"]), float(row["val_loss"])))
    return rows


def without_machine_paths(training: dict) -> None:
    """Replace, in a training record, the paths of the training machine: the data by its file
    name, a model continued from this package by its place in it (``lsst/deblender``)."""
    training["data"] = Path(training["data"]).name
    runs = (training.get("lineage") or {}).get("runs", [])
    for record in [training.get("settings", {}), *runs]:
        source = record.get("init_from")
        if source and Path(source).is_absolute() and "pretrained" in Path(source).parts:
            parts = Path(source).parts
            record["init_from"] = "/".join(parts[parts.index("pretrained") + 1 :])


def with_counted_hours(training: dict) -> None:
    """Recount a lineage's CPU-hours and accelerator hours from its runs (a record written on an
    accelerator before both were counted has None for the CPU-hours of the whole lineage)."""
    from vaedeblend.models.training import lineage_hours

    lineage = training.get("lineage")
    if lineage:
        lineage["cpu_hours"], lineage["accelerator_hours"] = lineage_hours(lineage["runs"])


def ship(run: Path, dest: Path, float16: bool = False) -> dict:
    config = json.loads((run / "config.json").read_text())
    without_machine_paths(config["training"])
    with_counted_hours(config["training"])
    if "vae" in config:  # a deblender's record of its VAE: no paths of the training machine
        config["vae"]["path"] = "../vae"
        config["vae"]["training"]["data"] = Path(config["vae"]["training"]["data"]).name
        with_counted_hours(config["vae"]["training"])
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if float16:
        write_float16(run / "model.safetensors", tmp / "model.safetensors")
        config["weights"]["dtype"] = "float16"
    else:
        shutil.copyfile(run / "model.safetensors", tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return config


# contracts.md: float16 weights where the outputs are unchanged to 1e-3 of the flux
FLOAT16_TOLERANCE = 1e-3


def write_float16(source: Path, out: Path) -> None:
    """``source``'s weights with every floating-point tensor stored as float16, into ``out``."""
    from safetensors.numpy import load_file, save_file

    tensors = {
        k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in load_file(source).items()
    }
    save_file(tensors, out, metadata={"format": "vaedeblend-model"})


def store_float16(dest: Path) -> float:
    """Re-store the shipped float32 model ``dest`` as float16 in place (weights otherwise
    unchanged, its training record kept); returns the float16 effect on its outputs, and
    leaves the model as it was (SystemExit) where that effect reaches FLOAT16_TOLERANCE."""
    config = json.loads((dest / "config.json").read_text())
    if config["weights"]["dtype"] != "float32":
        raise SystemExit(f"{dest} is stored as {config['weights']['dtype']} already")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_float16(dest / "model.safetensors", tmp / "model.safetensors")
    config["weights"]["dtype"] = "float16"
    (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    difference = float16_difference(dest, tmp)
    if difference >= FLOAT16_TOLERANCE:
        shutil.rmtree(tmp)
        raise SystemExit(f"{dest}: float16 changes its outputs by {difference:.1e} of the peak")
    old = dest.with_name(f".{dest.name}.float32")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old)
    return difference


def float16_difference(run: Path, shipped: Path, n: int = 64) -> float:
    """Largest abs(output(float16 weights) - output(float32 weights)) over ``n`` simulated
    stamps, relative to the largest float32 output pixel of each stamp."""
    from vaedeblend.models import load_model

    full, half = load_model(run), load_model(shipped)
    rng = np.random.default_rng(0)
    sky = np.asarray(full.config["sky_levels_electrons"])
    stamps = full.sample(n, seed=1)
    noisy = stamps + rng.normal(size=stamps.shape) * np.sqrt(sky[:, None, None] + stamps.clip(0))
    a, b = full.deblend(noisy), half.deblend(noisy)
    peak = np.abs(a).max(axis=(1, 2, 3), keepdims=True)
    return float((np.abs(a - b) / peak).max())


def lineage_text(training: dict) -> str:
    from vaedeblend.models.training import lineage_hours

    lineage = training.get("lineage") or {}
    hours, accelerator = lineage_hours(lineage.get("runs", []))
    runs = len(lineage.get("runs", []))
    return (
        f"{lineage.get('steps', training['global_step'])} steps, "
        + (f"{hours:.2f} CPU-h" if hours is not None else "? CPU-h")
        + (f" + {accelerator:.2f} GPU-h" if accelerator else "")
        + f", {runs} run(s)"
    )


def finished_record(run: Path, training: dict) -> tuple[float, list[tuple[int, float]], float]:
    """(minutes the run trained, validation curve, untrained validation loss) of a run that
    finished training (its DONE file exists; SystemExit otherwise). The minutes are the run's
    measured wall time where its lineage records it, else its wall-clock limit (older runs;
    a run that ends its epochs early stops before its limit)."""
    if not (run / "DONE").exists():
        raise SystemExit(f"{run} has not finished training (no DONE file)")
    curve = validation_curve(run)
    untrained = curve[0][1] if curve and curve[0][0] == 0 else float("nan")
    runs = training.get("lineage", {}).get("runs") or [{}]
    wall_s = runs[-1].get("wall_s")
    minutes = wall_s / 60 if wall_s else training["settings"]["max_time"] / 60
    return minutes, curve, untrained


def curve_summary(curve: list[tuple[int, float]], minutes: float) -> str:
    """Validation loss at a few fractions of the run, with the elapsed time they correspond to
    (steps converted to minutes at the run's mean rate: runs stop at their time limit)."""
    if not curve:
        return "no validation logged"
    last_step = max(s for s, _ in curve) or 1
    marks = []
    for fraction in (0.1, 0.25, 0.5, 1.0):
        step, loss = min(curve, key=lambda sv: abs(sv[0] - fraction * last_step))
        marks.append(f"{loss:.1f} at {minutes * step / last_step:.0f} min")
    return "; ".join(marks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path.home() / ".cache/vaedeblend/runs")
    parser.add_argument("--tag", default="", help="run directories <part>_<name>_<tag>")
    parser.add_argument("--float16", action="store_true", help="store float16 weights")
    parser.add_argument("--how", default="", help="how the runs were trained (recorded)")
    parser.add_argument(
        "--centrings", action="store_true", help="ship train_centrings.sh's deblenders"
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("vae", "deblender"),
        default=["vae", "deblender"],
        help="which parts to ship (default both; a deblender alone keeps the shipped VAE, "
        "so it must have been trained on that VAE's decoder)",
    )
    parser.add_argument(
        "--store-float16",
        action="store_true",
        help="re-store the shipped float32 models NAMES (with --parts) as float16 in place",
    )
    parser.add_argument(
        "names", nargs="*", help=f"run keys to ship (default all: {', '.join(NAMES)})"
    )
    args = parser.parse_args()
    if args.store_float16:
        store_all_float16(args)
        return
    rows, names = [], []
    for name, part, run, dest in shipments(args):
        if part.startswith("deblender") and (args.centrings or "vae" not in args.parts):
            check_trained_on_shipped_vae(run, dest)
        if part == "vae" and "deblender" not in args.parts:
            check_keeps_shipped_decoder(run, dest)
        training = json.loads((run / "config.json").read_text())["training"]
        minutes, curve, untrained = finished_record(run, training)
        t = ship(run, dest, args.float16)["training"]
        diff = float16_difference(run, dest) if args.float16 else 0.0
        names += [name] if name not in names else []
        rows.append(
            f"| {name} | {part} | `{Path(t['data']).name}` "
            f"({t['n_train']} train / {t['n_val']} val) | {lineage_text(t)} | "
            f"{t['global_step']} in {minutes:.0f} min | {untrained:.1f} | "
            f"{t['best_val_loss']:.1f} | {curve_summary(curve, minutes)} | {diff:.1e} |"
        )
    total_bytes = sum(p.stat().st_size for p in PACKAGE.rglob("*.safetensors"))
    dtype = "float16" if args.float16 else "float32"
    body = "\n".join(
        [
            f"{args.how} Shipped by `python benchmarks/ship_pretrained.py` ({dtype} weights). "
            "Lineage: steps and CPU-hours of every run the model continued (`--init-from`). "
            "Loss = per-stamp sum over pixels and bands (lower is better; not comparable "
            "between 6 and 10 bands). float16 effect: largest abs(output difference) / stamp "
            "peak, float16 against float32 weights, 64 noisy stamps.",
            "",
            "| model | part | data | lineage | this run | val loss at start | best val loss | "
            "val loss as training went on | float16 effect |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Shipped weights: {total_bytes / 2**20:.1f} MiB in total, all shipped models.",
        ]
    )
    print(body)
    # a part shipped alone gets its own section: the other part's record stays
    alone = ""
    if not args.centrings and len(set(args.parts)) == 1:
        alone = " (VAE)" if "vae" in args.parts else " (detected deblender)"
    write_section(
        f"Pretrained models: {', '.join(names)}{alone}",
        " ".join(["python", *sys.argv]),
        body,
    )


def store_all_float16(args) -> None:
    """``--store-float16``: each named model's parts re-stored as float16, with the effect on
    its outputs recorded in a section of its own (its training record is left as it is)."""
    if not args.names:
        raise SystemExit("--store-float16 needs the models to re-store (e.g. hsc)")
    rows = []
    for key in args.names:
        if key not in NAMES:
            raise SystemExit(f"unknown model {key!r} ({', '.join(NAMES)})")
        for part in args.parts:
            difference = store_float16(PACKAGE / key / part)
            rows.append(f"| {NAMES[key]} | {part} | {difference:.1e} |")
    total_bytes = sum(p.stat().st_size for p in PACKAGE.rglob("*.safetensors"))
    body = "\n".join(
        [
            f"{args.how} Re-stored as float16 by `python benchmarks/ship_pretrained.py "
            "--store-float16` (the weights otherwise unchanged; their training is recorded in "
            "the model's own section). float16 effect: largest abs(output difference) / stamp "
            "peak, float16 against float32 weights, 64 noisy stamps.",
            "",
            "| model | part | float16 effect |",
            "|---|---|---|",
            *rows,
            "",
            f"Shipped weights: {total_bytes / 2**20:.1f} MiB in total, all shipped models.",
        ]
    )
    print(body)
    names = ", ".join(NAMES[k] for k in args.names)
    write_section(
        f"Pretrained models: {names}, stored as float16", " ".join(["python", *sys.argv]), body
    )


if __name__ == "__main__":
    main()
