"""``vaedeblend evaluate`` and ``vaedeblend compare``: one code path for every deblender."""

from __future__ import annotations

from pathlib import Path

from vaedeblend._deprecated import moved_names
from vaedeblend.argtypes import non_negative_float, positive_float, positive_int

# Library pieces that lived here before (issue 14), importable from here for one release; the
# import is deferred so that building the command line stays light.
_MOVED = {
    "BASELINES": "vaedeblend.evaluation.runner",
    "headline_table": "vaedeblend.evaluation.runner",
    "run_model": "vaedeblend.evaluation.runner",
    "resolve_model": "vaedeblend.pretrained",
}


__getattr__ = moved_names(__name__, _MOVED)


def add_arguments(sub) -> None:
    p = sub.add_parser("evaluate", help="measure a deblender on a simulated test set")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        help="model directory, a pretrained name (lsst, lsst+euclid, hsc; per centring of the "
        "target: lsst-centred, lsst-uniform, lsst+euclid-centred), or a trivial row: "
        "'none' (the blend itself, no deblending) or 'truth' (the noiseless target)",
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
    add_refine_arguments(p)
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


def add_refine_arguments(p) -> None:
    """--refine, --prior, --flux-sigma, --central-prior, --flux-from-data, --pixels-from-data
    and --posterior (evaluate, deblend)."""
    p.add_argument(
        "--refine",
        action="store_true",
        help="refine the model's outputs: all detected galaxies of each stamp fitted jointly "
        "through the decoder under the latent prior (slower; see docs/refinement.md)",
    )
    p.add_argument(
        "--prior",
        default=None,
        help="latent prior directory for --refine (default: the model's own, 'prior/' beside "
        "it; shipped models carry one). Write one with 'vaedeblend prior'",
    )
    p.add_argument(
        "--flux-sigma",
        type=positive_float,
        default=None,
        help="with --refine: also fit each galaxy's flux in each band as a free scale, with a "
        "Gaussian prior of this width on its natural log (e.g. 0.1); helps galaxies the "
        "decoder draws too faint or too bright (docs/refinement.md)",
    )
    p.add_argument(
        "--central-prior",
        choices=["flow", "deblender", "fixed"],
        default=None,
        help="with --refine: the central galaxy's latent prior, the learned flow (deblend's "
        "default), the deblender's own q(z | stamp), which keeps the fit near the one-pass "
        "output, or 'fixed' (evaluate's default): the central galaxy stays the one-pass "
        "output and only its neighbours are fitted (docs/refinement.md)",
    )
    p.add_argument(
        "--flux-from-data",
        type=non_negative_float,
        default=None,
        metavar="MODEL_ERROR",
        help="with --refine: measure the central galaxy's flux in each band on the data, by a "
        "joint least-squares fit of every fitted galaxy's amplitude, the model's own flux "
        "given this fractional error as a prior (evaluate's default 0.05; deblend's 0: the "
        "model's flux; best with --central-prior fixed, docs/refinement.md)",
    )
    p.add_argument(
        "--pixels-from-data",
        type=non_negative_float,
        default=None,
        metavar="MODEL_ERROR",
        help="with --refine: each pixel of the central galaxy combines its model with its share "
        "of the observed electrons, weighted by the noise against this fractional model error "
        "(default 0.1; 0: the model's pixels): bright galaxies' shapes follow the data; "
        "fluxes are kept (docs/refinement.md)",
    )
    p.add_argument(
        "--posterior",
        action="store_true",
        help="with --refine: each galaxy's posterior 16/50/84 %% quantiles of its flux in "
        "every band and of e1, e2 (evaluate: posterior.npz and their coverage of the truth "
        "in the report; deblend: catalogue columns); about 1 s more per galaxy",
    )


def check_refine_flags(args) -> None:
    """--prior, --flux-sigma, --central-prior, --flux-from-data, --pixels-from-data and
    --posterior go with --refine."""
    for flag in ("prior", "flux_sigma", "central_prior", "flux_from_data", "pixels_from_data",
                 "posterior"):  # fmt: skip
        value = getattr(args, flag)
        given = value is not None and value is not False  # a 0 given is given
        if given and not args.refine:
            name = flag.replace("_", "-")
            raise ValueError(f"--{name} goes with --refine; give --refine too")


def refine_settings(args, recommended: dict | None = None):
    """The :class:`~vaedeblend.refinement.RefineSettings` the command-line flags ask for
    (None without --refine): ``recommended`` (default ``STAMP_REFINEMENT``) where a flag is
    not given, 0 switching the data's flux or pixels off."""
    if not args.refine:
        return None
    return settings_from_flags(
        args.central_prior, args.flux_sigma, args.flux_from_data, args.pixels_from_data,
        recommended,
    )  # fmt: skip


def settings_from_flags(central_prior, flux_sigma, flux_from_data, pixels_from_data,
                        recommended: dict | None = None):  # fmt: skip
    """RefineSettings from the refinement flags' values (None: not given, so
    ``recommended``'s, default ``STAMP_REFINEMENT``)."""
    from vaedeblend.refinement import STAMP_REFINEMENT, RefineSettings

    recommended = STAMP_REFINEMENT if recommended is None else recommended

    def given_or_recommended(name, value):
        value = recommended[name] if value is None else value
        return value or None  # 0 switches the option off

    return RefineSettings(
        flux_sigma=flux_sigma,
        central_prior=central_prior or recommended["central_prior"],
        flux_from_data=given_or_recommended("flux_from_data", flux_from_data),
        pixels_from_data=given_or_recommended("pixels_from_data", pixels_from_data),
    )


def cmd_evaluate(args) -> int:
    from vaedeblend.dataset import open_dataset
    from vaedeblend.evaluation import evaluate_dataset
    from vaedeblend.evaluation.runner import (
        headline_table,
        run_model,
        run_refined_with_posterior,
    )

    check_refine_flags(args)
    label = args.label or Path(args.model or args.deblended).name
    posterior = None
    with open_dataset(args.data) as data:
        if args.model and args.posterior:
            output, posterior = run_refined_with_posterior(
                args.model, data, args.limit, args.batch_size, args.device, args.prior,
                settings=refine_settings(args),
            )  # fmt: skip
        elif args.model:
            output = run_model(args.model, data, args.limit, args.batch_size, args.device,
                               refine=args.refine, prior=args.prior,
                               settings=refine_settings(args))  # fmt: skip
        else:
            if args.refine:
                raise ValueError("--refine refines a --model's outputs, not a --deblended file")
            output = args.deblended
        metrics = evaluate_dataset(
            data, output, args.out, label=label, limit=args.limit, posterior=posterior
        )
    print(headline_table([metrics]))
    print(f"report: {Path(args.out) / 'summary.md'}")
    return 0


def cmd_shear_bias(args) -> int:
    """Shear bias m, c of the model's outputs (KSB, reference band) from the calibration sets,
    next to that of the noiseless targets (KSB's own bias on these galaxies)."""
    from vaedeblend.dataset import open_dataset
    from vaedeblend.evaluation import shear_bias_from_images
    from vaedeblend.evaluation._io import write_json_atomic
    from vaedeblend.evaluation.runner import run_model
    from vaedeblend.simulation import CALIBRATION_SHEARS, calibration_path

    stem = Path(args.data)
    outputs, targets = {}, {}
    for label, shear in CALIBRATION_SHEARS.items():
        with open_dataset(calibration_path(stem, label)) as data:
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
    from vaedeblend.evaluation.runner import headline_table

    compare_runs(args.runs, args.out)
    print(headline_table([load_metrics(r) for r in args.runs]))
    print(f"comparison: {args.out}")
    return 0
