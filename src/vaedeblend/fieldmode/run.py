"""``deblend_field``: a whole field, tile by tile, optionally in parallel with Dask.

The field is cut into tiles of the reference grid (:func:`~.geometry.plan_tiles`), each grown by
a margin of 1.5 stamp widths so that a galaxy whose detection lies in a tile's core has its whole
stamp and every neighbour that overlaps it inside the tile. Each tile is deblended independently
(:func:`~.region.deblend_region`) and reports only the galaxies of its core: every galaxy once.
The parent process reads each tile's pixels from the (memory-mapped) inputs, hands them to a
worker, and pastes the returned model stamps into the model images; with ``out`` given these
live in memory-mapped FITS files, so memory stays bounded by a few tiles whatever the field's
size.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from vaedeblend._version import __version__
from vaedeblend.execution import local_client, usable_cores
from vaedeblend.fieldmode.catalog import FLAG_KEYS, FLAGS, FOOTPRINT_NSIGMA, column_doc
from vaedeblend.fieldmode.detection import DetectionSettings
from vaedeblend.fieldmode.geometry import (
    FieldGeometry,
    choose_reference,
    grid_indices,
    plan_tiles,
    psf_fwhm_pixels,
)
from vaedeblend.fieldmode.inputs import (
    FieldImages,
    FieldInputError,
    apply_image_zeropoint,
    from_arrays,
    read_fits,
)
from vaedeblend.fieldmode.outputs import OutputDir, create_image_file, write_catalog
from vaedeblend.fieldmode.region import DeblendSettings, deblend_region, read_region
from vaedeblend.fieldmode.stamps import paste_models
from vaedeblend.pretrained import resolve_model

SCALE_TOLERANCE = 0.01  # relative: a field's pixel scale within 1 % of the model's is the same
DEFAULT_TILE_PIXELS = 1024
ROW_CHUNK = 512


@dataclass
class FieldResult:
    """What :func:`deblend_field` returns.

    Attributes:
        catalog: one row per deblended galaxy (astropy Table; columns in docs/field_mode.md).
        models: band id -> (H_b, W_b) float32, sum of all models, electrons.
        residual: band id -> (H_b, W_b) float32, image minus models, electrons (NaN on masked
            pixels).
        stamps: (N, C, S, S) float32, each galaxy's model (row i of the catalog), electrons,
            each band at its own pixel scale.
        band_ids: channel order of ``stamps`` and of the inputs.
        files: the files written (empty without ``out``).
    """

    catalog: Table
    models: dict[str, np.ndarray]
    residual: dict[str, np.ndarray]
    stamps: np.ndarray
    band_ids: list[str]
    files: list[Path]

    def cube(self, which: str = "models") -> np.ndarray:
        """``models`` or ``residual`` as a (C, H, W) cube (all bands on one grid only)."""
        images = getattr(self, which)
        shapes = {a.shape for a in images.values()}
        if len(shapes) != 1:
            raise ValueError(f"bands have different grids {sorted(shapes)}: use the dict")
        return np.stack([images[b] for b in self.band_ids])


# ------------------------------------------------------------------------------------------
# Inputs and model
# ------------------------------------------------------------------------------------------


def as_field(images, bands=None, **maps) -> FieldImages:
    """``images`` as a :class:`FieldImages`: one already, FITS path(s), or arrays."""
    if isinstance(images, FieldImages):
        return images
    if isinstance(images, str | os.PathLike):
        images = [images]
    if isinstance(images, list | tuple) and images and isinstance(images[0], str | os.PathLike):
        keys = ("variance", "weight", "mask", "psf", "gain", "pixel_scale_arcsec")
        extra = {k: maps[k] for k in maps if k not in keys and maps[k] is not None}
        if extra:
            raise FieldInputError(f"{sorted(extra)} cannot be given with FITS files")
        return read_fits(images, bands=bands, **{k: maps.get(k) for k in keys})
    return from_arrays(images, bands, **{k: v for k, v in maps.items() if v is not None})


def model_pixel_scales(model) -> dict[str, float]:
    """Band id -> pixel scale (arcsec) the model was trained at."""
    return dict(zip(model.band_ids, model.config["pixel_scales_arcsec"], strict=True))


def check_against_model(field: FieldImages, model) -> None:
    """Bands must be a permutation of the model's (short names such as ``r`` are renamed to
    the model's ``lsst_r`` first); pixel scales within 1 % of the model's."""
    from vaedeblend.models.api import band_permutation, expand_band_names

    for im, name in zip(
        field.bands, expand_band_names(field.band_ids, model.band_ids), strict=True
    ):
        im.band = name
    band_permutation(field.band_ids, list(model.band_ids), what=f"the model's ({model!r})")
    scales = model_pixel_scales(model)
    for im in field.bands:
        want = float(scales[im.band])
        if im.pixel_scale_arcsec is None:
            warnings.warn(
                f"pixel scale of band {im.band} unknown: assuming the model's {want}\"",
                stacklevel=3,
            )
            im.pixel_scale_arcsec = want
        elif abs(im.pixel_scale_arcsec / want - 1) > SCALE_TOLERANCE:
            raise FieldInputError(
                f'band {im.band} has {im.pixel_scale_arcsec:.4f}" pixels, the model was '
                f"trained at {want:.4f}\": resample the image to the model's pixel scale"
            )


def field_geometry(field: FieldImages, reference_band: str | None) -> FieldGeometry:
    """The field's :class:`FieldGeometry` (grids, reference band, PSFs, zero points)."""
    ref = choose_reference(field.band_ids, reference_band)
    return FieldGeometry(
        band_ids=field.band_ids,
        shapes=[im.shape for im in field.bands],
        wcs=[im.wcs for im in field.bands],
        scales=[float(im.pixel_scale_arcsec) for im in field.bands],
        grid_of=grid_indices(field, ref),
        ref=ref,
        psfs=[im.psf for im in field.bands],
        fwhm_pixels=[psf_fwhm_pixels(im.psf) for im in field.bands],
        zeropoints=[im.zeropoint_mag for im in field.bands],
        sky_levels=[im.sky_level for im in field.bands],
        has_variance_map=[im.has_variance_map for im in field.bands],
    )


