"""scarlet2 (Melchior et al.): each blend modelled as a sum of sources, each a spectrum times a
non-parametric positive morphology, convolved to the observed PSFs and fitted to the pixels with
their noise (JAX, CPU).

Set up the way its quick-start guide does it: one source per peak found by a detection on the
S/N-weighted stack of the bands (``sep.extract`` at ``THRESHOLD_SIGMA``), initialised from the
Gaussian moments around the peak (falling back to the pixel spectrum and a compact morphology
where the moments fail), spectra and morphologies constrained positive, Adam for at most
``max_iter`` steps. Initial spectra are floored at a small positive value: a spectrum <= 0
(faint u band) under the positivity constraint would give NaN. The central galaxy is the source
nearest the believed centre; its model is rendered in every observed band.

Channels on several pixel grids (LSST + Euclid) are fitted jointly the way scarlet2 does
multi-resolution: one ``Observation`` per grid, each with a TAN WCS centred on the stamp's sky
position at its pixel scale, one model frame at the finest resolution covering them all
(``Frame.from_observations``), sources placed at the sky positions of the detections on the
first grid, and every observation rendered from the fitted model through its own PSF and
resampling. With ``first_grid_only`` the first channel's grid is fitted alone (LSST's, in
LSST + Euclid) and the other channels come back as zeros: what a scarlet2 user without
multi-resolution would do.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial

import numpy as np

from vaedeblend.models.api import DeblendContext, check_stamps

THRESHOLD_SIGMA = 3.0
MIN_PIXELS = 5
SPECTRUM_FLOOR = 1e-3


class Scarlet2Deblender:
    """scarlet2 as a :class:`~vaedeblend.models.api.Deblender` (see the module docstring)."""

    name = "scarlet2"

    def __init__(
        self,
        band_ids: Sequence[str],
        max_iter: int = 200,
        e_rel: float = 1e-4,
        first_grid_only: bool = False,
    ):
        self.band_ids = list(band_ids)
        self.max_iter, self.e_rel = int(max_iter), float(e_rel)
        self.first_grid_only = bool(first_grid_only)
        self.timings: dict[str, float] = {}

    def deblend(self, stamps, bands=None, context: DeblendContext | None = None) -> np.ndarray:
        if context is None or context.psf_images is None:
            raise ValueError("scarlet2 needs a DeblendContext with the band PSF images")
        x = check_stamps(stamps)
        scales = np.asarray(context.pixel_scales_arcsec, dtype=float)
        if self.first_grid_only and not np.allclose(scales, scales[0]):
            return self._first_grid(x, list(bands or context.band_ids), context, scales)
        from scarlet2.validation_utils import set_validation

        set_validation(False)
        out = np.zeros_like(x)
        times = []
        for i, blend in enumerate(x):
            start = time.perf_counter()
            centre = None if context.centre_pixels is None else context.centre_pixels[i]
            out[i] = self._central_model(blend, context, list(bands or context.band_ids), centre)
            times.append(time.perf_counter() - start)
        # the first blend includes JAX's compilation; report it apart from the steady state
        self.timings = {
            "first_blend_s": times[0] if times else float("nan"),
            "median_after_first_s": float(np.median(times[1:])) if len(times) > 1 else float("nan"),
        }
        return out

    def _first_grid(self, x, bands, context, scales) -> np.ndarray:
        """The channels on the first channel's grid fitted alone; the others zero."""
        from dataclasses import replace

        keep = np.flatnonzero(np.isclose(scales, scales[0]))
        psf = None if context.psf_images is None else np.asarray(context.psf_images)[keep]
        sub = replace(
            context, band_ids=tuple(bands[i] for i in keep), pixel_scales_arcsec=scales[keep],
            sky_levels_electrons=np.asarray(context.sky_levels_electrons)[keep], psf_images=psf,
        )  # fmt: skip
        out = np.zeros_like(x)
        out[:, keep] = self.deblend(np.ascontiguousarray(x[:, keep]), list(sub.band_ids), sub)
        return out

    def _central_model(self, blend, context, bands, centre) -> np.ndarray:
        import jax.numpy as jnp
        import scarlet2 as sc2
        from numpyro.distributions import constraints
        from scarlet2 import init

        sky = np.asarray(context.sky_levels_electrons, dtype=float)
        scales = np.asarray(context.pixel_scales_arcsec, dtype=float)
        psfs = np.asarray(context.psf_images, dtype=np.float32)
        weights = 1.0 / (sky[:, None, None] + np.clip(blend, 0, None))
        grids = _grids(scales)
        wcs = [stamp_wcs(scales[g[0]], blend.shape[-1]) for g in grids]
        observations = [
            sc2.Observation(
                jnp.asarray(blend[g]),
                jnp.asarray(weights[g]),
                psf=sc2.ArrayPSF(jnp.asarray(psfs[g])),
                wcs=w,
                channels=[bands[c] for c in g],
            )  # fmt: skip
            for g, w in zip(grids, wcs, strict=True)
        ]
        frame = sc2.Frame.from_observations(observations)
        for obs in observations:
            obs.match(frame)
        peaks = _detections(blend[grids[0]], sky[grids[0]])  # (x, y), first grid's pixels
        if len(peaks) == 0:
            return np.zeros_like(blend)
        centres = [wcs[0].pixel_to_world(x, y) for x, y in peaks]  # sky positions
        with sc2.Scene(frame) as scene:
            for c in centres:
                spectrum, morph = _initial_source(init, observations, wcs, c, frame.channels)
                sc2.Source(c, jnp.maximum(jnp.asarray(spectrum), SPECTRUM_FLOOR), morph)
        step = partial(sc2.relative_step, factor=0.05)
        with sc2.Parameters(scene):
            for k, source in enumerate(scene.sources):
                sc2.Parameter(source.spectrum, name=f"spectrum:{k}",
                              constraint=constraints.positive, stepsize=step)  # fmt: skip
                sc2.Parameter(source.morphology, name=f"morph:{k}",
                              constraint=constraints.positive, stepsize=0.1)  # fmt: skip
        fitted = scene.fit(observations, max_iter=self.max_iter, e_rel=self.e_rel,
                           progress_bar=False)  # fmt: skip
        size = blend.shape[-1]
        c = np.full(2, (size - 1) / 2) if centre is None else np.asarray(centre)
        k = int(np.argmin([float(((np.asarray(p) - c) ** 2).sum()) for p in peaks]))
        model = fitted.evaluate_source(fitted.sources[k])
        out = np.zeros_like(blend)
        for g, obs in zip(grids, observations, strict=True):
            out[g] = np.asarray(obs.render(model), np.float32)
        return out


