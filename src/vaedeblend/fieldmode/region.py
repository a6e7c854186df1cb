"""The iterative deblending of one region (a tile and its margin), every band.

1. Detect on the reference-grid bands of the *cumulative residual*: the original image minus
   every model found so far (the first pass sees the original image; with a source catalogue,
   :mod:`~.sources`, the first pass takes the catalogue's positions instead).
2. Drop detections within ``match_radius`` of a source already found (a re-detection of an
   imperfectly subtracted galaxy is not a new galaxy).
3. Cut each new source's stamps from the *original* image (the deblender was trained on blends,
   it extracts the central galaxy from them) and run the model in batches.
4. After the first pass, keep a new source only if its model explains the residual (the
   residual's chi^2 over its stamp drops by ``min_delta_chi2``); remember the rejected ones.
5. Paste the kept models into the model image; repeat until a pass finds nothing new or
   ``max_iterations`` passes ran.

Only the sources whose detection lies in the tile's core are measured and returned; the others
(in the margin) were deblended for context, and their own tile reports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sep

from vaedeblend import measure
from vaedeblend.fieldmode.catalog import FLAG_EDGE, FLAG_MASKED, measure_sources
from vaedeblend.fieldmode.detection import DetectionSettings, detect, unmatched
from vaedeblend.fieldmode.geometry import FieldGeometry, Tile, band_box
from vaedeblend.fieldmode.inputs import FieldImages
from vaedeblend.fieldmode.sources import SourceList, stamp_neighbours
from vaedeblend.fieldmode.stamps import (
    SHIFT_PAD,
    Placements,
    cut,
    cut_centred,
    paste_models,
    place,
)
from vaedeblend.models.api import DeblendContext
from vaedeblend.refinement.posterior import posterior_column_names

DEFAULT_MATCH_RADIUS_PIXELS = 1.5


@dataclass(frozen=True)
class DeblendSettings:
    """How a field is deblended.

    Attributes:
        max_iterations: detection + deblending passes (1: a single pass, as a plain
            detect-and-deblend).
        detection: sep settings (:class:`DetectionSettings`).
        match_radius_pixels: a detection closer than this (reference pixels) to a known
            source is the same source; None: max(1, half the reference PSF FWHM), or 1.5
            pixels without a PSF.
        background: ``none`` (images are sky-subtracted, the contract) or ``sep`` (subtract
            sep's background map from every band first).
        interpolation_order: spline order of the sub-pixel shifts between grids.
        batch_size: stamps per forward pass (None: the model's).
        min_delta_chi2: a source found after the first pass is kept only if its model lowers
            the chi^2 of the residual (reference-grid bands, over its stamp) by at least this
            much; a detection of what an imperfect model left behind (the wings of a bright
            galaxy) makes the deblender invent a galaxy that does not fit the residual.
        reference_band: detection grid and shape band (None: lsst_r, hsc_r, ... as
            :func:`~.geometry.choose_reference` picks).
        core_sigmas: a detection after the first pass within this many adaptive-moment sizes
            (sigma, reference band) of a known source's centre is what that source's model left
            in its core, not a new galaxy.
        truncation_nsigma: a known model whose reference-band stamp border averages more than
            this many pixel-noise sigmas is cut off by its stamp; later passes take no new
            source within 1.5 stamp half-widths of it (its light beyond the stamp, which no
            model holds, would be shared out to invented galaxies).
        posterior: add each galaxy's posterior quantiles of flux and shape to the catalogue
            (a deblender with ``deblend_with_columns``: ``refined(model, posterior=True)``).
        sources: known galaxy positions (a catalogue, :mod:`~.sources`): the first pass
            deblends them instead of detecting, and a refined deblender fits the known
            galaxies on each stamp at their positions instead of detecting them in the stamp.
    """

    max_iterations: int = 3
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    match_radius_pixels: float | None = None
    background: str = "none"
    interpolation_order: int = 3
    batch_size: int | None = None
    min_delta_chi2: float = 25.0
    reference_band: str | None = None
    core_sigmas: float = 1.25
    truncation_nsigma: float = 1.0
    posterior: bool = False
    sources: SourceList | None = None

    def match_radius(self, geom: FieldGeometry) -> float:
        """Re-detection radius, reference pixels."""
        if self.match_radius_pixels is not None:
            return float(self.match_radius_pixels)
        fwhm = geom.fwhm_pixels[geom.ref]
        return max(1.0, 0.5 * fwhm) if fwhm else DEFAULT_MATCH_RADIUS_PIXELS


@dataclass
class Region:
    """The pixels of one tile (core + margin) in every band.

    Attributes:
        tile: the tile.
        origins: per band, the global (x, y) pixel of the arrays' [0, 0] pixel.
        images: per band, (h, w) float32 electrons, sky-subtracted, bad pixels set to 0.
        noise: per band, (h, w) float32 noise variance without the sources' Poisson noise
            (or the full variance map where given), electrons^2; 0 on bad pixels.
        bad: per band, (h, w) bool, masked / NaN / infinite pixels.
    """

    tile: Tile
    origins: list[tuple[int, int]]
    images: list[np.ndarray]
    noise: list[np.ndarray]
    bad: list[np.ndarray]


@dataclass
class RegionResult:
    """The sources a tile owns: measured columns (N rows), model stamps (N, C, S, S) electrons,
    and where the stamps go in each band (:class:`Placements`)."""

    tile: int
    columns: dict[str, np.ndarray]
    stamps: np.ndarray
    placements: Placements
    n_deblended: int = 0


def _background_noise(image: np.ndarray, bad: np.ndarray, sky_level: float | None):
    """Noise variance (electrons^2) of a band without a variance map: the sky's Poisson
    variance when its level is known, else sep's sigma-clipped background rms squared."""
    if sky_level is not None:
        return np.full(image.shape, float(sky_level), dtype=np.float32)
    if bad.all():
        return np.zeros(image.shape, dtype=np.float32)
    rms = sep.Background(np.ascontiguousarray(image), mask=bad).globalrms
    return np.full(image.shape, rms * rms, dtype=np.float32)


def read_region(field: FieldImages, geom: FieldGeometry, tile: Tile, settings: DeblendSettings):
    """Read a tile's pixels from every band (electrons, bad pixels masked and zeroed)."""
    origins, images, noise, bad = [], [], [], []
    for b, band in enumerate(field.bands):
        x0, x1, y0, y1 = band_box(geom, b, tile.ext)
        image, variance, mask = band.read(slice(y0, y1), slice(x0, x1))
        if settings.background == "sep" and not mask.all():
            image -= sep.Background(image, mask=mask).back()
            image[mask] = 0.0
        if variance is None:
            variance = _background_noise(image, mask, band.sky_level)
            variance[mask] = 0.0
        origins.append((x0, y0))
        images.append(image)
        noise.append(variance)
        bad.append(mask)
    return Region(tile, origins, images, noise, bad)


def _detection_noise(geom, region, b, model_image, settings) -> np.ndarray:
    """Noise variance of band ``b``'s residual, electrons^2 (see detection.py)."""
    var = region.noise[b].astype(np.float64)
    if not geom.has_variance_map[b]:
        var = var + np.maximum(model_image, 0.0)  # Poisson noise of the galaxies found
    return var + (settings.detection.model_error * model_image) ** 2


def cut_stamps(region: Region, placements: Placements, size: int, order: int):
    """(stamps (N, C, S, S) electrons from the original images, masked (N,) bool)."""
    n, c = placements.x0.shape
    stamps = np.zeros((n, c, size, size), dtype=np.float32)
    masked = np.zeros(n, dtype=bool)
    bad = [m.astype(np.float32) for m in region.bad]
    for i in range(n):
        for b in range(c):
            x0, y0 = int(placements.x0[i, b]), int(placements.y0[i, b])
            stamps[i, b] = cut_centred(
                region.images[b],
                region.origins[b],
                x0,
                y0,
                float(placements.dx[i, b]),
                float(placements.dy[i, b]),
                size,
                order,
            )
            masked[i] |= bool(cut(bad[b], region.origins[b], x0, y0, size).any())
    return stamps, masked


def stamp_context(geom: FieldGeometry, region: Region) -> DeblendContext:
    """What the field tells a deblender besides the pixels: band ids, pixel scales, the sky
    per pixel (electrons: the median noise variance of the region's good pixels, which is the
    sky's Poisson variance for images at the contract's noise) and the PSF images where every
    band has one of the same size."""
    sky = [
        float(np.median(v[~bad])) if (~bad).any() else 0.0
        for v, bad in zip(region.noise, region.bad, strict=True)
    ]
    psfs = geom.psfs if geom.psfs and all(p is not None for p in geom.psfs) else None
    same_size = psfs is not None and len({np.shape(p) for p in psfs}) == 1
    return DeblendContext(
        band_ids=tuple(geom.band_ids),
        pixel_scales_arcsec=np.asarray(geom.scales, dtype=float),
        sky_levels_electrons=np.asarray(sky, dtype=float),
        psf_images=np.stack(psfs) if same_size else None,
    )


def _run_model(model, stamps, context: DeblendContext, settings, shape_band: str, positions):
    """(the deblender's central galaxies (the ``Deblender`` contract, models/api.py), extra
    catalogue columns: the posterior quantiles with ``settings.posterior``). ``positions``:
    the known galaxies of each stamp for a refined deblender to fit (None: it detects them)."""
    bands = list(context.band_ids)
    kwargs = {} if positions is None else {"positions": positions}
    if settings.posterior:
        out, columns = model.deblend_with_columns(
            stamps, bands, context, shape_band=shape_band, **kwargs
        )
        return np.asarray(out), columns
    if settings.batch_size is not None:
        kwargs["batch_size"] = settings.batch_size
    return np.asarray(model.deblend(stamps, bands=bands, context=context, **kwargs)), {}


def known_neighbours(geom: FieldGeometry, settings, found, x, y, placement: Placements, model):
    """Each new source's stamp's known galaxies (:func:`~.sources.stamp_neighbours`: the
    sources found so far and this pass's), for a refined deblender to fit; None without a
    catalogue (the deblender then detects them in the stamp) or for a deblender that fits no
    neighbours."""
    k = getattr(getattr(model, "settings", None), "max_galaxies", None)
    if settings.sources is None or k is None:
        return None
    size = int(model.stamp_size)
    known_x, known_y = found.positions()
    half = (size - 1) / 2
    centres = (placement.x0[:, geom.ref] + half, placement.y0[:, geom.ref] + half)
    everyone = (np.concatenate([known_x, x]), np.concatenate([known_y, y]))
    own = len(known_x) + np.arange(len(x))
    return stamp_neighbours(centres, everyone, own, size / 2, geom.scales[geom.ref], k)


@dataclass
class _Found:
    """Sources found so far in a region, one list entry per pass."""

    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    iteration: list[np.ndarray] = field(default_factory=list)
    stamps: list[np.ndarray] = field(default_factory=list)
    placements: list[Placements] = field(default_factory=list)
    masked: list[np.ndarray] = field(default_factory=list)
    columns: list[dict[str, np.ndarray]] = field(default_factory=list)
    sizes: list[np.ndarray] = field(default_factory=list)
    truncated: list[np.ndarray] = field(default_factory=list)

    def add(self, x, y, iteration: int, stamps, placement: Placements, masked, columns) -> None:
        """Record the sources of one pass (``columns``: the deblender's extra ones)."""
        self.x.append(x)
        self.y.append(y)
        self.iteration.append(np.full(len(x), iteration, dtype=np.int16))
        self.stamps.append(np.asarray(stamps, dtype=np.float32))
        self.placements.append(placement)
        self.masked.append(masked)
        self.columns.append(columns)

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of every source so far, global reference pixels."""
        return np.concatenate([np.zeros(0), *self.x]), np.concatenate([np.zeros(0), *self.y])

    def add_extent(self, models_ref: np.ndarray, pixel_sigma: float, settings) -> None:
        """Record the adaptive-moment size (reference pixels) of the pass's (N, S, S)
        reference-band models, and whether each is cut off by its stamp."""
        if not len(models_ref):
            self.sizes.append(np.zeros(0))
            self.truncated.append(np.zeros(0, bool))
            return
        sizes = measure.measure_shapes(models_ref, None, 1.0, method="adaptive").sigma_arcsec
        border = np.concatenate(
            [models_ref[:, :2].reshape(len(models_ref), -1),
             models_ref[:, -2:].reshape(len(models_ref), -1),
             models_ref[:, 2:-2, :2].reshape(len(models_ref), -1),
             models_ref[:, 2:-2, -2:].reshape(len(models_ref), -1)], axis=1,
        )  # fmt: skip
        self.sizes.append(np.nan_to_num(sizes, nan=0.0))
        self.truncated.append(border.mean(axis=1) > settings.truncation_nsigma * pixel_sigma)


def later_pass_vetoes(x, y, found: _Found, settings, stamp_half_ref: float) -> np.ndarray:
    """(N,) bool: detections of a later pass that are a known source's leftovers: inside its
    core (``core_sigmas`` sizes) or near a model cut off by its stamp (see DeblendSettings)."""
    kx, ky = found.positions()
    if not len(kx) or not len(x):
        return np.zeros(len(x), bool)
    sizes = np.concatenate(found.sizes)
    truncated = np.concatenate(found.truncated)
    dx, dy = x[:, None] - kx[None], y[:, None] - ky[None]
    core = np.hypot(dx, dy) <= settings.core_sigmas * sizes[None]
    wing = truncated[None] & (np.maximum(abs(dx), abs(dy)) <= 1.5 * stamp_half_ref)
    return (core | wing).any(axis=1)


def delta_chi2(residual, noise, origins, stamps, placement: Placements, bands) -> np.ndarray:
    """(N,) chi^2 of the residual minus chi^2 of (residual - model) over each source's stamp,
    summed over the reference-grid ``bands``: sum((2 R m - m^2) / V). Positive when the model
    explains the residual; ``residual`` and ``noise`` (electrons, electrons^2) are per band."""
    size = stamps.shape[-1]
    out = np.zeros(len(placement))
    for i in range(len(placement)):
        for k, b in enumerate(bands):
            x0, y0 = int(placement.x0[i, b]), int(placement.y0[i, b])
            r = cut(residual[k], origins[b], x0, y0, size).astype(np.float64)
            v = cut(noise[k], origins[b], x0, y0, size).astype(np.float64)
            m = stamps[i, b].astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[i] += np.where(v > 0, (2 * r * m - m * m) / v, 0.0).sum()
    return out


def deblend_region(geom: FieldGeometry, region: Region, model, settings: DeblendSettings):
    """Iteratively detect and deblend the sources of one region; measure those it owns."""
    size = int(model.stamp_size)
    order = settings.interpolation_order
    models = [np.zeros_like(im) for im in region.images]
    ref_bands = geom.detection_bands
    bad_ref = np.logical_or.reduce([region.bad[b] for b in ref_bands])
    radius = settings.match_radius(geom)
    context = stamp_context(geom, region)
    pixel_sigma = float(np.sqrt(context.sky_levels_electrons[geom.ref]))
    half_stamp = geom.stamp_extent_ref_pixels(size) / 2
    found, rejected = _Found(), _Found()
    for iteration in range(1, settings.max_iterations + 1):
        residual = [region.images[b] - models[b] for b in ref_bands]
        noise = [_detection_noise(geom, region, b, models[b], settings) for b in ref_bands]
        if iteration == 1 and settings.sources is not None:
            x, y = settings.sources.within(region.tile.ext)
        else:
            x, y = detect(residual, noise, bad_ref, region.origins[geom.ref], settings.detection)
        known = [
            np.concatenate(p) for p in zip(found.positions(), rejected.positions(), strict=True)
        ]
        keep = unmatched(x, y, *known, radius)
        x, y = x[keep], y[keep]
        if iteration > 1:
            veto = later_pass_vetoes(x, y, found, settings, half_stamp)
            rejected.x.append(x[veto])
            rejected.y.append(y[veto])
            x, y = x[~veto], y[~veto]
        if not len(x):
            break
        placement = place(geom, x, y, size)
        stamps, masked = cut_stamps(region, placement, size, order)
        positions = known_neighbours(geom, settings, found, x, y, placement, model)
        shape_band = geom.band_ids[geom.ref]
        out, extra = _run_model(model, stamps, context, settings, shape_band, positions)
        accept = np.ones(len(x), dtype=bool)
        if iteration > 1:
            gain = delta_chi2(residual, noise, region.origins, out, placement, ref_bands)
            accept = gain >= settings.min_delta_chi2
            rejected.x.append(x[~accept])
            rejected.y.append(y[~accept])
        placement = placement.subset(accept)
        paste_models(models, region.origins, out[accept], placement, order)
        extra = {k: v[accept] for k, v in extra.items()}
        found.add(x[accept], y[accept], iteration, out[accept], placement, masked[accept], extra)
        found.add_extent(out[accept][:, geom.ref], pixel_sigma, settings)
    return _owned_result(geom, region, models, size, order, found, settings)


@dataclass
class GridCuts:
    """Each measured galaxy's surroundings on every band's own pixel grid, (N, C, P, P) with
    P = S + 2 SHIFT_PAD pixels, all cut at the same place: ``own`` its model moved onto the grid
    (as pasted), ``image`` the original image, ``total`` the sum of all models (its own
    included), ``noise`` the noise variance (electrons^2; see :class:`Region`), ``inside``
    True on pixels of the image (False where the cut hangs over an edge)."""

    own: np.ndarray
    image: np.ndarray
    total: np.ndarray
    noise: np.ndarray
    inside: np.ndarray


def grid_cuts(region: Region, models, stamps, placement: Placements, order: int) -> GridCuts:
    """:class:`GridCuts` of model stamps (N, C, S, S) placed by ``placement``."""
    n, c, size = stamps.shape[0], stamps.shape[1], stamps.shape[-1]
    big = size + 2 * SHIFT_PAD
    arrays = {
        k: np.zeros((n, c, big, big), np.float32)
        for k in ("own", "image", "total", "noise", "inside")
    }
    # outside the region (image edge) the noise is unknown: take the band's median
    fills = [float(np.median(v)) if v.size else 0.0 for v in region.noise]
    ones = [np.ones(im.shape, np.float32) for im in region.images]
    for i in range(n):
        for b in range(c):
            patch, x, y = placement.patch(stamps[i, b], i, b, order)
            if patch.shape[0] == size:  # not shifted: pad to the common cut size
                patch, x, y = np.pad(patch, SHIFT_PAD), x - SHIFT_PAD, y - SHIFT_PAD
            origin = region.origins[b]
            arrays["own"][i, b] = patch
            arrays["image"][i, b] = cut(region.images[b], origin, x, y, big)
            arrays["total"][i, b] = cut(models[b], origin, x, y, big)
            arrays["noise"][i, b] = cut(region.noise[b], origin, x, y, big, fills[b])
            arrays["inside"][i, b] = cut(ones[b], origin, x, y, big)
    arrays["inside"] = arrays["inside"] > 0
    return GridCuts(**arrays)


def _owned_result(geom, region, models, size: int, order: int, found: _Found, settings):
    """Measure the sources the tile owns (detected in its core)."""
    c = geom.n_bands
    x, y = found.positions()
    owned = region.tile.owns(x, y)
    stamps = np.concatenate([np.zeros((0, c, size, size), np.float32), *found.stamps])[owned]
    placement = Placements.concatenate(found.placements, c).subset(owned)
    masked = np.concatenate([np.zeros(0, bool), *found.masked])[owned]
    cuts = grid_cuts(region, models, stamps, placement, order)
    flags = np.where(placement.edge, FLAG_EDGE, 0) | np.where(masked, FLAG_MASKED, 0)
    cols = {"x": x[owned], "y": y[owned]}
    cols["ra"], cols["dec"] = geom.to_sky(cols["x"], cols["y"])
    for b, band in enumerate(geom.band_ids):
        cols[f"x_{band}"], cols[f"y_{band}"] = geom.to_band(b, cols["x"], cols["y"])
    cols["iteration"] = np.concatenate([np.zeros(0, np.int16), *found.iteration])[owned]
    cols.update(measure_sources(stamps, cuts, geom, flags))
    if settings.posterior:  # the same columns in every tile, found sources or not
        for name in posterior_column_names(geom.band_ids):
            parts = [c[name] for c in found.columns]
            cols[name] = np.concatenate([np.zeros(0), *parts])[owned]
    return RegionResult(region.tile.index, cols, stamps, placement, n_deblended=len(x))
