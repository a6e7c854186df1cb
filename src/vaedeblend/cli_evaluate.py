"""``vaedeblend evaluate`` and ``vaedeblend compare``: one code path for every deblender."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaedeblend.argtypes import positive_int

BASELINES = {
    "truth": "output = the noiseless target (a perfect deblender: every error is 0)",
    "none": "output = the noisy blend itself (no deblending)",
}


def add_arguments(sub) -> None:
    p = sub.add_parser("evaluate", help="measure a deblender on a simulated test set")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        help="model directory, a pretrained name (lsst, lsst+euclid, hsc), "
        "or a baseline: " + "; ".join(f"'{k}': {v}" for k, v in BASELINES.items()),
    )
    source.add_argument(
        "--deblended",
        help="HDF5 file of another deblender's outputs "
        "('deblended' (N, C, H, W) electrons, with the test set's fingerprint)",
    )
    p.add_argument("--data", required=True, help="test set written by 'vaedeblend simulate'")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--label", default=None, help="name of this run in reports")
    p.add_argument(
        "--limit", type=positive_int, default=None, help="evaluate the first N stamps only"
    )
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_evaluate)

    s = sub.add_parser(
        "shear-bias",
        help="shear bias of a deblender from the five calibration "
        "sets written by 'vaedeblend simulate --calibration'",
    )
    s.add_argument("--model", required=True, help="model directory, pretrained name, or 'truth'")
    s.add_argument(
        "--data",
        required=True,
        help="the --out given to simulate --calibration (OUT_g0.h5 ... OUT_g2m.h5 are read)",
    )
    s.add_argument("--out", required=True, help="directory for shear_bias.json")
    s.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamplings (0: analytic)")
    s.add_argument("--batch-size", type=positive_int, default=256)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_shear_bias)

    c = sub.add_parser("compare", help="put several evaluations side by side")
    c.add_argument("runs", nargs="+", help="report directories written by 'evaluate'")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_compare)


def resolve_model(name: str, device: str = "cpu", batch_size: int = 256):
    """A model directory, or the name of a model shipped with the package."""
    from vaedeblend.models.api import load_model

    if Path(name).exists():
        return load_model(name, device=device, batch_size=batch_size)
    from vaedeblend.pretrained import PRETRAINED, load_pretrained

    if name in PRETRAINED:
        return load_pretrained(name, device=device, batch_size=batch_size)
    raise FileNotFoundError(
        f"model {name!r} is neither a directory nor a pretrained name ({', '.join(PRETRAINED)})"
    )


def run_model(model_name: str, data, limit: int | None, batch_size: int, device: str):
    """(N, C, H, W) outputs of a model or baseline on the test set's blends, electrons."""
    index = slice(0, limit)
    if model_name == "truth":
        return data.read("target", index)
    blends = data.read("blend", index)
    if model_name == "none":
        return blends
    model = resolve_model(model_name, device, batch_size)
    return model.deblend(blends, bands=data.band_ids)


def cmd_evaluate(args) -> int:
    from vaedeblend.dataset import open_dataset
    from vaedeblend.evaluation import evaluate_dataset

    label = args.label or Path(args.model or args.deblended).name
    with open_dataset(args.data) as data:
        if args.model:
            output = run_model(args.model, data, args.limit, args.batch_size, args.device)
        else:
            output = args.deblended
        metrics = evaluate_dataset(data, output, args.out, label=label, limit=args.limit)
    print(headline_table([metrics]))
    print(f"report: {Path(args.out) / 'summary.md'}")
    return 0


def headline_table(runs: list[dict]) -> str:
    """A short text table of the headline numbers of several evaluations."""
    keys = [
        ("m", "m (KSB)"),
        ("binned_abs_median_delta_abs_e", "binned |med d|e||"),
        ("binned_abs_median_delta_mag", "binned |med dmag|"),
        ("median_abs_delta_abs_e", "median |d|e||"),
        ("median_abs_delta_mag", "median |dmag|"),
    ]
    rows = [f"{'run':<24}" + "".join(f"{title:>20}" for _, title in keys)]
    for metrics in runs:
        head = metrics.get("headline", {})
        cells = [head.get(k) for k, _ in keys]
        rows.append(
            f"{metrics.get('label', '?'):<24}"
            + "".join(
                f"{v:>20.4f}" if isinstance(v, float) and np.isfinite(v) else f"{'-':>20}"
                for v in cells
            )
        )
    return "\n".join(rows)


def cmd_shear_bias(args) -> int:
    """Shear bias m, c of the model's outputs (KSB, reference band) from the calibration sets,
    next to that of the noiseless targets (KSB's own bias on these galaxies)."""
    from vaedeblend.cli import CALIBRATION_SHEARS
    from vaedeblend.dataset import open_dataset
    from vaedeblend.evaluation import shear_bias_from_images
    from vaedeblend.evaluation._io import write_json_atomic

    stem = Path(args.data)
    outputs, targets = {}, {}
    for label, shear in CALIBRATION_SHEARS.items():
        with open_dataset(stem.with_name(f"{stem.stem}_{label}{stem.suffix or '.h5'}")) as data:
            ref = data.band_ids.index(data.meta["reference_band"])
            psf, scale = data.psf[ref], float(data.pixel_scales_arcsec[ref])
            outputs[shear] = run_model(args.model, data, None, args.batch_size, args.device)[:, ref]
            targets[shear] = data.read("target")[:, ref]
    result = {}
    for name, images in (("output", outputs), ("noiseless_target", targets)):
        bias, failures = shear_bias_from_images(images, psf, scale, n_bootstrap=args.bootstrap)
        result[name] = {**bias.to_dict(), "failures": failures}
    result["definition"] = (
        "shear bias from sets sheared by (0,0), (+-g,0), (0,+-g) with the "
        "same galaxies and noise (KSB); not the ellipticity bias m"
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(args.out) / "shear_bias.json", result)
    for name, r in result.items():
        if isinstance(r, dict):
            print(
                f"{name:>18}: m = {r['m']:+.4f} +- {r['m_err']:.4f}, "
                f"c = {r['c']:+.5f} +- {r['c_err']:.5f} (N = {r['n_used']})"
            )
    return 0


def cmd_compare(args) -> int:
    from vaedeblend.evaluation import compare_runs, load_metrics

    compare_runs(args.runs, args.out)
    print(headline_table([load_metrics(r) for r in args.runs]))
    print(f"comparison: {args.out}")
    return 0