def make_settings(settings: DeblendSettings | None = None, **overrides) -> DeblendSettings:
    """:class:`DeblendSettings` with ``overrides``; detection fields (``nsigma``, ``min_area``,
    ``deblend_nthresh``, ``deblend_cont``, ``model_error``) go to its ``detection``."""
    settings = settings or DeblendSettings()
    det_names = {f.name for f in fields(DetectionSettings)}
    det = {k: overrides.pop(k) for k in list(overrides) if k in det_names}
    unknown = set(overrides) - {f.name for f in fields(DeblendSettings)}
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}")
    out = replace(settings, detection=replace(settings.detection, **det), **overrides)
    if out.background not in ("none", "sep"):
        raise ValueError(f"background must be 'none' or 'sep', got {out.background!r}")
    if out.max_iterations < 1:
        raise ValueError("max_iterations must be at least 1")
    return out


# ------------------------------------------------------------------------------------------
# Running the tiles
# ------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _worker_model(path: str, device: str):
    from vaedeblend.models.api import load_model

    return load_model(path, device=device)


def _tile_task(geom, region, model_ref, settings, device):
    """Deblend one tile in a Dask worker (one thread: the worker processes share the cores)."""
    import torch

    torch.set_num_threads(1)
    model = _worker_model(model_ref, device) if isinstance(model_ref, str) else model_ref
    return deblend_region(geom, region, model, settings)


def _in_process(field, geom, tiles, model, settings):
    for tile in tiles:
        yield deblend_region(geom, read_region(field, geom, tile, settings), model, settings)


def _with_dask(field, geom, tiles, model, settings, workers, scheduler, device):
    from dask.distributed import as_completed

    from vaedeblend.models.api import Model

    model_ref = model.path if isinstance(model, Model) else model
    with local_client(workers, scheduler) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        geom_future = client.scatter(geom, broadcast=True)
        pending = list(tiles)
        running = as_completed()
        # a few tiles in flight per worker: the parent reads each tile's pixels when it is
        # submitted, so this bounds the memory held for them
        while pending or running.count():
            while pending and running.count() < 2 * n_workers:
                tile = pending.pop(0)
                # scattered, not embedded in the task graph (tiles are megabytes)
                region = client.scatter(read_region(field, geom, tile, settings))
                running.add(
                    client.submit(
                        _tile_task, geom_future, region, model_ref, settings, device, pure=False
                    )
                )
            yield next(running).result()


# ------------------------------------------------------------------------------------------
# Assembling the outputs
# ------------------------------------------------------------------------------------------


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


class _Assembly:
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


