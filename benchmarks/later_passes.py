"""What the later passes of field mode add, with and without the leftover vetoes (issue 12).

On simulated fields with known truth (the test fields' recipe, ``bench_refined_field.py``),
deblends each with the shipped model of its instruments, three passes, once with the default
settings and once with the two vetoes off (``core_sigmas = 0``, ``truncation_nsigma = inf``),
and counts the sources found after the first pass that match a true galaxy within 0.6" (one
to one, ``vaedeblend.evaluation.fields.match``) and those that do not.

    python benchmarks/later_passes.py [--fields lsst:3,4,7,11,101,102 lsst+euclid:103] \\
        [--work DIR] [--record]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from astropy.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from bench_refined_field import images_of, simulate_field  # noqa: E402
from results import report  # noqa: E402

from vaedeblend.evaluation.fields import match  # noqa: E402
from vaedeblend.fieldmode import deblend_field, make_settings  # noqa: E402
from vaedeblend.pretrained import resolve_model  # noqa: E402

SETTINGS = {
    "vetoes on (default)": make_settings(),
    "vetoes off": make_settings(core_sigmas=0.0, truncation_nsigma=np.inf),
}


def later_pass_counts(field: Path, model, settings) -> tuple[int, int, int, int]:
    """(rows, matched rows, later-pass rows matched, later-pass rows unmatched)."""
    cat = deblend_field(images_of(field), model, settings=settings).catalog
    di, _ = match(cat, Table.read(field / "truth.fits"))
    matched = np.zeros(len(cat), bool)
    matched[di] = True
    later = np.asarray(cat["iteration"]) > 1
    return len(cat), int(matched.sum()), int((later & matched).sum()), int((later & ~matched).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fields", nargs="+", default=["lsst:3,4,7,11,101,102", "lsst+euclid:103"])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="later_passes_"))
    lines = [
        "Three passes of the shipped model of each field's instruments; later-pass sources "
        'matched (within 0.6" of a true galaxy, one to one) or not. Vetoes: a detection after '
        "the first pass within 1.25 sigma of a known source's centre, or within 1.5 stamp "
        "half-widths of a model cut off by its stamp (docs/field_mode.md, step 5).",
        "",
        "| field | settings | rows | matched | later passes: matched | later passes: unmatched |",
        "|---|---|---|---|---|---|",
    ]
    totals = {name: np.zeros(2, int) for name in SETTINGS}
    for group in args.fields:
        instruments, seeds = group.split(":")
        model = resolve_model(instruments)
        for seed in map(int, seeds.split(",")):
            field = simulate_field(work / f"{instruments}_{seed}", instruments, seed)
            for name, settings in SETTINGS.items():
                rows, matched, good, bad = later_pass_counts(field, model, settings)
                totals[name] += (good, bad)
                lines.append(
                    f"| {instruments} {seed} | {name} | {rows} | {matched} | {good} | {bad} |"
                )
    lines += [""] + [
        f"All fields, {name}: {t[0]} later-pass sources matched, {t[1]} unmatched."
        for name, t in totals.items()
    ]
    report("Field mode: later passes", "\n".join(lines), args.record)


if __name__ == "__main__":
    main()
