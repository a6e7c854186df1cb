"""Galaxies whose positions are known beforehand: a source catalogue given to field mode.

A survey team often has a deeper or sharper detection list than one image band can give (a
coadd, Euclid VIS for LSST images, a catalogue from another survey). Field mode then deblends
those positions instead of detecting its first pass's sources, and a refined deblender fits each
stamp's catalogue neighbours at their catalogue positions instead of detecting them in the stamp
(the setting of MADNESS and scarlet, which take positions as input). Later passes, if asked
for, still detect what the catalogue left in the residual.

A catalogue is any table astropy reads (FITS, ECSV, CSV) with columns ``ra`` and ``dec`` or
``ra_deg`` and ``dec_deg`` (degrees, the images' WCS frame) or ``x`` and ``y`` (0-based pixels
of the reference band's grid, pixel centres at integers); names are matched without regard to
case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from astropy.io.registry import IORegistryError
from astropy.table import Table

from vaedeblend.fieldmode.geometry import FieldGeometry
from vaedeblend.fieldmode.inputs import FieldInputError
from vaedeblend.refinement.joint import GalaxyPositions

# column pairs looked for, in this order (lower case): pixels, then sky positions in degrees
COLUMN_PAIRS = (("x", "y"), ("ra", "dec"), ("ra_deg", "dec_deg"))


@dataclass(frozen=True)
class SourceList:
    """Known galaxy positions on the reference grid.

    Attributes:
        x, y: (N,) float, global reference-grid pixels (0-based, pixel centres at integers).
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self):
        x, y = np.asarray(self.x, float), np.asarray(self.y, float)
        if x.ndim != 1 or x.shape != y.shape:
            raise FieldInputError(f"sources: x and y must be (N,) each, got {x.shape}, {y.shape}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise FieldInputError("sources: positions hold NaN or infinite values")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    def __len__(self) -> int:
        return len(self.x)

    def within(self, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the sources on the pixels of ``box`` = (x0, x1, y0, y1), half-open."""
        x0, x1, y0, y1 = box
        keep = (self.x >= x0 - 0.5) & (self.x < x1 - 0.5) & (self.y >= y0 - 0.5)
        keep &= self.y < y1 - 0.5
        return self.x[keep], self.y[keep]


def read_sources(sources, geom: FieldGeometry) -> SourceList:
    """A :class:`SourceList` from a catalogue: a :class:`SourceList` already, an astropy
    ``Table`` or the path of a file astropy reads. Sources off the reference grid are
    dropped; a catalogue with none on it is refused (:class:`FieldInputError`)."""
    if isinstance(sources, SourceList):
        found = sources
    else:
        table = _read_table(sources)
        columns = {name.lower(): name for name in table.colnames}
        pair = next((p for p in COLUMN_PAIRS if p[0] in columns and p[1] in columns), None)
        if pair is None:
            raise FieldInputError(
                f"sources: the catalogue needs columns ra, dec (degrees) or x, y (reference "
                f"pixels); it has {table.colnames}"
            )
        first, second = (_column(table, columns[name]) for name in pair)
        found = SourceList(first, second) if pair == ("x", "y") else _from_sky(first, second, geom)
    h, w = geom.ref_shape
    x, y = found.within((0, w, 0, h))
    if not len(x):
        raise FieldInputError(f"sources: none of the {len(found)} sources lies on the images")
    return SourceList(x, y)


def _read_table(sources) -> Table:
    if isinstance(sources, Table):
        return sources
    if not isinstance(sources, str | os.PathLike):
        raise FieldInputError(f"sources: expected a table or a file, got {type(sources).__name__}")
    try:
        return Table.read(sources)
    except (OSError, ValueError, IORegistryError) as err:
        why = (str(err).splitlines() or [type(err).__name__])[0][:120]  # astropy's can be long
        raise FieldInputError(
            f"sources: cannot read {os.fspath(sources)!r} as a table: {why}"
        ) from None


def _column(table: Table, name: str) -> np.ndarray:
    values = table[name]
    if getattr(values, "mask", None) is not None and np.any(values.mask):
        raise FieldInputError(f"sources: column {name} has masked (empty) entries")
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise FieldInputError(f"sources: column {name} is not numeric") from None


def _from_sky(ra_deg: np.ndarray, dec_deg: np.ndarray, geom: FieldGeometry) -> SourceList:
    wcs = geom.wcs[geom.ref]
    if wcs is None:
        raise FieldInputError(
            "sources: ra, dec need images with a WCS; give x, y (reference pixels) instead"
        )
    if not (np.all(np.isfinite(ra_deg)) and np.all(np.isfinite(dec_deg))):
        raise FieldInputError("sources: ra or dec hold NaN or infinite values")
    x, y = wcs.all_world2pix(ra_deg, dec_deg, 0)
    return SourceList(np.asarray(x, float), np.asarray(y, float))


def stamp_neighbours(
    centres: tuple[np.ndarray, np.ndarray],
    everyone: tuple[np.ndarray, np.ndarray],
    own: np.ndarray,
    half_width_pixels: float,
    pixel_scale_arcsec: float,
    k: int,
) -> GalaxyPositions:
    """Where the known galaxies sit in each of N stamps, for a refined deblender to fit them.

    Args:
        centres: (x, y) reference pixels of the N stamp centres.
        everyone: (x, y) reference pixels of all M known galaxies of the region.
        own: (N,) index into ``everyone`` of each stamp's own galaxy (slot 0).
        half_width_pixels: half the stamp side, reference pixels: galaxies whose centre lies
            within it in x and y are on the stamp.
        pixel_scale_arcsec: the reference grid's pixel side.
        k: most galaxies per stamp, its own included; the nearest others are kept.
    """
    cx, cy = (np.asarray(a, float) for a in centres)
    ex, ey = (np.asarray(a, float) for a in everyone)
    n = len(cx)
    dx, dy = ex[None, :] - cx[:, None], ey[None, :] - cy[:, None]  # (N, M) pixels
    on_stamp = np.maximum(np.abs(dx), np.abs(dy)) < half_width_pixels
    on_stamp[np.arange(n), own] = False
    distance = np.where(on_stamp, np.hypot(dx, dy), np.inf)
    others = np.argsort(distance, axis=1, kind="stable")[:, : k - 1]
    slots = np.concatenate([np.asarray(own)[:, None], others], axis=1)  # (N, k)
    used = np.isfinite(np.take_along_axis(distance, others, axis=1))
    used = np.concatenate([np.ones((n, 1), bool), used], axis=1)
    rows = np.arange(n)[:, None]
    offsets = np.stack([dx[rows, slots], dy[rows, slots]], axis=-1) * pixel_scale_arcsec
    return GalaxyPositions(np.where(used[..., None], offsets, 0.0), used)
