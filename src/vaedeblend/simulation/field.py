"""Simulated fields: a patch of sky in every band, each on its instrument's own pixel grid.

A field is a directory holding one FITS file per band (``<band_id>.fits``: the noisy image in
electrons, sky subtracted, with a TAN WCS centred on the same sky position for every band, and
the PSF image in a ``PSF`` extension), the noiseless images (``<band_id>_noiseless.fits``), and
``truth.fits``, one row per galaxy with its sky and pixel positions, per-band fluxes, intrinsic
ellipticity and observed shape (``g1_observed``, ``g2_observed``: adaptive moments of the
galaxy alone, noiseless and PSF-convolved, in the reference band, as the field catalogue
measures its ``e1``, ``e2``). The field-deblending code is tested against this truth.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from vaedeblend.instruments import Setup
from vaedeblend.measure import measure_shapes
from vaedeblend.simulation.noise import add_noise
from vaedeblend.simulation.render import Placement, StampRenderer, psf_images

FIELD_CENTRE_DEG = (150.1, 2.2)  # inside the COSMOS field, for realistic-looking headers


@dataclass(frozen=True)
class FieldConfig:
    """``size_arcsec``: side of the square field; ``density_per_arcmin2``: mean galaxy density
    (Poisson); ``stamp_size_pixels``: the postage stamp each galaxy is drawn into."""

    size_arcsec: float = 60.0
    density_per_arcmin2: float = 40.0
    stamp_size_pixels: int = 96
    noise: str = "poisson"


def field_wcs(scale_arcsec: float, n_pixels: int) -> WCS:
    """TAN WCS with north up, east left, reference pixel at the image centre."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(FIELD_CENTRE_DEG)
    w.wcs.crpix = [(n_pixels + 1) / 2, (n_pixels + 1) / 2]  # FITS pixels are 1-based
    w.wcs.cdelt = [-scale_arcsec / 3600.0, scale_arcsec / 3600.0]
    w.wcs.cunit = ["deg", "deg"]
    return w


def simulate_field(setup: Setup, catalog, config: FieldConfig, seed: int, out: Path) -> Path:
    """Draw one field and write it to the directory ``out`` (atomically: built beside it, then
    renamed)."""
    rng = np.random.default_rng([seed, 0xF1E1D])
    area_arcmin2 = (config.size_arcsec / 60.0) ** 2
    n_galaxies = int(rng.poisson(config.density_per_arcmin2 * area_arcmin2))
    half = config.size_arcsec / 2
    xy_arcsec = rng.uniform(-half, half, size=(n_galaxies, 2))  # +x is west on the sky: see wcs
    rotations = rng.uniform(0, 360, size=n_galaxies)
    rows = rng.integers(0, len(catalog), size=n_galaxies)
    galaxies = [catalog.galaxy(int(r)) for r in rows]
    renderer = StampRenderer(setup, config.stamp_size_pixels)
    noiseless = [
        _draw_band(renderer, ch, galaxies, xy_arcsec, rotations, config)
        for ch in range(setup.n_channels)
    ]
    sky = np.array([b.sky_level_electrons for b in setup.bands])
    noise_seeds = rng.integers(0, 2**63 - 1, size=setup.n_channels)
    noisy = [
        add_noise(img[None], sky[ch : ch + 1], int(noise_seeds[ch]), config.noise)[0]
        for ch, img in enumerate(noiseless)
    ]
    truth = _truth_table(setup, renderer, galaxies, rows, xy_arcsec, rotations)
    return _write_field(out, setup, noisy, noiseless, truth, config)


def _draw_band(renderer, channel, galaxies, xy_arcsec, rotations, config) -> np.ndarray:
    band = renderer.setup.bands[channel]
    scale = band.pixel_scale_arcsec
    n = int(np.ceil(config.size_arcsec / scale))
    image = np.zeros((n, n), dtype=np.float32)
    stamp = config.stamp_size_pixels
    centre = (n - 1) / 2
    for g, (x, y), rot in zip(galaxies, xy_arcsec, rotations, strict=True):
        px, py = centre + x / scale, centre + y / scale  # 0-based pixel position
        # cut a stamp whose true centre is the pixel corner nearest to the galaxy
        x0, y0 = int(np.round(px - (stamp - 1) / 2)), int(np.round(py - (stamp - 1) / 2))
        dx, dy = px - (x0 + (stamp - 1) / 2), py - (y0 + (stamp - 1) / 2)
        drawn = renderer.draw_band(g, Placement(dx * scale, dy * scale, float(rot)), channel, stamp)
        _add_clipped(image, drawn, x0, y0)
    return image


