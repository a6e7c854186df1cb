"""What more training buys: the accuracy of VAEs (or deblenders) of one setup, trained for
different times, on one test set.

Each model directory is evaluated by ``vaedeblend evaluate``'s code path on the same fresh test
set; its training record (steps, wall-clock limit, best validation loss) is read from its
config.json. The table is written to RESULTS.md ("Accuracy against training time", with
``--record``), next to the paper's VAE (slope 0.930 on LSST, i.e. m = -0.07).

    python benchmarks/accuracy_vs_training.py --data TEST.h5 MODEL_DIR [MODEL_DIR ...] [--record]

A test set for the VAEs of the shipped LSST model: isolated galaxies, centred, a seed never used
in training, e.g. ``vaedeblend simulate --preset paper --instruments lsst --kind isolated
--centring centred --n 1000 --seed 9010 --out iso_test.h5``. A longer-trained copy of a run:
copy its directory and continue it with ``vaedeblend train vae ... --resume --max-time S``
(the time limit counts the whole run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import report  # noqa: E402

PAPER_VAE_M = 0.930 - 1  # paper_setup.md: the VAE alone on isolated galaxies, LSST, g1 slope


def evaluate(model: str, data: Path, out: Path) -> dict:
    from vaedeblend.cli_evaluate import run_model
    from vaedeblend.dataset import open_dataset
    from vaedeblend.evaluation import EvalConfig, evaluate_dataset

    with open_dataset(data) as ds:
        output = run_model(model, ds, None, 256, "cpu")
        return evaluate_dataset(
            ds, output, out, label=Path(model).name, config=EvalConfig(figures=False)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="test set (vaedeblend simulate)")
    parser.add_argument("models", nargs="+", help="model directories, shortest training first")
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache/vaedeblend/accuracy")
    parser.add_argument("--note", default="", help="how the models were trained (recorded)")
    parser.add_argument("--record", action="store_true", help="write to benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows = []
    for model in args.models:
        training = json.loads((Path(model) / "config.json").read_text())["training"]
        h = evaluate(model, args.data, args.out / Path(model).name)["headline"]
        rows.append(
            f"| `{Path(model).name}` | {training['settings']['max_time'] / 60:.0f} | "
            f"{training['global_step']} | {training['best_val_loss']:.1f} | "
            f"{h['m']:.3f} ± {h['m_err']:.3f} | {h['median_abs_delta_abs_e']:.3f} | "
            f"{h['median_abs_delta_mag']:.3f} |"
        )
        print(rows[-1], flush=True)
    body = "\n".join(
        [
            f"Test set `{args.data.name}`; each model evaluated on all of it. Training time: the "
            "run's wall-clock limit on one CPU core (the runs stop there). m: KSB ellipticity "
            f"regression (paper_setup.md); the paper's VAE alone: m = {PAPER_VAE_M:.2f} (LSST). "
            + args.note,
            "",
            "| model | minutes | steps | best val loss | m | median abs(d abs(e)) | "
            "median abs(dmag) |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    report("Accuracy against training time", body, args.record)


if __name__ == "__main__":
    main()
