"""``deblend_field``: a whole field, tile by tile, optionally in parallel with Dask.

The field is cut into tiles of the reference grid (:func:`~.geometry.plan_tiles`), each grown by
a margin of 1.5 stamp widths so that a galaxy whose detection lies in a tile's core has its whole
stamp and every neighbour that overlaps it inside the tile. Each tile is deblended independently
(:func:`~.region.deblend_region`) and reports only the galaxies of its core: every galaxy once.
Where tiles run is an :class:`~.execution.Execution`; the model images, residuals, stamps and
catalogue are put together by :class:`~.assembly.Assembly` (memory-mapped files with ``out``,
so memory stays bounded by a few tiles whatever the field's size).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from astropy.table import Table

from vaedeblend.fieldmode.assembly import Assembly, catalog_meta
from vaedeblend.fieldmode.detection import DetectionSettings
from vaedeblend.fieldmode.execution import Execution
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
from vaedeblend.fieldmode.outputs import OutputDir, write_catalog
from vaedeblend.fieldmode.region import DeblendSettings
from vaedeblend.fieldmode.sources import read_sources
from vaedeblend.pretrained import resolve_model

SCALE_TOLERANCE = 0.01  # relative: a field's pixel scale within 1 % of the model's is the same

# The keywords deblend_field took before it took a FieldImages, an Execution and settings
# (issue 14): still accepted for one release, with a DeprecationWarning.
IMAGE_KEYWORDS = (
    "bands",
    "variance",
    "weight",
    "mask",
    "psf",
    "gain",
    "pixel_scale_arcsec",
    "wcs",
    "sky_level",
    "zeropoint_mag",
    "image_zeropoint_mag",
    "depth_preset",
)
EXECUTION_KEYWORDS = {"tile_size": "tile_pixels", "workers": "workers", "scheduler": "scheduler",
                      "device": "device", "progress": "progress"}  # fmt: skip


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
    if not out.core_sigmas >= 0 or not out.truncation_nsigma > 0:
        raise ValueError(
            f"core_sigmas must be >= 0 and truncation_nsigma > 0, got {out.core_sigmas} and "
            f"{out.truncation_nsigma}"
        )
    return out


# ------------------------------------------------------------------------------------------
# The entry point
# ------------------------------------------------------------------------------------------


def deblend_field(
    images,
    model,
    *,
    settings: DeblendSettings | None = None,
    execution: Execution | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    sources=None,
    **deprecated,
) -> FieldResult:
    """Detect and deblend every galaxy of a field with a deblender.

    Args:
        images: a :class:`FieldImages` (:func:`read_fits`, :func:`from_arrays`; calibrated
            images through :func:`apply_image_zeropoint`), or FITS path(s) in electrons whose
            headers say everything (``BAND``, WCS or ``PIXSCALE``, ``SKYLEVEL``, ``PSF``).
        model: a loaded model, a shipped name (``lsst``, ``lsst+euclid``) or a model directory.
        settings: :class:`DeblendSettings` (passes, detection, reference band, ...);
            :func:`make_settings` builds one from single fields.
        execution: :class:`Execution` (tile size, Dask workers or scheduler, device, progress
            bar); default: one process, 1024-pixel tiles.
        out: output directory; the catalog (FITS, ECSV, Parquet with pyarrow), ``models.fits``,
            ``residual.fits`` and ``stamps.fits`` are written there, all or nothing.
        overwrite: replace the outputs of an earlier run in ``out`` (refused otherwise).
        sources: the galaxies to deblend, when known beforehand (a deeper catalogue): an
            astropy Table or a table file with columns ``ra``, ``dec`` (degrees) or ``x``,
            ``y`` (0-based reference-grid pixels); the first pass deblends them instead of
            detecting, and a refined model fits each stamp's catalogue neighbours
            (:mod:`~.sources`). Default: ``settings.sources`` (None: detect).
        **deprecated: the keywords of the earlier signature (``bands``, ``psf``, ...,
            ``tile_size``, ``workers``, ..., single settings such as ``max_iterations``):
            accepted for one release, with a ``DeprecationWarning``.

    Returns:
        :class:`FieldResult`. With ``out``, its images are read-only memory maps of the files.
    """
    if deprecated:
        images, settings, execution = _from_deprecated(images, settings, execution, deprecated)
    field = as_field(images)
    execution = execution or Execution()
    model = resolve_model(model, execution.device)  # vaedeblend.pretrained.resolve_model
    check_against_model(field, model)
    settings = make_settings(settings)
    if settings.posterior and not hasattr(model, "deblend_with_columns"):
        raise FieldInputError(
            "posterior columns need a refined model: refined(model, posterior=True) "
            "(command line: --refine --posterior)"
        )
    geom = field_geometry(field, settings.reference_band)
    if sources is not None or settings.sources is not None:
        known = read_sources(sources if sources is not None else settings.sources, geom)
        settings = replace(settings, sources=known)
    margin = math.ceil(1.5 * geom.stamp_extent_ref_pixels(int(model.stamp_size))) + 4
    tiles = plan_tiles(geom.ref_shape, execution.tile_pixels, margin)
    if out is None:
        return _run(field, geom, tiles, model, settings, execution, None)
    with OutputDir(out, overwrite=overwrite) as outdir:
        return _run(field, geom, tiles, model, settings, execution, outdir)


def _from_deprecated(images, settings, execution, keywords: dict):
    """The earlier signature's keywords as (images, settings, execution), with a warning."""
    warnings.warn(
        f"deblend_field({', '.join(sorted(keywords))}=...) is deprecated: describe the images "
        "with read_fits/from_arrays (a FieldImages), and pass settings=DeblendSettings(...) "
        "and execution=Execution(...)",
        DeprecationWarning,
        stacklevel=3,
    )
    described = {k: keywords.pop(k) for k in IMAGE_KEYWORDS if k in keywords}
    moved = {EXECUTION_KEYWORDS[k]: keywords.pop(k) for k in list(keywords)
             if k in EXECUTION_KEYWORDS}  # fmt: skip
    if moved:
        if int(moved.get("tile_pixels", 1)) < 1:
            raise FieldInputError(f"tile size must be at least 1 pixel, got {moved['tile_pixels']}")
        execution = replace(execution or Execution(), **moved)
    settings = make_settings(settings, **keywords)  # the rest: single settings
    if described:
        images = _described_images(images, described)
    return images, settings, execution


def _described_images(images, described: dict) -> FieldImages:
    zeropoint = described.pop("image_zeropoint_mag", None)
    preset = described.pop("depth_preset", None)
    if zeropoint is not None and described.get("gain") is not None:
        raise FieldInputError("give either a gain or an image zero point, not both")
    if zeropoint is not None:  # calibrated images: read as they are, the gain is set per band
        described["gain"] = 1.0
    field = as_field(images, **described)
    if zeropoint is not None:
        apply_image_zeropoint(field, float(zeropoint), preset)
    return field


def _run(field, geom, tiles, model, settings, execution: Execution, outdir):
    from tqdm.auto import tqdm

    assembly = Assembly(geom, int(model.stamp_size), outdir)
    results = execution.tile_results(field, geom, tiles, model, settings)
    bar = tqdm(total=len(tiles), unit="tile", desc="deblending", disable=not execution.progress)
    with bar:
        for result in results:
            assembly.add(result, settings.interpolation_order)
            bar.update()
    residual = assembly.residual(field)
    stamps = assembly.stamps()
    catalog = assembly.catalog(catalog_meta(geom, model, settings))
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
