"""Copy the models trained by ``train_pretrained.sh`` into the package and record their training.

For each instrument choice, ``src/vaedeblend/pretrained/<name>/{vae,deblender}/`` receives
``model.safetensors`` and ``config.json`` (the absolute data path replaced by its file name), and
the "Pretrained models" section of RESULTS.md gets the commands, seeds, sizes, steps, wall-clock
time and the validation loss as training went on (from each run's metrics.csv).

    python benchmarks/ship_pretrained.py [--runs ~/.cache/vaedeblend/runs]
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
NAMES = {"lsst": "lsst", "lsst_euclid": "lsst+euclid"}
DATA = {"vae": "iso_{}.h5", "deblender": "blend_detected_{}.h5"}
SEEDS = {
    ("vae", "lsst_euclid"): 101,
    ("deblender", "lsst_euclid"): 102,
    ("vae", "lsst"): 103,
    ("deblender", "lsst"): 104,
}


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
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(run / "model.safetensors", tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return config


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
    args = parser.parse_args()
    rows, total_bytes = [], 0
    for key, name in NAMES.items():
        for part in ("vae", "deblender"):
            run = args.runs / f"{part}_{key}"
            config = ship(run, PACKAGE / key / part)
            total_bytes += (PACKAGE / key / part / "model.safetensors").stat().st_size
            t = config["training"]
            minutes = t["settings"]["max_time"] / 60
            curve = validation_curve(run)
            untrained = curve[0][1] if curve and curve[0][0] == 0 else float("nan")
            rows.append(
                f"| {name} | {part} | `{DATA[part].format(key)}` (seed {SEEDS[(part, key)]}, "
                f"{t['n_train']} train / {t['n_val']} val) | {t['global_step']} | {minutes:.0f} | "
                f"{untrained:.1f} | {t['best_val_loss']:.1f} | {curve_summary(curve, minutes)} |"
            )
    body = "\n".join(
        [
            "Trained on this 2-core CPU by `bash benchmarks/train_pretrained.sh 40 45` (both "
            "instrument choices in parallel, one torch thread each; `fast` network, paper loss: BCE + "
            "0.01 KL, Adam lr 1e-3, batch 100, plateau schedule), shipped by "
            "`python benchmarks/ship_pretrained.py`. Loss = per-stamp sum over pixels and bands "
            "(lower is better; not comparable between 6 and 10 bands).",
            "",
            "| model | part | data | steps | wall-clock min | val loss untrained | best val loss | "
            "val loss as training went on |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Shipped weights: {total_bytes / 2**20:.1f} MiB in total (float32 safetensors).",
        ]
    )
    print(body)
    write_section("Pretrained models", "python benchmarks/ship_pretrained.py", body)


if __name__ == "__main__":
    main()
