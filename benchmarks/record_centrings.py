"""Record the training of the per-centring deblenders (``train_centrings.sh``) in RESULTS.md:
data, seeds, steps, wall-clock limit and validation loss as training went on.

    python benchmarks/record_centrings.py [--runs ~/.cache/vaedeblend/runs]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import write_section  # noqa: E402
from ship_pretrained import curve_summary, finished_record  # noqa: E402

# train_centrings.sh's SPEC: name -> (shipped VAE, seed of the training set)
SPEC = {
    "lsst_centred": ("lsst", 107),
    "lsst_uniform": ("lsst", 108),
    "lsst_euclid_centred": ("lsst+euclid", 109),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path.home() / ".cache/vaedeblend/runs")
    args = parser.parse_args()
    rows, minutes = [], set()
    for name, (vae, seed) in SPEC.items():
        run = args.runs / f"deblender_{name}"
        t = json.loads((run / "config.json").read_text())["training"]
        limit, curve, untrained = finished_record(run, t)
        minutes.add(f"{limit:.0f}")
        rows.append(
            f"| {name} | {t['centring']} | shipped `{vae}` VAE | `{Path(t['data']).name}` (seed "
            f"{seed}, {t['n_train']} train / {t['n_val']} val) | {t['global_step']} | "
            f"{limit:.0f} | {untrained:.1f} | {t['best_val_loss']:.1f} | "
            f"{curve_summary(curve, limit)} |"
        )
    body = "\n".join(
        [
            f"Trained by `bash benchmarks/train_centrings.sh {' / '.join(sorted(minutes))}` "
            "(two invocations side by side, one torch thread each; the deblender settings of "
            "train_pretrained.sh: BCE + 0.01 KL, Adam lr 1e-3, batch 100, plateau schedule). "
            "Each starts from the shipped VAE of its instruments, whose decoder stays frozen. "
            "Not shipped; used by the paper table's rows of their centring.",
            "",
            "| deblender | centring | decoder | data | steps | wall-clock min | val loss "
            "untrained | best val loss | val loss as training went on |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(body)
    write_section("Per-centring deblenders", "python benchmarks/record_centrings.py", body)


if __name__ == "__main__":
    main()
