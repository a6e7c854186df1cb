"""Pixel grids of the bands, positions mapped between them, and the tiles a field is cut into.

Positions are 0-based pixel coordinates (x, y) = (column, row), pixel centres at integers, as in
numpy, sep and GalSim's ``true_center`` convention. The *reference grid* is the grid of the
reference band (``lsst_r`` by default); detection runs on the bands sharing it and every source
position is kept on it. Other grids (Euclid VIS at 0.1", NISP at 0.3") are reached through the
WCS: reference pixel -> sky -> band pixel. Grids must be aligned (no rotation or flip between
them): field mode moves stamps by sub-pixel shifts, it does not rotate them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS

from vaedeblend.fieldmode.inputs import FieldImages, FieldInputError

REFERENCE_PREFERENCE = ("lsst_r", "hsc_r", "euclid_vis")
GRID_TOLERANCE_PIXELS = 1e-3


@dataclass
class FieldGeometry:
    """What every tile needs to know about the field (small: sent once to each worker).

    Attributes:
        band_ids: channel order of the field.
        shapes: (H, W) of each band's image, pixels.
        wcs: each band's celestial WCS, or None (then all bands share one grid).
        scales: pixel side of each band, arcsec.
        grid_of: grid index of each band; 0 is the reference grid.
        ref: index of the reference band.
        psfs: each band's PSF image (P, P) or None.
        fwhm_pixels: PSF FWHM of each band, in that band's pixels (None: unknown).
        zeropoints: AB magnitude of 1 electron, per band, or None.
        sky_levels: subtracted sky per band, electrons per pixel, or None.
        has_variance_map: per band, whether a variance (or weight) map was given.
    """

    band_ids: list[str]
    shapes: list[tuple[int, int]]
    wcs: list[WCS | None]
    scales: list[float]
    grid_of: list[int]
    ref: int
    psfs: list[np.ndarray | None] = field(default_factory=list)
    fwhm_pixels: list[float | None] = field(default_factory=list)
    zeropoints: list[float | None] = field(default_factory=list)
    sky_levels: list[float | None] = field(default_factory=list)
    has_variance_map: list[bool] = field(default_factory=list)

    @property
    def n_bands(self) -> int:
        return len(self.band_ids)

    @property
    def ref_shape(self) -> tuple[int, int]:
        """(H, W) of the reference grid, pixels."""
        return self.shapes[self.ref]

    @property
    def detection_bands(self) -> list[int]:
        """Indices of the bands on the reference grid (the ones detection uses)."""
        return [b for b in range(self.n_bands) if self.grid_of[b] == 0]

    def to_band(self, b: int, x_ref, y_ref) -> tuple[np.ndarray, np.ndarray]:
        """Reference-grid pixel positions (x, y) mapped to band ``b``'s pixels."""
        x_ref, y_ref = np.asarray(x_ref, float), np.asarray(y_ref, float)
        if self.grid_of[b] == 0:
            return x_ref.copy(), y_ref.copy()
        ra, dec = self.wcs[self.ref].all_pix2world(x_ref, y_ref, 0)
        x, y = self.wcs[b].all_world2pix(ra, dec, 0)
        return np.asarray(x, float), np.asarray(y, float)

    def to_sky(self, x_ref, y_ref) -> tuple[np.ndarray, np.ndarray]:
        """RA, Dec (deg) of reference-grid pixel positions; NaN without a WCS."""
        x_ref, y_ref = np.asarray(x_ref, float), np.asarray(y_ref, float)
        if self.wcs[self.ref] is None:
            return np.full(x_ref.shape, np.nan), np.full(x_ref.shape, np.nan)
        ra, dec = self.wcs[self.ref].all_pix2world(x_ref, y_ref, 0)
        return np.asarray(ra, float), np.asarray(dec, float)

    def stamp_extent_ref_pixels(self, stamp_size: int) -> float:
        """Side of the widest band's stamp, in reference-grid pixels."""
        return stamp_size * max(self.scales) / self.scales[self.ref]


def choose_reference(band_ids: list[str], reference: str | None) -> int:
    """Index of the reference band: ``reference`` if given, else lsst_r, hsc_r, euclid_vis,
    any ``*_r``, else the first band."""
    if reference is not None:
        if reference not in band_ids:
            raise FieldInputError(f"reference band {reference!r} is not among {band_ids}")
        return band_ids.index(reference)
    for name in REFERENCE_PREFERENCE:
        if name in band_ids:
            return band_ids.index(name)
    for i, b in enumerate(band_ids):
        if b.endswith("_r"):
            return i
    return 0


def _same_grid(a, b) -> bool:
    """Same shape and the same pixel -> sky mapping (to ``GRID_TOLERANCE_PIXELS``)."""
    if a.shape != b.shape:
        return False
    if a.wcs is None or b.wcs is None:
        return a.wcs is None and b.wcs is None
    h, w = a.shape
    xs, ys = np.array([0.0, w - 1.0, 0.0]), np.array([0.0, h - 1.0, h - 1.0])
    ra, dec = a.wcs.all_pix2world(xs, ys, 0)
    x2, y2 = b.wcs.all_world2pix(ra, dec, 0)
    return bool(np.max(np.hypot(x2 - xs, y2 - ys)) < GRID_TOLERANCE_PIXELS)