def _add_clipped(image: np.ndarray, stamp: np.ndarray, x0: int, y0: int) -> None:
    """image[y0:, x0:] += stamp, keeping only the overlap (stamps may hang over the edge)."""
    h, w = stamp.shape
    ys, xs = (
        slice(max(y0, 0), min(y0 + h, image.shape[0])),
        slice(max(x0, 0), min(x0 + w, image.shape[1])),
    )
    if ys.start >= ys.stop or xs.start >= xs.stop:
        return
    image[ys, xs] += stamp[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


def _truth_table(setup, renderer, galaxies, rows, xy_arcsec, rotations) -> Table:
    ra, dec = _offsets_to_sky(xy_arcsec)
    table = Table(
        {
            "ra_deg": ra,
            "dec_deg": dec,
            "dx_arcsec": xy_arcsec[:, 0],
            "dy_arcsec": xy_arcsec[:, 1],
            "catalog_row": rows,
        }
    )
    electrons = np.array([renderer.electrons(g).sum(axis=0) for g in galaxies]).reshape(
        len(galaxies), setup.n_channels
    )
    for ch, band in enumerate(setup.bands):
        table[f"flux_{band.band_id}"] = electrons[:, ch]
        table[f"mag_{band.band_id}"] = band.electrons_to_mag(electrons[:, ch])
    shapes = [g.ellipticity(float(r)) for g, r in zip(galaxies, rotations, strict=True)]
    table["e1"] = [s[0] for s in shapes]
    table["e2"] = [s[1] for s in shapes]
    g1, g2 = _observed_shapes(setup, renderer, galaxies, rotations)
    table["g1_observed"], table["g2_observed"] = g1, g2
    table["hlr_arcsec"] = [g.hlr_arcsec for g in galaxies]
    table["redshift"] = [g.redshift for g in galaxies]
    return table


def _observed_shapes(setup, renderer, galaxies, rotations) -> tuple[np.ndarray, np.ndarray]:
    """Each galaxy's shape as field mode's catalogue measures its ``e1``, ``e2`` (and their
    posterior quantiles): HSM adaptive moments of the PSF-convolved image, here of the galaxy
    alone and noiseless, in the reference band. NaN where HSM fails."""
    if not galaxies:
        return np.zeros(0), np.zeros(0)
    channel = setup.index(setup.reference_band_id)
    stamps = [renderer.draw_band(g, Placement(0.0, 0.0, float(r)), channel, renderer.size)
              for g, r in zip(galaxies, rotations, strict=True)]  # fmt: skip
    scale = setup.bands[channel].pixel_scale_arcsec
    shapes = measure_shapes(np.stack(stamps), None, scale, method="adaptive")
    return shapes.g1, shapes.g2


def _offsets_to_sky(xy_arcsec: np.ndarray):
    """Tangent-plane offsets (x towards +RA pixel axis, i.e. west; y north) to RA, Dec (deg)."""
    w = field_wcs(1.0, 1)  # 1 arcsec per pixel, reference pixel 1 = offset 0
    if not len(xy_arcsec):
        return np.zeros(0), np.zeros(0)
    ra, dec = w.all_pix2world(1 + xy_arcsec[:, 0], 1 + xy_arcsec[:, 1], 1)
    return np.asarray(ra), np.asarray(dec)


def _write_field(out, setup, noisy, noiseless, truth, config) -> Path:
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    psfs = psf_images(setup)
    for ch, band in enumerate(setup.bands):
        n = noisy[ch].shape[0]
        header = field_wcs(band.pixel_scale_arcsec, n).to_header()
        header["BAND"] = (band.band_id, "vaedeblend band id")
        header["BUNIT"] = "electron"
        header["ZP_AB"] = (band.zeropoint_mag, "AB mag giving 1 electron per second")
        header["EXPTIME"] = (band.exposure_s, "total exposure, s")
        header["SKYLEVEL"] = (band.sky_level_electrons, "subtracted sky, electrons per pixel")
        header["PIXSCALE"] = (band.pixel_scale_arcsec, "arcsec per pixel")
        psf = fits.ImageHDU(psfs[ch], name="PSF")
        fits.HDUList([fits.PrimaryHDU(noisy[ch], header=header), psf]).writeto(
            tmp / f"{band.band_id}.fits"
        )
        fits.PrimaryHDU(noiseless[ch], header=header).writeto(
            tmp / f"{band.band_id}_noiseless.fits"
        )
    for ch, band in enumerate(setup.bands):
        w = field_wcs(band.pixel_scale_arcsec, noisy[ch].shape[0])
        x, y = w.all_world2pix(truth["ra_deg"], truth["dec_deg"], 0)
        truth[f"x_{band.band_id}"], truth[f"y_{band.band_id}"] = x, y
    truth.meta["SIZE_AS"] = config.size_arcsec
    truth.meta["DENSITY"] = config.density_per_arcmin2
    truth.write(tmp / "truth.fits")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
