"""Does deblending help? A model against no deblending at all, by blendedness, on the same blends.

The accuracy issue's test for the detected-centring model (the one ``vaedeblend demo`` and field
mode use): on at least 2,000 fresh detected-centring blends, the deblended median abs(d abs(e))
(KSB, r band) must be below ``--model none``'s (the noisy blend itself) in every B_tot bin that
holds at least ``--min-count`` galaxies. Both runs are measured by ``evaluate``'s code path;
each bin compares the very same galaxies (those whose KSB shape was measured in both runs).
Bins: the paper's ten B_tot bins over [0, 0.55], and one above. The median abs(dmag)
(stamp-sum flux, r band) is shown beside it.

    python benchmarks/deblending_helps.py --data det_test.h5 [--model lsst] [--limit N] \\
        [--min-count 50] [--refine [--central-prior fixed] [--flux-from-data E] \\
        [--pixels-from-data F]] [--record] [--note TEXT]

``--refine`` and its flags: the model refined as ``vaedeblend evaluate --refine`` does (the
same flags), recorded in a section of its own.

A test set: ``vaedeblend simulate --preset paper --instruments lsst --kind blend --centring
detected --n 2000 --seed SEED --out det_test.h5`` with a seed never used in training.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import add_test_set_arguments, check_at_least_one, report, table_body  # noqa: E402

from vaedeblend.cli_evaluate import (  # noqa: E402
    add_refine_arguments,
    check_refine_flags,
    refine_settings,
)
from vaedeblend.evaluation.binned import BLENDEDNESS_EDGES  # noqa: E402

EDGES = (*BLENDEDNESS_EDGES, np.inf)  # the paper's bins, then everything above 0.55


def evaluated(
    model: str, data: Path, limit: int | None, out: Path, settings=None
) -> tuple[dict, str]:
    """``evaluate``'s per-galaxy arrays (its ``per_galaxy.npz``, written to ``out``) of
    ``model`` (or ``none``) on the first ``limit`` stamps of ``data``, and the reference band;
    ``settings``: a RefineSettings, the model refined with them (None: its one pass)."""
    from vaedeblend.dataset import open_dataset
    from vaedeblend.evaluation import EvalConfig, evaluate_dataset
    from vaedeblend.evaluation.runner import run_model

    with open_dataset(data) as ds:
        output = run_model(model, ds, limit, batch_size=256, device="cpu",
                           refine=settings is not None, settings=settings)  # fmt: skip
        evaluate_dataset(ds, output, out, label=model, config=EvalConfig(figures=False),
                         limit=limit)  # fmt: skip
        band = ds.meta.get("reference_band", "lsst_r")
    return dict(np.load(out / "per_galaxy.npz")), band


def per_galaxy(
    model: str, data: Path, limit: int | None, out: Path, settings=None
) -> dict[str, np.ndarray]:
    """B_tot, abs(d abs(e)) (KSB) and abs(dmag) (stamp sum) in the reference band of
    ``model`` (or ``none``) on the first ``limit`` stamps of ``data`` (:func:`evaluated`)."""
    per, band = evaluated(model, data, limit, out, settings)
    return {
        "B_tot": per["blendedness"],
        "de": np.abs(per[f"ksb.{band}.delta_abs_e"]),
        "dmag": np.abs(per[f"flux_sum.{band}.delta_mag"]),
    }


def bin_rows(model: dict, none: dict, min_count: int) -> tuple[list[str], list[bool]]:
    """Table rows per B_tot bin, and whether deblending helped in each bin holding at least
    ``min_count`` galaxies measured in both runs."""
    rows, verdicts = [], []
    for lo, hi in zip(EDGES[:-1], EDGES[1:], strict=True):
        inside = (model["B_tot"] >= lo) & (model["B_tot"] < hi)
        both = inside & np.isfinite(model["de"]) & np.isfinite(none["de"])
        n = int(both.sum())
        if n == 0:
            continue
        de_model, de_none = np.median(model["de"][both]), np.median(none["de"][both])
        dm_model = np.nanmedian(model["dmag"][inside])
        dm_none = np.nanmedian(none["dmag"][inside])
        counted = n >= min_count
        helped = bool(de_model < de_none)
        verdicts += [helped] if counted else []
        verdict = ("yes" if helped else "**no**") if counted else f"(< {min_count})"
        upper = f"{hi:.3f}" if np.isfinite(hi) else "1"
        rows.append(
            f"| {lo:.3f}-{upper} | {n} | {de_model:.4f} | {de_none:.4f} | "
            f"{de_model / de_none:.2f} | {dm_model:.3f} | {dm_none:.3f} | {verdict} |"
        )
    return rows, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_test_set_arguments(parser, "detected-centring test set", model_default="lsst")
    parser.add_argument("--min-count", type=int, default=50, help="galaxies for a bin to count")
    parser.add_argument(
        "--out", type=Path, default=None, help="evaluation outputs (default: temporary)"
    )
    add_refine_arguments(parser)
    args = parser.parse_args()
    check_at_least_one(parser, limit=args.limit, min_count=args.min_count)
    if args.posterior or args.prior:
        parser.error("--posterior and --prior are not measured here")
    try:
        check_refine_flags(args)
    except ValueError as err:
        parser.error(str(err))
    settings = refine_settings(args)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        model = per_galaxy(args.model, args.data, args.limit, out / "model", settings)
        none = per_galaxy("none", args.data, args.limit, out / "none")
    rows, verdicts = bin_rows(model, none, args.min_count)
    helped = sum(verdicts)
    intro = (
        f"Test set `{args.data.name}`, {len(model['B_tot'])} targets; model `{args.model}` "
        "against no deblending (`--model none`: the noisy blend itself). Per B_tot bin: "
        "galaxies whose KSB shape was measured in both runs, the median abs(d abs(e)) (KSB, "
        "r band) of each and their ratio, and the median abs(dmag) (stamp sum, r band). "
        f"Deblending helps in **{helped} of {len(verdicts)}** bins holding at least "
        f"{args.min_count} galaxies (the issue's target: all). {args.note}"
    )
    columns = ["B_tot", "galaxies", "deblended med abs(d abs(e))", "none", "ratio",
               "deblended med abs(dmag)", "none", "deblending helps shapes"]  # fmt: skip
    body = table_body(intro, columns, rows)
    label = "/".join(Path(args.model).parts[-2:]) + refined_label(settings)
    report(f"Deblending against none by blendedness: {args.data.stem}, {label}", body, args.record)


def refined_label(settings) -> str:
    """ ", refined (...)" naming the refinement settings that differ from the defaults, or ""
    for the one pass."""
    if settings is None:
        return ""
    from dataclasses import asdict

    from vaedeblend.refinement import RefineSettings

    default = asdict(RefineSettings())
    changed = [f"{k} {v}" for k, v in asdict(settings).items() if v != default[k]]
    return ", refined" + (f" ({', '.join(changed)})" if changed else "")


if __name__ == "__main__":
    main()
