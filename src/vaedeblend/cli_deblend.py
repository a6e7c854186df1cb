"""``vaedeblend deblend``: detect and deblend every galaxy of a field (FITS images).

    vaedeblend deblend lsst_*.fits euclid_*.fits --model lsst+euclid --out deblended/

Writes ``catalog.fits`` (and ``.ecsv``, ``.parquet`` with pyarrow), ``models.fits``,
``residual.fits`` and ``stamps.fits`` into ``--out``, all or nothing; see docs/field_mode.md.
"""

from __future__ import annotations

from vaedeblend.argtypes import positive_int
from vaedeblend.cli_evaluate import add_refine_arguments, check_refine_flags, refine_settings


def _list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _files(values: list[str] | None) -> list[str | None] | None:
    """Companion files, one per image file; ``none`` leaves an image without one."""
    if values is None:
        return None
    return [None if v.lower() == "none" else v for v in values]


def add_arguments(sub) -> None:
    """Register the ``deblend`` sub-command on an argparse sub-parser collection."""
    p = sub.add_parser("deblend", help="detect and deblend the galaxies of a field (FITS)")
    p.add_argument("images", nargs="+", help="FITS images: one per band, or (C, H, W) cubes")
    p.add_argument(
        "--model", required=True, help="'lsst', 'lsst+euclid', 'hsc' (shipped) or a model directory"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--bands",
        type=_list,
        default=None,
        help="band ids of all image planes in file order, comma-separated (default: the "
        "BAND / BAND1.. keywords); short names (u,g,r or VIS) stand for the model's band "
        "of that name (lsst_u, euclid_vis) when only one matches",
    )
    for name, what in (
        ("variance", "noise variance maps (image units squared)"),
        ("weight", "inverse-variance maps"),
        ("mask", "bad-pixel masks (non-zero = bad)"),
        ("psf", "PSF images"),
    ):
        p.add_argument(
            f"--{name}",
            nargs="+",
            default=None,
            help=f"{what}, one file per image file in the same order ('none' to skip one); "
            f"default: a {name.upper()} extension of the image file",
        )
    p.add_argument(
        "--gain",
        type=float,
        default=None,
        help="electrons per image unit (images in ADU); default: images in electrons",
    )
    p.add_argument(
        "--zero-point",
        type=float,
        default=None,
        help="calibrated images (instead of --gain): AB magnitude of one image unit, e.g. 27 "
        "for HSC coadds, 31.4 for nJy; the gain is that of the depth the model was trained for",
    )
    p.add_argument(
        "--depth",
        choices=["paper", "survey"],
        default=None,
        help="preset whose depth --zero-point assumes (default: paper for LSST and Euclid "
        "bands, survey for the others)",
    )
    p.add_argument(
        "--pixel-scale",
        type=float,
        default=None,
        help="arcsec per pixel for files with neither WCS nor PIXSCALE",
    )
    p.add_argument(
        "--reference-band",
        default=None,
        help="band whose grid detection uses (default lsst_r, hsc_r, ...)",
    )
    p.add_argument(
        "--max-iterations",
        type=positive_int,
        default=3,
        help="detect / deblend / subtract passes (default 3)",
    )
    p.add_argument(
        "--sources",
        default=None,
        help="catalogue of the galaxies to deblend (FITS, ECSV or CSV; columns ra, dec in "
        "degrees or x, y in 0-based reference-band pixels): the first pass deblends these "
        "positions instead of detecting; with --refine each stamp fits its catalogue "
        "neighbours at their positions",
    )
    p.add_argument("--nsigma", type=float, default=None, help="detection threshold (sigma)")
    p.add_argument(
        "--min-area", type=positive_int, default=None, help="detection minimum area (pixels)"
    )
    p.add_argument(
        "--match-radius",
        type=float,
        default=None,
        help="re-detection radius, reference pixels (default: half the PSF FWHM)",
    )
    p.add_argument(
        "--model-error",
        type=float,
        default=None,
        help="fraction of the models counted as noise in the residual (default 0.1)",
    )
    p.add_argument(
        "--min-delta-chi2",
        type=float,
        default=None,
        help="chi^2 drop a source found after the first pass must bring to the residual to be "
        "kept (default 25)",
    )
    p.add_argument(
        "--background",
        default="none",
        choices=["none", "sep"],
        help="'none': images are sky-subtracted; 'sep': subtract sep's background",
    )
    p.add_argument(
        "--tile-size", type=positive_int, default=1024, help="tile side, reference pixels"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Dask worker processes when there are several tiles (default: all "
        "cores; 0: in this process)",
    )
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=positive_int, default=None, help="stamps per forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier run in --out (refused otherwise)",
    )
    add_refine_arguments(p)
    p.set_defaults(func=cmd_deblend)


def cmd_deblend(args) -> int:
    """Run field mode from parsed arguments; errors are raised (the CLI turns them into exit
    code 2)."""
    from vaedeblend.fieldmode import Execution, FieldInputError, deblend_field, make_settings

    overrides = {
        k: v
        for k, v in (
            ("nsigma", args.nsigma),
            ("min_area", args.min_area),
            ("match_radius_pixels", args.match_radius),
            ("model_error", args.model_error),
            ("batch_size", args.batch_size),
            ("min_delta_chi2", args.min_delta_chi2),
        )
        if v is not None
    }
    settings = make_settings(
        posterior=args.posterior,
        max_iterations=args.max_iterations,
        background=args.background,
        reference_band=args.reference_band,
        **overrides,
    )
    execution = Execution(
        tile_pixels=args.tile_size,
        workers=args.workers,
        scheduler=args.scheduler,
        device=args.device,
        progress=not args.quiet,
    )
    model = args.model
    check_refine_flags(args)
    if args.refine:  # each galaxy's stamp fitted jointly with the neighbours found in it
        from vaedeblend.pretrained import resolve_model
        from vaedeblend.refinement import FIELD_REFINEMENT, refined

        field_refinement = refine_settings(args, FIELD_REFINEMENT)
        model = refined(resolve_model(model, args.device), args.prior, field_refinement,
                        posterior=args.posterior)  # fmt: skip
    try:
        result = deblend_field(
            read_images(args),
            model,
            settings=settings,
            execution=execution,
            out=args.out,
            overwrite=args.overwrite,
            sources=args.sources,
        )
    except FileExistsError as err:
        raise FieldInputError(str(err)) from err
    cat = result.catalog
    per_iteration = {int(i): int((cat["iteration"] == i).sum()) for i in set(cat["iteration"])}
    print(f"deblended {len(cat)} galaxies (per iteration: {per_iteration}); wrote {args.out}")
    return 0


def read_images(args):
    """The FITS images of the command line as a ``FieldImages``, calibrated to electrons (a
    ``--gain``, or a ``--zero-point`` read at the depth the model was trained for)."""
    from vaedeblend.fieldmode import FieldInputError, apply_image_zeropoint, read_fits

    if args.zero_point is not None and args.gain is not None:
        raise FieldInputError("give either a gain or an image zero point, not both")
    field = read_fits(
        args.images,
        bands=args.bands,
        variance=_files(args.variance),
        weight=_files(args.weight),
        mask=_files(args.mask),
        psf=_files(args.psf),
        # calibrated images are read as they are: the gain is set per band below
        gain=1.0 if args.zero_point is not None else args.gain,
        pixel_scale_arcsec=args.pixel_scale,
    )
    if args.zero_point is not None:
        apply_image_zeropoint(field, float(args.zero_point), args.depth)
    return field
