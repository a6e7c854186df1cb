"""The ``vaedeblend`` command line: simulate, train, evaluate, compare, deblend, demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vaedeblend.argtypes import positive_int


def _pair(text: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected two numbers 'a,b', got {text!r}") from err
    return a, b


def add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="simulate isolated galaxies, blends or calibration sets")
    p.add_argument("--preset", default="paper", choices=["paper", "survey"])
    p.add_argument(
        "--instruments",
        default="lsst+euclid",
        help="'lsst', 'lsst+euclid', or surveycodex names joined by '+' (hsc, des, ...)",
    )
    p.add_argument(
        "--kind",
        default="blended",
        choices=["isolated", "blended", "field"],
        help="stamps of isolated galaxies or blends, or a field (FITS per band)",
    )
    p.add_argument("--field-size", type=float, default=60.0, help="field side, arcsec")
    p.add_argument("--density", type=float, default=40.0, help="field galaxies per arcmin^2")
    p.add_argument("--centring", default="centred", choices=["centred", "uniform", "detected"])
    p.add_argument("--n", type=positive_int, required=True, help="number of stamps")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument(
        "--catalog", default="synthetic", choices=["synthetic", "cosmos", "catsim", "real"]
    )
    p.add_argument("--catalog-path", default=None, help="file or directory of a real catalog")
    p.add_argument(
        "--catalog-size",
        type=positive_int,
        default=100_000,
        help="rows of the synthetic catalog (drawn with --catalog-seed)",
    )
    p.add_argument("--catalog-seed", type=int, default=None, help="default: --seed")
    p.add_argument("--mag-limit", type=float, default=25.2, help="F814W AB limit of the catalog")
    p.add_argument(
        "--stamp-size", type=positive_int, default=64, help="pixels per side, every channel"
    )
    p.add_argument("--noise", default="poisson", choices=["poisson", "gaussian"])
    p.add_argument("--shear", type=_pair, default=(0.0, 0.0), help="g1,g2 applied to every galaxy")
    p.add_argument(
        "--calibration",
        action="store_true",
        help="write the five shear-calibration sets (0,0), (+-0.01,0), (0,+-0.01) "
        "with the same galaxies and Gaussian noise, as OUT_<label>.h5",
    )
    p.add_argument(
        "--count-probabilities",
        default="0.25,0.25,0.25,0.25",
        help="probabilities of 1, 2, ... galaxies per blend",
    )
    p.add_argument(
        "--annulus",
        type=_pair,
        default=(0.325, 1.5),
        help="inner,outer radius (arcsec) where neighbours are placed",
    )
    p.add_argument(
        "--keep-undetected",
        action="store_true",
        help="detected centring: keep samples without a peak (flagged) instead of "
        "redrawing them (always counted in the metadata)",
    )
    p.add_argument("--store-neighbours", action="store_true")
    p.add_argument("--shard-size", type=positive_int, default=250)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local Dask worker processes (default: all cores; 0: in this process)",
    )
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_simulate)


# Largest stamp side accepted (pixels): a (C, S, S) float32 stamp of 10 channels at 1024 is
# 40 MB, and each sample holds several; beyond that a stamp is really a field.
MAX_STAMP_SIZE = 1024


def simulation_spec(args, shear=None):
    from vaedeblend.instruments import make_setup
    from vaedeblend.simulation import CatalogSpec, SimSpec
    from vaedeblend.simulation.blends import BlendConfig

    setup = make_setup(args.preset, args.instruments, args.stamp_size)
    probabilities = tuple(float(x) for x in args.count_probabilities.split(","))
    config = BlendConfig(
        kind=args.kind,
        centring=args.centring,
        count_probabilities=probabilities,
        annulus_arcsec=args.annulus,
        noise=args.noise,
        shear=shear or args.shear,
        keep_undetected=args.keep_undetected,
    )
    catalog_seed = args.seed if args.catalog_seed is None else args.catalog_seed
    catalog = CatalogSpec(
        args.catalog, args.catalog_path, catalog_seed, args.catalog_size, args.mag_limit
    )
    return SimSpec(setup.to_json(), catalog, config, args.n, args.seed, args.store_neighbours)


def cmd_simulate(args) -> int:
    from vaedeblend.simulation import CALIBRATION_SHEARS, calibration_path, simulate_dataset

    if args.stamp_size > MAX_STAMP_SIZE:
        raise ValueError(
            f"--stamp-size {args.stamp_size} is above {MAX_STAMP_SIZE} pixels: one stamp "
            "alone would take gigabytes; use --kind field for large images"
        )
    out = Path(args.out)
    if args.kind == "field":
        return simulate_field_command(args, out)
    if args.calibration:
        if args.centring == "detected":
            raise ValueError(
                "calibration sets need 'centred' or 'uniform' centring "
                "(a detection would differ between the sheared copies)"
            )
        args.noise = "gaussian"
        targets = {
            label: (calibration_path(out, label), g) for label, g in CALIBRATION_SHEARS.items()
        }
    else:
        targets = {"": (out, None)}
    for path, shear in targets.values():
        spec = simulation_spec(args, shear)
        simulate_dataset(
            spec,
            path,
            shard_size=args.shard_size,
            scheduler=args.scheduler,
            workers=args.workers,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
        print(
            f"wrote {path} ({spec.n} stamps, {spec.setup.n_channels} channels, "
            f"fingerprint {spec.fingerprint[:12]})"
        )
    return 0


def simulate_field_command(args, out: Path) -> int:
    """``--kind field``: one field per seed (``--n`` is ignored), written to the directory OUT."""
    from vaedeblend.catalogs import load_catalog
    from vaedeblend.instruments import make_setup
    from vaedeblend.simulation.field import FieldConfig, simulate_field

    setup = make_setup(args.preset, args.instruments, args.stamp_size)
    catalog_seed = args.seed if args.catalog_seed is None else args.catalog_seed
    catalog = load_catalog(
        args.catalog,
        args.catalog_path,
        seed=catalog_seed,
        n=args.catalog_size,
        mag_limit_f814w=args.mag_limit,
    )
    config = FieldConfig(args.field_size, args.density, noise=args.noise)
    path = simulate_field(setup, catalog, config, args.seed, out)
    print(f'wrote field {path} ({args.field_size}" wide, {len(setup.bands)} bands)')
    return 0


def add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="simulate fresh blends, deblend them with the shipped models, evaluate, print a table",
    )
    p.add_argument("--seed", type=int, default=20261123, help="test seed, never used in training")
    p.add_argument("--n", type=int, default=300, help="blends per instrument choice")
    p.add_argument("--out", default="vaedeblend-demo")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from vaedeblend.demo import run_demo

    return run_demo(seed=args.seed, n=args.n, out=Path(args.out))


def build_parser() -> argparse.ArgumentParser:
    from vaedeblend._version import __version__

    parser = argparse.ArgumentParser(prog="vaedeblend", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vaedeblend {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_simulate(sub)
    add_demo(sub)
    from vaedeblend import cli_baseline, cli_deblend, cli_evaluate, cli_refine, cli_train

    for module in (cli_train, cli_evaluate, cli_deblend, cli_baseline, cli_refine):
        module.add_arguments(sub)
    return parser


DEBUG_ENV = "VAEDEBLEND_DEBUG"


def main(argv: list[str] | None = None) -> int:
    """Run one command; any error ends as one line on stderr and exit code 2 (set
    ``VAEDEBLEND_DEBUG=1`` for the traceback instead)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"vaedeblend {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure becomes one line, see docstring
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"vaedeblend {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    """The error's message on one line; library errors outside the expected kinds (bad files
    read by h5py, safetensors, astropy) are named by their type, so that the user can tell a
    corrupt file from a wrong argument."""
    text = " ".join(str(err).split()) or "(no message)"
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    expected = (ValueError, KeyError, OSError, MemoryError)
    if not isinstance(err, expected):
        text = f"{type(err).__name__}: {text}"
    if isinstance(err, MemoryError):
        text = "not enough memory" + (f" ({text})" if str(err) else "") + "; use smaller sizes"
    if len(text) > MAX_MESSAGE:  # a library's message can list pages of options
        text = text[: MAX_MESSAGE - 3] + "..."
    return text + f" (set {DEBUG_ENV}=1 for the traceback)" * (not isinstance(err, expected))


# Longest error message printed (characters); the traceback has the rest.
MAX_MESSAGE = 300


if __name__ == "__main__":
    sys.exit(main())
