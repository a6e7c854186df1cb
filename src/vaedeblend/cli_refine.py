"""``vaedeblend prior --model MODEL --data ISOLATED.h5 --out DIR``: fit the latent prior that
``--refine`` uses, on a model's encoder means of isolated galaxies; ``--keep-flow PRIOR
--calibrate-on BLENDS.h5``: only re-measure an existing prior's calibration on blends."""

from __future__ import annotations

from vaedeblend.argtypes import non_negative_float, positive_float, positive_int


def add_arguments(sub) -> None:
    p = sub.add_parser(
        "prior",
        help="fit a model's latent prior (a normalising flow) for --refine",
        description="Encodes the isolated galaxies of --data with the model and fits a neural "
        "spline flow (zuko) to their latent means; writes model.safetensors + config.json.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="VAE (or deblender) directory, or a pretrained name (its VAE is used)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="isolated galaxies ('simulate --kind isolated')")
    source.add_argument(
        "--keep-flow",
        metavar="PRIOR",
        help="keep this prior's flow and decoder error (a directory, or 'model': the model's "
        "own) and only measure a new calibration (--calibrate-on, required)",
    )
    p.add_argument(
        "--add-calibration",
        action="store_true",
        help="with --keep-flow: keep the prior's calibrations and add this one for its "
        "refinement settings (posteriors pick the one measured with theirs)",
    )
    p.add_argument("--out", required=True, help="prior directory to write")
    p.add_argument("--limit", type=positive_int, default=None, help="the first N stamps only")
    p.add_argument("--steps", type=positive_int, default=2000, help="Adam steps of the fit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--calibrate-on",
        default=None,
        metavar="BLENDS.h5",
        help="simulated blends ('simulate --kind blended', another seed than any test set) on "
        "which the refined model is compared with the truth; the posteriors then carry that "
        "error, bias included (slow: 0.3-0.5 s per blend)",
    )
    p.add_argument(
        "--calibrate-limit",
        type=positive_int,
        default=2000,
        help="the first N blends of --calibrate-on (default 2000: about 400 per S/N bin)",
    )
    p.add_argument(
        "--central-prior",
        choices=("flow", "deblender", "fixed"),
        default=None,
        help="with --calibrate-on: the refinement the calibration is measured with (as "
        "evaluate/deblend --refine --central-prior, default fixed); posteriors under another "
        "are refused",
    )
    p.add_argument(
        "--flux-sigma",
        type=positive_float,
        default=None,
        help="with --calibrate-on: as evaluate/deblend --refine --flux-sigma",
    )
    p.add_argument(
        "--flux-from-data",
        type=non_negative_float,
        default=None,
        metavar="MODEL_ERROR",
        help="with --calibrate-on: as evaluate/deblend --refine --flux-from-data",
    )
    p.add_argument(
        "--pixels-from-data",
        type=non_negative_float,
        default=None,
        metavar="MODEL_ERROR",
        help="with --calibrate-on: as evaluate/deblend --refine --pixels-from-data",
    )
    p.set_defaults(func=cmd_prior)


def cmd_prior(args) -> int:
    from pathlib import Path

    from vaedeblend.pretrained import PRETRAINED, load_pretrained, resolve_model
    from vaedeblend.refinement import PriorSettings, fit_model_prior

    flags = (args.central_prior, args.flux_sigma, args.flux_from_data, args.pixels_from_data)
    if flags != (None,) * 4 and args.calibrate_on is None:
        raise ValueError(
            "--central-prior, --flux-sigma, --flux-from-data and --pixels-from-data set the "
            "calibration's refinement: give --calibrate-on"
        )
    if args.add_calibration and args.keep_flow is None:
        raise ValueError("--add-calibration adds to a kept prior's calibrations: give --keep-flow")
    if args.keep_flow is not None:
        return _recalibrate(args)

    # a shipped name: its VAE, whose encoder was trained on isolated galaxies (the deblender
    # shares its decoder, so the prior serves both)
    shipped = args.model in PRETRAINED and not Path(args.model).exists()
    model = load_pretrained(args.model, "vae") if shipped else resolve_model(args.model)
    # the decoder's error is measured with the model refinement starts from: the deblender
    error_model = load_pretrained(args.model) if shipped else model
    report = fit_model_prior(
        model, args.data, args.out, args.limit, PriorSettings(steps=args.steps, seed=args.seed),
        error_model=error_model, calibration=args.calibrate_on,
        calibration_limit=args.calibrate_limit,
        refine_settings=_calibration_refinement(args),
    )  # fmt: skip
    flow, gauss = report["val_log_prob_flow"], report["val_log_prob_gaussian"]
    normal = report["val_log_prob_standard_normal"]
    print(
        f"wrote {args.out}: {report['n_train']} training latents; held-out log-density "
        f"{flow:.2f} nats per galaxy (full-covariance Gaussian {gauss:.2f}, N(0, I) {normal:.2f})"
    )
    return 0


def _recalibrate(args) -> int:
    """``--keep-flow``: a new calibration on ``--calibrate-on`` for an existing prior."""
    from vaedeblend.pretrained import resolve_model
    from vaedeblend.refinement.fit import calibrate_prior, default_prior_dir

    if args.calibrate_on is None:
        raise ValueError("--keep-flow only re-measures the calibration: give --calibrate-on")
    model = resolve_model(args.model)  # the deblender refinement starts from
    prior_dir = default_prior_dir(model) if args.keep_flow == "model" else args.keep_flow
    summary = calibrate_prior(model, prior_dir, args.calibrate_on, args.out, args.calibrate_limit,
                              _calibration_refinement(args), add=args.add_calibration)  # fmt: skip
    print(
        f"wrote {args.out}: the prior of {prior_dir} with a calibration on {summary['n']} "
        f"refined blends of {args.calibrate_on}"
        + (" added to its others" if args.add_calibration else "")
    )
    return 0


def _calibration_refinement(args):
    """The RefineSettings a calibration is measured with: those ``--refine`` runs with
    the same flags (the recommended ones where a flag is not given)."""
    from vaedeblend.cli_evaluate import settings_from_flags

    return settings_from_flags(
        args.central_prior, args.flux_sigma, args.flux_from_data, args.pixels_from_data
    )
