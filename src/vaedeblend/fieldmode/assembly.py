"""Assembling a field's outputs from its tiles: the model and residual images per band (in
memory, or memory-mapped FITS files of the output directory), the model stamps in catalogue
order, and the catalogue with its documented columns and header.
"""

from __future__ import annotations

import os

import numpy as np
from astropy.io import fits
from astropy.table import Table

from vaedeblend._version import __version__
from vaedeblend.fieldmode.catalog import FLAG_KEYS, FLAGS, FOOTPRINT_NSIGMA, column_doc
from vaedeblend.fieldmode.geometry import FieldGeometry
from vaedeblend.fieldmode.inputs import FieldImages
from vaedeblend.fieldmode.outputs import OutputDir, create_image_file
from vaedeblend.fieldmode.region import DeblendSettings
from vaedeblend.fieldmode.stamps import paste_models

ROW_CHUNK = 512  # rows of an image read at a time when computing the residual


def _grid_header(geom: FieldGeometry, bands: list[int], what: str) -> fits.Header:
    wcs = geom.wcs[bands[0]]
    # relax=True keeps SIP distortion terms, so the outputs carry the WCS that was used
    header = wcs.to_header(relax=True) if wcs is not None else fits.Header()
    header["BUNIT"] = "electron"
    header["CONTENT"] = (what, "vaedeblend field mode")
    header["PIXSCALE"] = (geom.scales[bands[0]], "arcsec per pixel")
    for k, b in enumerate(bands):
        header[f"BAND{k + 1}"] = (geom.band_ids[b], f"band of plane {k} (numpy index)")
    return header


def _grids(geom: FieldGeometry) -> list[list[int]]:
    """Band indices of each grid, reference grid first."""
    return [
        [b for b in range(geom.n_bands) if geom.grid_of[b] == g]
        for g in range(max(geom.grid_of) + 1)
    ]


class Assembly:
    """Model images, residuals, stamps and catalog rows, in memory or in files of ``outdir``."""

    def __init__(self, geom: FieldGeometry, stamp_size: int, outdir: OutputDir | None):
        self.geom, self.size, self.outdir = geom, stamp_size, outdir
        self.grids = _grids(geom)
        self.models = self._images("models.fits", "sum of the models")
        self.results = {}

    def _images(self, name: str, what: str) -> list[np.ndarray]:
        """Per band (H_b, W_b) writable arrays: views of one cube per grid."""
        geom = self.geom
        shapes = [(len(g), *geom.shapes[g[0]]) for g in self.grids]
        if self.outdir is None:
            cubes = [np.zeros(s, dtype=np.float32) for s in shapes]
        else:
            hdus = [
                (s, _grid_header(geom, g, what)) for s, g in zip(shapes, self.grids, strict=True)
            ]
            cubes = create_image_file(self.outdir.path(name), hdus)
        per_band = [None] * geom.n_bands
        for cube, g in zip(cubes, self.grids, strict=True):
            for k, b in enumerate(g):
                per_band[b] = cube[k]
        return per_band

    def add(self, result, order: int) -> None:
        """Paste a tile's models into the model images and keep its rows and stamps."""
        origins = [(0, 0)] * self.geom.n_bands
        paste_models(self.models, origins, result.stamps, result.placements, order)
        stamps = result.stamps
        if self.outdir is not None:  # stamps wait on disk, not in memory
            path = self.outdir.scratch(f"stamps_{result.tile:06d}.npy")
            np.save(path, stamps)
            stamps = path
        self.results[result.tile] = (result.columns, stamps, len(result.stamps))

    def residual(self, field: FieldImages) -> list[np.ndarray]:
        """Image minus models per band, computed ROW_CHUNK rows at a time; NaN where bad."""
        out = self._images("residual.fits", "image minus models")
        for b, band in enumerate(field.bands):
            h, w = band.shape
            for y0 in range(0, h, ROW_CHUNK):
                rows = slice(y0, min(h, y0 + ROW_CHUNK))
                image, _, bad = band.read(rows, slice(0, w))
                res = image - np.asarray(self.models[b][rows], dtype=np.float32)
                res[bad] = np.nan
                out[b][rows] = res
        return out

    def stamps(self) -> np.ndarray:
        """(N, C, S, S) model stamps in catalog order (a memmap of stamps.fits with ``out``)."""
        c, s = self.geom.n_bands, self.size
        order = sorted(self.results)
        n = sum(self.results[t][2] for t in order)
        if self.outdir is None:
            parts = [self.results[t][1] for t in order]
            return np.concatenate(parts) if parts else np.zeros((0, c, s, s), np.float32)
        header = fits.Header()
        header["BUNIT"] = "electron"
        header["CONTENT"] = ("model stamps (N, C, S, S), row i = catalog row i", "")
        for k, band in enumerate(self.geom.band_ids):
            header[f"BAND{k + 1}"] = band
            header[f"PIXSC{k + 1}"] = (self.geom.scales[k], f"arcsec per pixel of {band}")
        (cube,) = create_image_file(self.outdir.path("stamps.fits"), [((n, c, s, s), header)])
        start = 0
        for t in order:
            _, path, k = self.results[t]
            if k:
                cube[start : start + k] = np.load(path)
                os.remove(path)
            start += k
        return cube

    def catalog(self, meta: dict) -> Table:
        """Rows of every tile, in tile order, with ``id`` = row = stamp index."""
        parts = [self.results[t][0] for t in sorted(self.results)]
        columns = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        n = len(columns["x"])
        table = Table({"id": np.arange(n, dtype=np.int64), **columns}, meta=meta)
        return _describe(table, self.geom.band_ids)


