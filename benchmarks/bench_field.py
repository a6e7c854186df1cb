"""Field mode on a large image: memory stays bounded while tiles run over memory-mapped FITS.

Builds a mostly-empty LSST field (6 bands, ``--size`` pixels a side, 0.2"/px, paper-preset sky
noise) directly in memory-mapped FITS files, plants ``--galaxies`` exponential galaxies at known
positions, runs ``deblend_field`` over tiles, and reports the peak resident memory of this
process (and of its child processes, with ``--workers``), the run time and how many planted
galaxies were found once. The issue asks for a field larger than 4096 x 4096 pixels within 4 GB.

    python benchmarks/bench_field.py --size 4608 --galaxies 300 [--model lsst] [--record]

``--model stub`` (the default when no shipped LSST model is installed) stands in a window
deblender (the stamp inside 1"), so the figure measures the field machinery; ``--model lsst`` or
a directory runs a real network. ``--record`` writes the section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import galsim
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from vaedeblend.fieldmode import Execution, deblend_field, make_settings  # noqa: E402
from vaedeblend.fieldmode.outputs import create_image_file  # noqa: E402
from vaedeblend.instruments import make_setup  # noqa: E402
from vaedeblend.simulation.field import field_wcs  # noqa: E402

ROWS = 512  # rows of noise drawn at a time
GALAXY_STAMP = 48  # pixels
MIN_SEPARATION_PIXELS = 40
# MADNESS galaxies per second on a laptop CPU, from its 1.9-1.3 s per galaxy (anchors.md, quoted)
MADNESS_PER_S = (1 / 1.9, 1 / 1.3)


class WindowModel:
    """A stand-in deblender for LSST u..y at 0.2": the stamp inside ``radius_arcsec`` (wide
    enough to hold the planted galaxies whole, so that nothing is left to re-detect)."""

    def __init__(self, stamp_size: int = 32, radius_arcsec: float = 2.5):
        self.band_ids = [b.band_id for b in make_setup("paper", "lsst").bands]
        self.stamp_size = stamp_size
        self.config = {"pixel_scales_arcsec": [0.2] * len(self.band_ids)}
        self.radius_arcsec = radius_arcsec
        self.path = "window stub"

    def deblend(self, stamps, bands=None, context=None, batch_size=None):
        s = self.stamp_size
        yy, xx = np.mgrid[:s, :s] - (s - 1) / 2
        return np.asarray(stamps) * (np.hypot(xx, yy) * 0.2 <= self.radius_arcsec)


def _positions(size: int, n: int, rng) -> np.ndarray:
    """(n, 2) 0-based pixel positions at least MIN_SEPARATION_PIXELS apart, away from edges."""
    out: list[np.ndarray] = []
    while len(out) < n:
        p = rng.uniform(GALAXY_STAMP, size - GALAXY_STAMP, 2)
        if all(np.hypot(*(p - q)) > MIN_SEPARATION_PIXELS for q in out):
            out.append(p)
    return np.array(out).reshape(n, 2)


def make_big_field(directory: Path, size: int, n_galaxies: int, noise: bool, seed: int = 0):
    """Write one FITS per LSST band (size x size float32, memory-mapped while filled) and
    return (files, planted (n, 2) positions)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    planted = _positions(size, n_galaxies, rng)
    psf = galsim.Kolmogorov(fwhm=0.65)
    files = []
    for band in make_setup("paper", "lsst").bands:
        header = field_wcs(band.pixel_scale_arcsec, size).to_header()
        header["BAND"], header["BUNIT"] = band.band_id, "electron"
        header["SKYLEVEL"] = band.sky_level_electrons
        header["ZP_AB"], header["EXPTIME"] = band.zeropoint_mag, band.exposure_s
        path = directory / f"{band.band_id}.fits"
        (image,) = create_image_file(path, [((size, size), header)])
        if noise:
            sigma = np.sqrt(band.sky_level_electrons)
            for y0 in range(0, size, ROWS):
                rows = slice(y0, min(size, y0 + ROWS))
                image[rows] = rng.normal(0.0, sigma, (rows.stop - rows.start, size))
        flux = float(band.mag_to_electrons(22.0))
        for x, y in planted:
            x0, y0 = int(x) - GALAXY_STAMP // 2, int(y) - GALAXY_STAMP // 2
            stamp = galsim.ImageF(GALAXY_STAMP, GALAXY_STAMP, scale=band.pixel_scale_arcsec)
            offset = (x - x0 - (GALAXY_STAMP - 1) / 2, y - y0 - (GALAXY_STAMP - 1) / 2)
            gal = galsim.Exponential(half_light_radius=0.4, flux=flux).shear(g1=0.1)
            galsim.Convolve(gal, psf).drawImage(image=stamp, offset=offset)
            image[y0 : y0 + GALAXY_STAMP, x0 : x0 + GALAXY_STAMP] += stamp.array
        image.flush()
        del image
        files.append(path)
    return files, planted


def run(
    directory: Path,
    size: int = 4608,
    n_galaxies: int = 300,
    tile_size: int = 1024,
    workers: int = 0,
    model=None,
    noise: bool = False,
):
    """Build the field under ``directory`` and deblend it into ``directory/out``; returns
    (FieldResult, planted positions, seconds spent deblending)."""
    files, planted = make_big_field(Path(directory) / "field", size, n_galaxies, noise)
    t0 = time.perf_counter()
    result = deblend_field(
        files,
        model or WindowModel(),
        settings=make_settings(max_iterations=2),
        execution=Execution(tile_pixels=tile_size, workers=workers),
        out=Path(directory) / "out",
    )
    return result, planted, time.perf_counter() - t0


def _peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its waited-for children, MiB (Linux)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4608)
    parser.add_argument("--galaxies", type=int, default=300)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--model", default=None, help="'stub', 'lsst' or a directory")
    parser.add_argument("--no-noise", action="store_true")
    parser.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--record", action="store_true", help="write RESULTS.md's section")
    args = parser.parse_args()
    model = WindowModel() if args.model in (None, "stub") else args.model
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result, planted, seconds = run(
            Path(tmp),
            args.size,
            args.galaxies,
            args.tile_size,
            args.workers,
            model,
            noise=not args.no_noise,
        )
        cat = result.catalog
        from scipy.spatial import cKDTree

        d, _ = cKDTree(np.column_stack([cat["x"], cat["y"]])).query(planted)
        found = int((d < 1.0).sum())
    own, children = _peak_rss_mb()
    rate = len(cat) / seconds
    body = (
        f"| field | bands | tiles | model | galaxies planted / found within 1 px / catalog rows "
        f"| deblending time (s) | galaxies/s | ratio to MADNESS (quoted, 0.53-0.77/s) "
        f"| peak RSS this process (MiB) | ratio to the 4 GiB limit | peak RSS of a child (MiB) |\n"
        f"|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {args.size} x {args.size} | 6 | {args.tile_size} px, workers {args.workers} "
        f"| {args.model or 'stub'} | {len(planted)} / {found} / {len(cat)} "
        f"| {seconds:.1f} | {rate:.1f} | {rate / MADNESS_PER_S[1]:.0f}-{rate / MADNESS_PER_S[0]:.0f} "
        f"| {own:.0f} | {own / 4096:.2f} | {children:.0f} |\n\n"
        f"Torch threads: {torch.get_num_threads()}. "
        "The deblending time excludes building the field; galaxies/s counts catalog rows over it. "
        "MADNESS's 1.3-1.9 s per galaxy on a laptop CPU is quoted from anchors.md (not run here)."
    )
    from results import report

    report("Field mode, large image", body, args.record)


if __name__ == "__main__":
    main()
