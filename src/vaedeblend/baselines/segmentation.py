"""Segmentation deblenders: detection and multi-threshold deblending on a detection image, the
central source's segment applied to every band.

Both work the way their users run them on a blend: a detection image (the sum of the
reference instrument's bands, each divided by its noise variance: an S/N-weighted stack), a
detection threshold in units of its noise, and the library's own deblending of touching
sources (``sep.extract``'s multi-threshold deblending; ``photutils.segmentation
.deblend_sources``). The central galaxy is the segment of the detection nearest the believed
centre (``DeblendContext.centre_pixels``, default the stamp centre). Its "deblended image" in
each band is the blend times that segment's mask: noise and all, and nothing outside it.
Channels on another pixel grid (Euclid next to LSST) get the segment mapped through the shared
sky position of the stamp centre (nearest pixel).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vaedeblend.models.api import DeblendContext, check_stamps

# Detection settings shared by both methods: 1.5 sigma over at least 5 connected pixels, 32
# deblending levels; the contrasts are each library's documented defaults.
THRESHOLD_SIGMA = 1.5
MIN_PIXELS = 5
N_LEVELS = 32


class SegmentationDeblender:
    """Base of the SEP and photutils baselines (a :class:`~vaedeblend.models.api.Deblender`).

    Args:
        band_ids: the channels the method expects (any order given at call time).
        detection_bands: the bands stacked for detection (default: those on the first
            channel's pixel grid).
    """

    name = "segmentation"

    def __init__(self, band_ids: Sequence[str], detection_bands: Sequence[str] | None = None):
        self.band_ids = list(band_ids)
        self.detection_bands = None if detection_bands is None else list(detection_bands)

    def deblend(
        self, stamps, bands: Sequence[str] | None = None, context: DeblendContext | None = None
    ) -> np.ndarray:
        """(N, C, H, W) electrons: each blend masked by its central source's segment."""
        if context is None:
            raise ValueError(f"{self.name} needs a DeblendContext (pixel scales, sky levels)")
        x = check_stamps(stamps)
        bands = list(bands or context.band_ids)
        if len(bands) != x.shape[1]:
            raise ValueError(f"{len(bands)} band ids for {x.shape[1]} channels")
        scales = np.asarray(context.pixel_scales_arcsec, dtype=float)
        sky = np.asarray(context.sky_levels_electrons, dtype=float)
        det = self._detection_channels(bands, scales)
        centres = context.centre_pixels
        out = np.zeros_like(x)
        for i, blend in enumerate(x):
            centre = None if centres is None else np.asarray(centres[i], dtype=float)
            stack = (blend[det] / sky[det, None, None]).sum(axis=0)
            noise = np.sqrt((1.0 / sky[det]).sum())  # sigma of the stack on empty sky
            mask = self.central_segment(stack, noise, centre)
            out[i] = blend * _masks_on_grids(mask, scales[det[0]], scales, x.shape[-1])
        return out

    def _detection_channels(self, bands: list[str], scales: np.ndarray) -> list[int]:
        if self.detection_bands is not None:
            missing = [b for b in self.detection_bands if b not in bands]
            if missing:
                raise ValueError(f"detection bands {missing} are not among {bands}")
            return [bands.index(b) for b in self.detection_bands]
        return [i for i in range(len(bands)) if np.isclose(scales[i], scales[0])]

    def central_segment(self, image, noise: float, centre) -> np.ndarray:
        """Boolean (H, W) mask of the central source's segment (all False if none found)."""
        raise NotImplementedError


def _nearest_label(labels: np.ndarray, ids, xs, ys, centre) -> int | None:
    """The label whose centroid (xs, ys) lies nearest ``centre`` (x, y); None if no source."""
    if len(ids) == 0:
        return None
    c = (np.asarray(labels.shape[::-1], float) - 1) / 2 if centre is None else centre
    d2 = (np.asarray(xs) - c[0]) ** 2 + (np.asarray(ys) - c[1]) ** 2
    return int(np.asarray(ids)[int(np.argmin(d2))])


def _masks_on_grids(mask: np.ndarray, scale: float, scales: np.ndarray, size: int):
    """(C, size, size) float32: ``mask`` (on a grid of ``scale`` arcsec) on each channel's grid,
    all grids sharing the stamp centre; nearest pixel."""
    out = np.empty((len(scales), size, size), np.float32)
    centre_out = (size - 1) / 2
    centre_in = (np.asarray(mask.shape) - 1) / 2
    for c, s in enumerate(scales):
        if np.isclose(s, scale) and mask.shape == (size, size):
            out[c] = mask
            continue
        offsets = (np.arange(size) - centre_out) * s / scale
        rows = np.rint(centre_in[0] + offsets).astype(int)
        cols = np.rint(centre_in[1] + offsets).astype(int)
        inside_r = (rows >= 0) & (rows < mask.shape[0])
        inside_c = (cols >= 0) & (cols < mask.shape[1])
        grid = mask[np.clip(rows, 0, mask.shape[0] - 1)][:, np.clip(cols, 0, mask.shape[1] - 1)]
        out[c] = grid & inside_r[:, None] & inside_c[None, :]
    return out


class SEPDeblender(SegmentationDeblender):
    """SEP (Source Extractor as a library): ``sep.extract`` with its multi-threshold
    deblending (32 levels, minimum contrast 0.005, SExtractor's default) and segmentation map."""

    name = "sep"

    def central_segment(self, image, noise, centre):
        import sep

        data = np.ascontiguousarray(image, dtype=np.float64)
        objects, segmap = sep.extract(
            data, THRESHOLD_SIGMA, err=noise, minarea=MIN_PIXELS, deblend_nthresh=N_LEVELS,
            deblend_cont=0.005, segmentation_map=True, clean=False,
        )  # fmt: skip
        ids = np.arange(1, len(objects) + 1)
        label = _nearest_label(segmap, ids, objects["x"], objects["y"], centre)
        return np.zeros(image.shape, bool) if label is None else segmap == label


class PhotutilsDeblender(SegmentationDeblender):
    """photutils: ``detect_sources`` at the threshold, then ``deblend_sources`` (32 levels,
    contrast 0.001, photutils' default, multi-threshold + watershed)."""

    name = "photutils"

    def central_segment(self, image, noise, centre):
        from photutils.segmentation import SourceCatalog, deblend_sources, detect_sources

        threshold = THRESHOLD_SIGMA * noise
        segm = detect_sources(image, threshold, n_pixels=MIN_PIXELS)
        if segm is None:
            return np.zeros(image.shape, bool)
        segm = deblend_sources(
            image, segm, n_pixels=MIN_PIXELS, n_levels=N_LEVELS, contrast=0.001, progress_bar=False
        )
        cat = SourceCatalog(image, segm)
        label = _nearest_label(segm.data, cat.label, cat.x_centroid, cat.y_centroid, centre)
        return np.zeros(image.shape, bool) if label is None else segm.data == label