FIRST_COLUMNS = (
    "id",
    "x",
    "y",
    "ra",
    "dec",
    "iteration",
    "flags",
    "snr",
    "blendedness",
    "e1",
    "e2",
    "sigma_arcsec",
    "e1_ksb",
    "e2_ksb",
)


def _describe(table: Table, bands: list[str]) -> Table:
    """Columns in documented order, with units (FITS-compatible ones) and descriptions."""
    order = [c for c in FIRST_COLUMNS if c in table.colnames]
    order += [c for c in table.colnames if c not in order]
    table = table[order]
    for name in table.colnames:
        unit, text = column_doc(name, bands)
        table[name].description = text
        if unit:
            table[name].unit = unit
    return table


def catalog_meta(geom: FieldGeometry, model, settings: DeblendSettings) -> dict:
    meta = {
        "BANDS": ",".join(geom.band_ids),
        "REFBAND": geom.band_ids[geom.ref],
        "MODEL": str(getattr(model, "path", type(model).__name__)),
        "DEBLENDR": str(getattr(model, "name", type(model).__name__)),  # e.g. "lsst refined"
        "MAXITER": settings.max_iterations,
        "NKNOWN": len(settings.sources) if settings.sources is not None else 0,
        "NSIGMA": settings.detection.nsigma,
        "MINAREA": settings.detection.min_area,
        "MODELERR": settings.detection.model_error,
        "MATCHRAD": settings.match_radius(geom),
        "FPNSIGMA": FOOTPRINT_NSIGMA,
        "VERSION": __version__,
    }
    meta.update({FLAG_KEYS[k]: v for k, v in FLAGS.items()})
    meta["COMMENT"] = [
        "flux_<band>: sum of the galaxy's model stamp, electrons",
        "flux_err_<band>: noise of a sum over the model footprint, electrons",
        "e1, e2: HSM adaptive moments, reference-band model (PSF-convolved)",
        "blendedness: B_tot, model vs the sum of the other models, ref band",
        "flags: 1 EDGE, 2 MASKED, 4 SHAPE_FAILED, 8 FLUX_NONPOSITIVE",
    ]
    return meta
