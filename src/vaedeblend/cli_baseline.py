"""``vaedeblend baseline NAME --data TEST.h5 --out OUT.h5``: run a deblender people use today
(``sep``, ``photutils``, ``scarlet2``, ``none``) on a test set and write the ``deblended`` file that
``vaedeblend evaluate --deblended`` measures."""

from __future__ import annotations

from vaedeblend.argtypes import positive_int


def add_arguments(sub) -> None:
    from vaedeblend.baselines import BASELINES, EXTRA

    p = sub.add_parser(
        "baseline",
        help="run a baseline deblender (sep, photutils, scarlet2, none) on a test set",
        description=f'Optional dependencies: pip install "vaedeblend[{EXTRA}]".',
    )
    p.add_argument("method", choices=list(BASELINES))
    p.add_argument("--data", required=True, help="test set written by 'vaedeblend simulate'")
    p.add_argument("--out", required=True, help="output HDF5 file ('deblended' (N, C, H, W))")
    p.add_argument("--limit", type=positive_int, default=None, help="the first N blends only")
    p.add_argument(
        "--true-centres",
        action="store_true",
        help="pick the central source by the target's true position (default: the stamp centre)",
    )
    p.add_argument(
        "--first-grid-only",
        action="store_true",
        help="scarlet2 on a multi-resolution set (LSST + Euclid): fit only the bands on the "
        "first channel's pixel grid (LSST); the other channels are written as zeros",
    )
    p.set_defaults(func=cmd_baseline)


def cmd_baseline(args) -> int:
    from vaedeblend.baselines import run_baseline

    options = {"first_grid_only": True} if args.first_grid_only else {}
    if options and args.method != "scarlet2":
        raise ValueError("--first-grid-only is a scarlet2 option")
    summary = run_baseline(
        args.method,
        args.data,
        args.out,
        limit=args.limit,
        true_centres=args.true_centres,
        **options,
    )
    print(
        f"wrote {args.out}: {summary['n']} blends by {summary['method']}, "
        f"{summary['seconds_per_blend']:.4f} s per blend"
    )
    return 0
