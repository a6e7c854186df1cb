"""Copy the models trained by ``train_pretrained.sh`` into the package and record their training.

For each instrument choice, ``src/vaedeblend/pretrained/<name>/{vae,deblender}/`` receives
``model.safetensors`` and ``config.json`` (the absolute data path replaced by its file name), and
the "Pretrained models" section of RESULTS.md gets the commands, seeds, sizes, steps, wall-clock
time and the validation loss as training went on (from each run's metrics.csv).

    python benchmarks/ship_pretrained.py [--runs ~/.cache/vaedeblend/runs] [NAME ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import write_section  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaedeblend" / "pretrained"
# run-directory key -> shipped name, and the seed of its VAE set (train_pretrained.sh's SPEC;
# the deblender set's seed is one more)
NAMES = {"lsst_euclid": "lsst+euclid", "lsst": "lsst", "hsc": "hsc"}
VAE_SEEDS = {"lsst_euclid": 101, "lsst": 103, "hsc": 105}
DATA = {"vae": "iso_{}.h5", "deblender": "blend_detected_{}.h5"}


def validation_curve(run: Path) -> list[tuple[int, float]]:
    """(global step, validation loss) at every validation of the run, in order."""
    rows = []
    for metrics in sorted(run.glob("logs/version_*/metrics.csv")):
        with open(metrics) as f:
            for row in csv.DictReader(f):
                if row.get("val_loss"):
                    rows.append((int(row["step"]), float(row["val_loss"])))
    return rows


def ship(run: Path, dest: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    config["training"]["data"] = Path(config["training"]["data"]).name
    if "vae" in config:  # a deblender's record of its VAE: no paths of the training machine
        config["vae"]["path"] = "../vae"
        config["vae"]["training"]["data"] = Path(config["vae"]["training"]["data"]).name
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(run / "model.safetensors", tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return config


def finished_record(run: Path, training: dict) -> tuple[float, list[tuple[int, float]], float]:
    """(wall-clock limit in minutes, validation curve, untrained validation loss) of a run that
    finished training (its DONE file exists; SystemExit otherwise)."""
    if not (run / "DONE").exists():
        raise SystemExit(f"{run} has not finished training (no DONE file)")
    curve = validation_curve(run)
    untrained = curve[0][1] if curve and curve[0][0] == 0 else float("nan")
    return training["settings"]["max_time"] / 60, curve, untrained


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
    parser.add_argument(
        "names", nargs="*", default=list(NAMES), help=f"run keys to ship ({', '.join(NAMES)})"
    )
    args = parser.parse_args()
    rows, limits = [], {}
    for key in args.names:
        name = NAMES[key]
        for part in ("vae", "deblender"):
            run = args.runs / f"{part}_{key}"
            training = json.loads((run / "config.json").read_text())["training"]
            minutes, curve, untrained = finished_record(run, training)
            t = ship(run, PACKAGE / key / part)["training"]
            limits[part] = f"{minutes:.0f}"  # the script takes one limit per part
            rows.append(
                f"| {name} | {part} | `{DATA[part].format(key)}` "
                f"(seed {VAE_SEEDS[key] + (part == 'deblender')}, "
                f"{t['n_train']} train / {t['n_val']} val) | {t['global_step']} | {minutes:.0f} | "
                f"{untrained:.1f} | {t['best_val_loss']:.1f} | {curve_summary(curve, minutes)} |"
            )
    total_bytes = sum(p.stat().st_size for p in PACKAGE.rglob("*.safetensors"))
    minutes = f"{limits['vae']} {limits['deblender']}"
    body = "\n".join(
        [
            f"Trained on this 2-core CPU by `bash benchmarks/train_pretrained.sh {minutes} "
            f"{' '.join(args.names)}` (models in parallel, one torch thread each; `fast` network, "
            "paper loss: BCE + "
            "0.01 KL, Adam lr 1e-3, batch 100, plateau schedule), shipped by "
            "`python benchmarks/ship_pretrained.py`. Loss = per-stamp sum over pixels and bands "
            "(lower is better; not comparable between 6 and 10 bands).",
            "",
            "| model | part | data | steps | wall-clock min | val loss untrained | best val loss | "
            "val loss as training went on |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Shipped weights: {total_bytes / 2**20:.1f} MiB in total, all shipped models "
            "(float32 safetensors).",
        ]
    )
    print(body)
    write_section(
        f"Pretrained models: {', '.join(NAMES[k] for k in args.names)}",
        " ".join(["python benchmarks/ship_pretrained.py", *args.names]),
        body,
    )


if __name__ == "__main__":
    main()