def _initial_source(init, observations, wcs, centre, channels):
    """(spectrum over the model frame's ``channels``, morphology) of a source at sky position
    ``centre``: Gaussian moments on the first grid (where it was detected), which also give the
    morphology and leave the other grids' channels at 0; those are set from each grid's pixel
    spectrum where the source lies inside that grid, else the first grid's mean (a neighbour
    outside the smaller fine-pixel stamp). A channel left near 0 would stay there: the
    spectrum's steps are relative to its value."""
    import jax.numpy as jnp

    first = observations[0]
    try:
        spectrum, morph = init.from_gaussian_moments(first, centre, min_corr=0.99)
    except (ValueError, IndexError, AssertionError):
        spectrum, morph = init.pixel_spectrum(first, centre), init.compact_morphology()
    full = np.zeros(len(channels))
    mine = [channels.index(b) for b in first.frame.channels]
    full[mine] = _own_channels(spectrum, mine, len(channels))
    for obs, w in zip(observations[1:], wcs[1:], strict=True):
        theirs = [channels.index(b) for b in obs.frame.channels]
        x, y = w.world_to_pixel(centre)
        size = obs.data.shape[-1]
        if 0 <= x < size and 0 <= y < size:
            pixel = init.pixel_spectrum(obs, centre)
            full[theirs] = _own_channels(pixel, theirs, len(channels))
        else:
            full[theirs] = full[mine].mean()
    return jnp.asarray(full), morph


def _own_channels(spectrum, index: list[int], n_frame: int) -> np.ndarray:
    """An observation's entries of a spectrum that scarlet2 gives either over that
    observation's channels or over all the model frame's (the others then 0)."""
    values = np.asarray(spectrum, dtype=float).ravel()
    return values[index] if len(values) == n_frame else values


def _grids(scales: np.ndarray) -> list[list[int]]:
    """Channel indices of each pixel grid (one pixel scale), in order of first appearance."""
    grids: list[list[int]] = []
    for c, scale in enumerate(scales):
        for g in grids:
            if np.isclose(scales[g[0]], scale):
                g.append(c)
                break
        else:
            grids.append([c])
    return grids


def stamp_wcs(scale_arcsec: float, size: int):
    """A TAN WCS of a (size, size) stamp whose centre (GalSim ``true_center``) is the sky
    position shared by every grid of the stamp (contracts.md, positions)."""
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [(size + 1) / 2, (size + 1) / 2]  # FITS pixels are 1-based
    wcs.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    wcs.array_shape = (size, size)
    return wcs


def _detections(images: np.ndarray, sky: np.ndarray) -> list[tuple[float, float]]:
    """(x, y) of sep's detections on the S/N-weighted stack of one grid's channels."""
    import sep

    stack = (images / sky[:, None, None]).sum(axis=0).astype(np.float64)
    found = sep.extract(stack, THRESHOLD_SIGMA, err=np.sqrt((1 / sky).sum()), minarea=MIN_PIXELS)
    return [(float(p["x"]), float(p["y"])) for p in found]
