"""``vaedeblend deblend``: detect and deblend every galaxy of a field (FITS images).

    vaedeblend deblend lsst_*.fits euclid_*.fits --model lsst+euclid --out deblended/

Writes ``catalog.fits`` (and ``.ecsv``, ``.parquet`` with pyarrow), ``models.fits``,
``residual.fits`` and ``stamps.fits`` into ``--out``, all or nothing; see docs/field_mode.md.
"""

from __future__ import annotations

from vaedeblend.argtypes import positive_int


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
    p.set_defaults(func=cmd_deblend)


def cmd_deblend(args) -> int:
    """Run field mode from parsed arguments; errors are raised (the CLI turns them into exit
    code 2)."""
    from vaedeblend.fieldmode import FieldInputError, deblend_field

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
    try:
        result = deblend_field(
            args.images,
            args.model,
            bands=args.bands,
            variance=_files(args.variance),
            weight=_files(args.weight),
            mask=_files(args.mask),
            psf=_files(args.psf),
            gain=args.gain,
            image_zeropoint_mag=args.zero_point,
            depth_preset=args.depth,
            pixel_scale_arcsec=args.pixel_scale,
            reference_band=args.reference_band,
            max_iterations=args.max_iterations,
            background=args.background,
            tile_size=args.tile_size,
            workers=args.workers,
            scheduler=args.scheduler,
            device=args.device,
            out=args.out,
            overwrite=args.overwrite,
            progress=not args.quiet,
            **overrides,
        )
    except FileExistsError as err:
        raise FieldInputError(str(err)) from err
    cat = result.catalog
    per_iteration = {int(i): int((cat["iteration"] == i).sum()) for i in set(cat["iteration"])}
    print(f"deblended {len(cat)} galaxies (per iteration: {per_iteration}); wrote {args.out}")
    return 0
