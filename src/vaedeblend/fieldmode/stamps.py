"""Cutting stamps around sources, in every band at its own pixel scale, and pasting models back.

A source's stamps are all centred on one sky position P. On the reference grid the stamp is an
integer cut whose centre (GalSim ``true_center``: for an even stamp the corner between the four
central pixels) lies within half a pixel of the detection, as in the training sets' ``detected``
centring; P is that centre. On every other grid P falls between pixels, so that band's cut is
shifted by cubic-spline interpolation (``scipy.ndimage.shift``) to put P exactly at the stamp
centre, the same sky position in every band, as in the simulated training stamps. A model stamp
goes back into its band's image by the opposite shift.

Stamps hanging over the image edge are padded with zeros (the sky-subtracted background).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from vaedeblend.fieldmode.geometry import FieldGeometry

SHIFT_PAD = 4  # pixels read beyond the stamp so that the spline sees real pixels at its edge
SHIFT_EPS = 1e-6  # band pixels: below this, no interpolation


@dataclass
class Placements:
    """Where the stamps of N sources sit, per band.

    Attributes:
        x0, y0: (N, C) int, global pixel (in each band's grid) of each stamp's [0, 0] pixel.
        dx, dy: (N, C) float, band pixels: the sky position P of the stamp centre minus the
            centre of the integer cut (0 on the reference grid; |d| <= 0.5 elsewhere).
        edge: (N,) bool, True where any band's stamp crosses its image's edge.
    """

    x0: np.ndarray
    y0: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    edge: np.ndarray

    def __len__(self) -> int:
        return len(self.edge)

    def patch(self, stamp: np.ndarray, i: int, b: int, order: int):
        """Source ``i``'s model ``stamp`` in band ``b`` as (patch, x, y) on the band's grid
        (:func:`model_patch` at this placement)."""
        x0, y0 = int(self.x0[i, b]), int(self.y0[i, b])
        return model_patch(stamp, x0, y0, float(self.dx[i, b]), float(self.dy[i, b]), order)

    def subset(self, keep: np.ndarray) -> Placements:
        """The placements of the sources selected by ``keep`` (bool or index array)."""
        return Placements(
            self.x0[keep], self.y0[keep], self.dx[keep], self.dy[keep], self.edge[keep]
        )

    @staticmethod
    def concatenate(parts: list[Placements], n_bands: int) -> Placements:
        """One :class:`Placements` holding ``parts`` in order."""
        if not parts:
            z = np.zeros((0, n_bands))
            return Placements(z.astype(int), z.astype(int), z, z, np.zeros(0, bool))
        return Placements(
            *(np.concatenate([getattr(p, k) for p in parts]) for k in ("x0", "y0", "dx", "dy")),
            np.concatenate([p.edge for p in parts]),
        )


def place(geom: FieldGeometry, x_ref, y_ref, size: int) -> Placements:
    """Stamp placements of sources detected at reference pixels (x_ref, y_ref), (N,) each."""
    half = (size - 1) / 2
    x_ref, y_ref = np.asarray(x_ref, float), np.asarray(y_ref, float)
    n, c = len(x_ref), geom.n_bands
    # floor(v + 0.5) rather than np.round: no banker's rounding, the same answer on every grid
    x0r, y0r = np.floor(x_ref - half + 0.5), np.floor(y_ref - half + 0.5)
    cx, cy = x0r + half, y0r + half
    x0 = np.zeros((n, c), dtype=np.int64)
    y0 = np.zeros((n, c), dtype=np.int64)
    dx, dy = np.zeros((n, c)), np.zeros((n, c))
    edge = np.zeros(n, dtype=bool)
    for b in range(c):
        xb, yb = geom.to_band(b, cx, cy)
        x0[:, b] = np.floor(xb - half + 0.5)
        y0[:, b] = np.floor(yb - half + 0.5)
        if geom.grid_of[b] != 0:
            dx[:, b], dy[:, b] = xb - (x0[:, b] + half), yb - (y0[:, b] + half)
        h, w = geom.shapes[b]
        edge |= (x0[:, b] < 0) | (y0[:, b] < 0) | (x0[:, b] + size > w) | (y0[:, b] + size > h)
    return Placements(x0, y0, dx, dy, edge)


def cut(image: np.ndarray, origin: tuple[int, int], x0: int, y0: int, size: int, fill=0.0):
    """(size, size) cut of ``image`` (a region whose [0, 0] pixel is global ``origin`` =
    (x, y)) starting at global pixel (x0, y0); pixels outside the region are ``fill``."""
    out = np.full((size, size), fill, dtype=np.float32)
    lx, ly = x0 - origin[0], y0 - origin[1]
    h, w = image.shape
    xa, xb = max(lx, 0), min(lx + size, w)
    ya, yb = max(ly, 0), min(ly + size, h)
    if xa < xb and ya < yb:
        out[ya - ly : yb - ly, xa - lx : xb - lx] = image[ya:yb, xa:xb]
    return out


def cut_centred(image, origin, x0: int, y0: int, dx: float, dy: float, size: int, order: int):
    """Stamp of ``image`` whose centre is the point (x0 + half + dx, y0 + half + dy) (global
    band pixels): an integer cut, shifted by spline interpolation when (dx, dy) is not 0."""
    if abs(dx) < SHIFT_EPS and abs(dy) < SHIFT_EPS:
        return cut(image, origin, x0, y0, size)
    p = SHIFT_PAD
    big = cut(image, origin, x0 - p, y0 - p, size + 2 * p)
    # ndimage.shift: out[i] = in[i - s]; we want out[i] = in[i + d], so s = -d
    moved = ndimage.shift(big, (-dy, -dx), order=order, mode="nearest")
    return moved[p : p + size, p : p + size]


def model_patch(stamp: np.ndarray, x0: int, y0: int, dx: float, dy: float, order: int):
    """A model stamp moved back onto its band's grid: (patch, x, y), the patch to add at
    global pixel (x, y). The inverse of :func:`cut_centred`."""
    if abs(dx) < SHIFT_EPS and abs(dy) < SHIFT_EPS:
        return stamp, x0, y0
    p = SHIFT_PAD
    padded = np.pad(np.asarray(stamp, dtype=np.float64), p)
    moved = ndimage.shift(padded, (dy, dx), order=order, mode="constant", cval=0.0)
    return moved.astype(np.float32), x0 - p, y0 - p


def add_patch(image: np.ndarray, origin: tuple[int, int], patch: np.ndarray, x: int, y: int):
    """image += patch placed at global pixel (x, y), keeping the overlap only (in place)."""
    lx, ly = x - origin[0], y - origin[1]
    h, w = image.shape
    ph, pw = patch.shape
    xa, xb = max(lx, 0), min(lx + pw, w)
    ya, yb = max(ly, 0), min(ly + ph, h)
    if xa < xb and ya < yb:
        image[ya:yb, xa:xb] += patch[ya - ly : yb - ly, xa - lx : xb - lx]


def paste_models(images, origins, stamps: np.ndarray, placements: Placements, order: int) -> None:
    """Add model stamps (N, C, S, S) into per-band images (in place); ``origins[b]`` is the
    global pixel of ``images[b][0, 0]``."""
    for i in range(len(placements)):
        for b, image in enumerate(images):
            patch, x, y = placements.patch(stamps[i, b], i, b, order)
            add_patch(image, origins[b], patch, x, y)