def _meta(geom: FieldGeometry, model, settings: DeblendSettings) -> dict:
    meta = {
        "BANDS": ",".join(geom.band_ids),
        "REFBAND": geom.band_ids[geom.ref],
        "MODEL": str(getattr(model, "path", type(model).__name__)),
        "MAXITER": settings.max_iterations,
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


# ------------------------------------------------------------------------------------------
# The entry point
# ------------------------------------------------------------------------------------------


def deblend_field(
    images,
    model,
    *,
    bands=None,
    variance=None,
    weight=None,
    mask=None,
    psf=None,
    gain=None,
    pixel_scale_arcsec=None,
    wcs=None,
    sky_level=None,
    zeropoint_mag=None,
    image_zeropoint_mag: float | None = None,
    depth_preset: str | None = None,
    reference_band: str | None = None,
    settings: DeblendSettings | None = None,
    tile_size: int = DEFAULT_TILE_PIXELS,
    workers: int | None = 0,
    scheduler: str | None = None,
    device: str = "cpu",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
    **setting_overrides,
) -> FieldResult:
    """Detect and deblend every galaxy of a field with a VAE deblender.

    Args:
        images: FITS path(s) (one file per band, or cubes), a :class:`FieldImages`, a (C, H, W)
            array, or a list of (H_b, W_b) arrays (then ``bands`` is required). Electrons,
            sky-subtracted (or give ``gain``, electrons per input unit).
        model: a loaded model, a shipped name (``lsst``, ``lsst+euclid``) or a model directory.
        bands: band ids of the images (FITS: overrides the ``BAND`` keywords).
        variance, weight, mask, psf: per band: noise variance (input units^2), inverse variance,
            bad-pixel mask (non-zero = bad), PSF image. For FITS inputs, one file per image
            file.
        pixel_scale_arcsec, wcs, sky_level, zeropoint_mag: per band, or one value (arrays
            only; FITS inputs carry them in their headers).
        image_zeropoint_mag: instead of ``gain``, for calibrated images: the AB magnitude of
            one image unit (27 for HSC coadds, 31.4 for nJy); the gain of each band is then
            that of the depth the model was trained for (``depth_preset``: ``paper`` for LSST
            and Euclid bands, ``survey`` otherwise; see ``apply_image_zeropoint``).
        reference_band: detection grid and shape band (default lsst_r, hsc_r, ...).
        settings: :class:`DeblendSettings`; ``**setting_overrides`` change single fields
            (``max_iterations=1``, ``nsigma=2.0``, ...).
        tile_size: side of the tiles' cores, reference pixels.
        workers: Dask worker processes for fields of several tiles (0: in this process;
            None: one per core). ``scheduler``: address of a running Dask scheduler.
        device: torch device of the model.
        out: output directory; the catalog (FITS, ECSV, Parquet with pyarrow), ``models.fits``,
            ``residual.fits`` and ``stamps.fits`` are written there, all or nothing.
        overwrite: replace the outputs of an earlier run in ``out`` (refused otherwise).
        progress: show a progress bar over the tiles.

    Returns:
        :class:`FieldResult`. With ``out``, its images are read-only memory maps of the files.
    """
    if image_zeropoint_mag is not None and gain is not None:
        raise FieldInputError("give either a gain or an image zero point, not both")
    field = as_field(
        images,
        bands,
        variance=variance,
        weight=weight,
        mask=mask,
        psf=psf,
        # calibrated images: read as they are, the gain is set per band below
        gain=1.0 if image_zeropoint_mag is not None else gain,
        pixel_scale_arcsec=pixel_scale_arcsec,
        wcs=wcs,
        sky_level=sky_level,
        zeropoint_mag=zeropoint_mag,
    )
    if image_zeropoint_mag is not None:
        apply_image_zeropoint(field, float(image_zeropoint_mag), depth_preset)
    if int(tile_size) < 1:
        raise FieldInputError(f"tile size must be at least 1 pixel, got {tile_size}")
    model = resolve_model(model, device)  # vaedeblend.pretrained.resolve_model
    check_against_model(field, model)
    settings = make_settings(settings, **setting_overrides)
    geom = field_geometry(field, reference_band)
    margin = math.ceil(1.5 * geom.stamp_extent_ref_pixels(int(model.stamp_size))) + 4
    tiles = plan_tiles(geom.ref_shape, int(tile_size), margin)
    execution = Execution(workers, scheduler, device, progress)
    if out is None:
        return _run(field, geom, tiles, model, settings, execution, None)
    with OutputDir(out, overwrite=overwrite) as outdir:
        return _run(field, geom, tiles, model, settings, execution, outdir)


@dataclass(frozen=True)
class Execution:
    """Where tiles run: ``workers`` local Dask processes (0: this process; None: one per
    core), or the Dask ``scheduler`` at an address; the model's torch ``device``; a progress
    bar or not."""

    workers: int | None = 0
    scheduler: str | None = None
    device: str = "cpu"
    progress: bool = False

    def tile_results(self, field, geom, tiles, model, settings):
        """Iterator over the tiles' :class:`~.region.RegionResult`, in completion order."""
        if self.scheduler is None and (self.workers == 0 or len(tiles) == 1):
            return _in_process(field, geom, tiles, model, settings)
        workers = self.workers or usable_cores()
        return _with_dask(field, geom, tiles, model, settings, workers, self.scheduler, self.device)


def _run(field, geom, tiles, model, settings, execution: Execution, outdir):
    from tqdm.auto import tqdm

    assembly = _Assembly(geom, int(model.stamp_size), outdir)
    results = execution.tile_results(field, geom, tiles, model, settings)
    bar = tqdm(total=len(tiles), unit="tile", desc="deblending", disable=not execution.progress)
    with bar:
        for result in results:
            assembly.add(result, settings.interpolation_order)
            bar.update()
    residual = assembly.residual(field)
    stamps = assembly.stamps()
    catalog = assembly.catalog(_meta(geom, model, settings))
    files: list[Path] = []
    if outdir is not None:
        write_catalog(catalog, outdir)
        for arr in [*assembly.models, *residual, stamps]:
            if isinstance(arr, np.memmap):
                arr.flush()
                arr.flags.writeable = False  # the result must not write into the outputs
        files = outdir.commit()
    bands = geom.band_ids
    return FieldResult(
        catalog=catalog,
        models=dict(zip(bands, assembly.models, strict=True)),
        residual=dict(zip(bands, residual, strict=True)),
        stamps=stamps,
        band_ids=bands,
        files=files,
    )