def _check_aligned(field: FieldImages, ref: int, b: int) -> None:
    """Band ``b``'s grid is the reference grid scaled and shifted (no rotation, no flip)."""
    r, im = field.bands[ref], field.bands[b]
    h, w = r.shape
    x = np.array([(w - 1) / 2, (w - 1) / 2 + 1, (w - 1) / 2])
    y = np.array([(h - 1) / 2, (h - 1) / 2, (h - 1) / 2 + 1])
    ra, dec = r.wcs.all_pix2world(x, y, 0)
    xb, yb = im.wcs.all_world2pix(ra, dec, 0)
    jac = np.array([[xb[1] - xb[0], xb[2] - xb[0]], [yb[1] - yb[0], yb[2] - yb[0]]])
    diag = np.diag(jac)
    ok = (
        np.all(diag > 0)
        and abs(diag[0] - diag[1]) < 1e-3 * diag[0]
        and np.all(np.abs([jac[0, 1], jac[1, 0]]) < 1e-3 * diag[0])
    )
    if not ok:
        raise FieldInputError(
            f"the pixel grid of band {im.band} is rotated or flipped relative to the reference "
            f"band {r.band}'s (d(pixel)/d(reference pixel) = {jac.round(4).tolist()}); "
            "resample it onto an aligned grid first"
        )


def grid_indices(field: FieldImages, ref: int) -> list[int]:
    """Grid index of each band (0: the reference band's grid), checking the grids can be
    related: all bands have a WCS, or none has and all share one shape."""
    bands = field.bands
    with_wcs = [im.wcs is not None for im in bands]
    if not any(with_wcs):
        shapes = {im.shape for im in bands}
        if len(shapes) > 1:
            raise FieldInputError(
                f"images have different shapes {sorted(shapes)} and no WCS to relate them"
            )
        return [0] * len(bands)
    if not all(with_wcs):
        missing = [im.band for im in bands if im.wcs is None]
        raise FieldInputError(f"bands {missing} have no WCS while others do")
    grids: list[int] = []
    firsts: list[int] = [ref]
    for b, im in enumerate(bands):
        for g, first in enumerate(firsts):
            if _same_grid(bands[first], im):
                grids.append(g)
                break
        else:
            _check_aligned(field, ref, b)
            firsts.append(b)
            grids.append(len(firsts) - 1)
    return grids


def psf_fwhm_pixels(psf: np.ndarray | None) -> float | None:
    """FWHM of a PSF image in its own pixels (from HSM adaptive moments, 2.355 sigma)."""
    if psf is None:
        return None
    import galsim

    try:
        mom = galsim.hsm.FindAdaptiveMom(galsim.Image(np.asarray(psf, dtype=np.float64)))
    except (galsim.GalSimError, RuntimeError, ValueError):
        return None
    return float(mom.moments_sigma * 2.3548)


# ------------------------------------------------------------------------------------------
# Tiles
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    """A piece of the reference grid: ``core`` (owned) inside ``ext`` (what is read).

    Boxes are (x0, x1, y0, y1), half-open, reference pixels. A source belongs to the tile whose
    core holds its pixel; the margin (ext minus core) only gives context, so that a galaxy
    near a tile edge is deblended once, with its whole stamp and its neighbours.
    """

    index: int
    core: tuple[int, int, int, int]
    ext: tuple[int, int, int, int]
    image_shape: tuple[int, int]

    def owns(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(N,) bool: sources at reference pixels (x, y) that belong to this tile."""
        x0, x1, y0, y1 = self.core
        h, w = self.image_shape
        # pixel i covers [i - 0.5, i + 0.5); the outer tiles also own anything beyond the edge
        lo_x = -np.inf if x0 == 0 else x0 - 0.5
        hi_x = np.inf if x1 == w else x1 - 0.5
        lo_y = -np.inf if y0 == 0 else y0 - 0.5
        hi_y = np.inf if y1 == h else y1 - 0.5
        return (x >= lo_x) & (x < hi_x) & (y >= lo_y) & (y < hi_y)


def plan_tiles(shape: tuple[int, int], tile_size: int, margin: int) -> list[Tile]:
    """Tiles of at most ``tile_size`` reference pixels a side (cores), grown by ``margin``."""
    h, w = shape
    nx, ny = max(1, math.ceil(w / tile_size)), max(1, math.ceil(h / tile_size))
    xe = np.linspace(0, w, nx + 1).round().astype(int)
    ye = np.linspace(0, h, ny + 1).round().astype(int)
    tiles = []
    for j in range(ny):
        for i in range(nx):
            core = (int(xe[i]), int(xe[i + 1]), int(ye[j]), int(ye[j + 1]))
            ext = (
                max(0, core[0] - margin),
                min(w, core[1] + margin),
                max(0, core[2] - margin),
                min(h, core[3] + margin),
            )
            tiles.append(Tile(len(tiles), core, ext, (h, w)))
    return tiles


def band_box(geom: FieldGeometry, b: int, ext: tuple[int, int, int, int], pad: int = 3):
    """Box (x0, x1, y0, y1) of band ``b``'s pixels covering the reference box ``ext``."""
    if geom.grid_of[b] == 0:
        return ext
    x0, x1, y0, y1 = ext
    xs = np.array([x0 - 0.5, x1 - 0.5, x0 - 0.5, x1 - 0.5])
    ys = np.array([y0 - 0.5, y0 - 0.5, y1 - 0.5, y1 - 0.5])
    xb, yb = geom.to_band(b, xs, ys)
    h, w = geom.shapes[b]
    return (
        max(0, int(np.floor(xb.min())) - pad),
        min(w, int(np.ceil(xb.max())) + pad + 1),
        max(0, int(np.floor(yb.min())) - pad),
        min(h, int(np.ceil(yb.max())) + pad + 1),
    )
