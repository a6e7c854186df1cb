"""One simulated sample: which galaxies, where, how centred, with which noise.

A sample is drawn from its own random generator, ``numpy.random.default_rng([seed, index,
attempt])``, so a dataset does not depend on how it is split into shards or workers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vaedeblend import measure
from vaedeblend.galaxy import Galaxy
from vaedeblend.instruments import Setup
from vaedeblend.simulation.noise import NOISE_MODELS, add_noise
from vaedeblend.simulation.render import Placement, StampRenderer

if TYPE_CHECKING:
    from vaedeblend.catalogs import GalaxyCatalog

CENTRINGS = ("centred", "uniform", "detected")
KINDS = ("isolated", "blended")


@dataclass(frozen=True)
class BlendConfig:
    """How samples are drawn.

    ``count_probabilities[k]`` is the probability of k+1 galaxies (paper: 1/4 each for 1-4).
    Neighbours are uniform in area in the annulus ``annulus_arcsec`` around the target.
    ``uniform_offset_arcsec``: half-width of the target's uniform offset (``uniform`` centring).
    ``detection_size_pixels``, ``detection_nsigma``: the reference-band image and threshold of
    the ``detected`` centring; ``min_separation_arcsec``: samples with another galaxy closer
    than this to the detected target are redrawn (counted).
    """

    kind: str = "blended"
    centring: str = "centred"
    count_probabilities: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
    annulus_arcsec: tuple[float, float] = (0.325, 1.5)
    uniform_offset_arcsec: float = 0.1
    noise: str = "poisson"
    shear: tuple[float, float] = (0.0, 0.0)
    detection_size_pixels: int = 128
    detection_nsigma: float = 5.0
    detection_npeaks: int = 4
    min_separation_arcsec: float = 0.325
    keep_undetected: bool = False
    max_attempts: int = 100

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} must be one of {KINDS}")
        if self.centring not in CENTRINGS:
            raise ValueError(f"centring {self.centring!r} must be one of {CENTRINGS}")
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"noise {self.noise!r} must be one of {NOISE_MODELS}")
        if not np.isclose(sum(self.count_probabilities), 1.0):
            raise ValueError(f"count probabilities {self.count_probabilities} do not sum to 1")
        inner, outer = self.annulus_arcsec
        if not 0 <= inner < outer:
            raise ValueError(f"annulus {self.annulus_arcsec} arcsec must have 0 <= inner < outer")

    @property
    def max_sources(self) -> int:
        return 1 if self.kind == "isolated" else len(self.count_probabilities)


@dataclass
class Sample:
    """One stamp: arrays (C, H, W) float32 electrons, and its galaxies (target first)."""

    blend: np.ndarray
    target: np.ndarray
    neighbours: list[np.ndarray]
    galaxies: list[Galaxy]
    placements: list[Placement]
    electrons: list[np.ndarray]  # per galaxy, (C,) total electrons
    noise_seed: int
    detected: bool = True
    attempts: dict = field(default_factory=lambda: {"no_peak": 0, "close": 0})

    @property
    def others(self) -> np.ndarray:
        return sum(self.neighbours, np.zeros_like(self.target))


class SampleMaker:
    """Draws samples for one setup, catalog and configuration."""

    def __init__(self, setup: Setup, catalog: GalaxyCatalog, config: BlendConfig):
        self.setup = setup
        self.catalog = catalog
        self.config = config
        self.renderer = StampRenderer(setup)
        self.ref = setup.index(setup.reference_band_id)
        self.sky = np.array([b.sky_level_electrons for b in setup.bands])

    def make(self, seed: int, index: int) -> Sample:
        attempts = {"no_peak": 0, "close": 0}
        for attempt in range(self.config.max_attempts):
            rng = np.random.default_rng([seed, index, attempt])
            sample = self._attempt(rng, attempts)
            if sample is not None:
                sample.attempts = attempts
                return sample
        raise RuntimeError(
            f"sample {index}: no acceptable sample in {self.config.max_attempts} attempts "
            f"({attempts['no_peak']} without a peak, {attempts['close']} with a close pair)"
        )

    # -- scene -------------------------------------------------------------------------------
    def _draw_scene(self, rng):
        cfg = self.config
        n = (
            1
            if cfg.kind == "isolated"
            else 1 + rng.choice(len(cfg.count_probabilities), p=cfg.count_probabilities)
        )
        rows = rng.integers(0, len(self.catalog), size=n)
        galaxies = [self.catalog.galaxy(int(r)) for r in rows]
        electrons = [self.renderer.electrons(g) for g in galaxies]
        # the brightest galaxy in the reference band (lowest LSST r magnitude) is the target
        order = np.argsort([-e[:, self.ref].sum() for e in electrons], kind="stable")
        galaxies = [galaxies[i] for i in order]
        electrons = [electrons[i] for i in order]
        rotations = rng.uniform(0.0, 360.0, size=n)
        positions = np.zeros((n, 2))
        if n > 1:
            inner, outer = cfg.annulus_arcsec
            radius = np.sqrt(rng.uniform(inner**2, outer**2, size=n - 1))  # uniform in area
            angle = rng.uniform(0.0, 2 * np.pi, size=n - 1)
            positions[1:] = np.c_[radius * np.cos(angle), radius * np.sin(angle)]
        if cfg.centring == "uniform":
            positions += rng.uniform(-cfg.uniform_offset_arcsec, cfg.uniform_offset_arcsec, size=2)
        return galaxies, electrons, rotations, positions

    def _attempt(self, rng, attempts) -> Sample | None:
        galaxies, electrons, rotations, positions = self._draw_scene(rng)
        detected, ref_noise = True, None
        if self.config.centring == "detected":
            found = self._detect(rng, galaxies, rotations, positions)
            if found is None:
                attempts["no_peak"] += 1
                if not self.config.keep_undetected:
                    return None
                detected = False
            else:
                shift, target, ref_noise = found
                positions = positions - shift
                order = [target] + [i for i in range(len(galaxies)) if i != target]
                galaxies = [galaxies[i] for i in order]
                electrons = [electrons[i] for i in order]
                rotations, positions = rotations[order], positions[order]
                separation = np.hypot(*(positions[1:] - positions[0]).T)
                if np.any(separation < self.config.min_separation_arcsec):
                    attempts["close"] += 1
                    return None
        placements = [
            Placement(float(x), float(y), float(r), self.config.shear)
            for (x, y), r in zip(positions, rotations, strict=True)
        ]
        images = [
            self.renderer.draw(g, p, e)
            for g, p, e in zip(galaxies, placements, electrons, strict=True)
        ]
        noise_seed = int(rng.integers(0, 2**63 - 1))
        truth_sum = sum(images, np.zeros_like(images[0]))
        blend = self.add_noise(truth_sum, noise_seed)
        if ref_noise is not None:
            blend[self.ref] = truth_sum[self.ref] + ref_noise
        return Sample(
            blend,
            images[0],
            images[1:],
            galaxies,
            placements,
            [e.sum(0) for e in electrons],
            noise_seed,
            detected,
        )

    # -- noise -------------------------------------------------------------------------------
    def add_noise(self, image: np.ndarray, noise_seed: int) -> np.ndarray:
        """Noisy, sky-subtracted (C, H, W) image: Poisson on sky + signal, or Gaussian with the
        sky variance alone (so that sheared calibration sets share the exact same noise)."""
        return add_noise(image, self.sky, noise_seed, self.config.noise)

    # -- detection ---------------------------------------------------------------------------
    def _detect(self, rng, galaxies, rotations, positions):
        """Peak finding on a noisy reference-band image (paper: photutils ``find_peaks``).

        Returns (shift_arcsec (2,), index of the galaxy nearest the brightest peak, the noise of
        the reference band cut to the stamp) or None when no peak passes the threshold.
        """
        # photutils is imported here, not at module level: it takes seconds to import and only
        # detected centring needs it
        from photutils.centroids import centroid_com
        from photutils.detection import find_peaks
        from photutils.utils.exceptions import NoDetectionsWarning

        cfg, ref = self.config, self.ref
        big = cfg.detection_size_pixels
        scale = self.setup.bands[ref].pixel_scale_arcsec
        image = np.zeros((big, big))
        for g, r, (x, y) in zip(galaxies, rotations, positions, strict=True):
            image += self.renderer.draw_band(g, Placement(x, y, r, cfg.shear), ref, big)
        sky = self.sky[ref]
        noise = (
            add_noise(image[None], np.array([sky]), int(rng.integers(0, 2**63 - 1)), cfg.noise)[0]
            - image
        )
        with warnings.catch_warnings():  # "no peaks" is an outcome here, counted by the caller
            warnings.simplefilter("ignore", NoDetectionsWarning)
            peaks = find_peaks(
                image + noise,
                threshold=cfg.detection_nsigma * np.sqrt(sky),
                n_peaks=cfg.detection_npeaks,
                centroid_func=centroid_com,
            )
        if peaks is None or len(peaks) == 0:
            return None
        best = peaks[np.argmax(peaks["peak_value"])]
        peak = np.array([best["x_centroid"], best["y_centroid"]], dtype=float)
        if not np.all(np.isfinite(peak)):
            peak = np.array([best["x_peak"], best["y_peak"]], dtype=float)
        size = self.setup.stamp_size_pixels
        # cut [k, k + size) so that the peak lies within half a pixel of the stamp's true centre
        start = np.round(peak - (size - 1) / 2).astype(int)
        start = np.clip(start, 0, big - size)
        shift_pixels = start + (size - 1) / 2 - (big - 1) / 2
        shift = shift_pixels * scale
        nearest = int(np.argmin(np.hypot(*(positions - (peak - (big - 1) / 2) * scale).T)))
        cut = noise[start[1] : start[1] + size, start[0] : start[0] + size].astype(np.float32)
        return shift, nearest, cut


def stamp_statistics(sample: Sample, ref: int, sky_ref: float) -> dict:
    """S/N, B_tot and closest-neighbour blendedness of the target in the reference band."""
    target = sample.target[ref]
    stats = {
        "snr": float(measure.snr(target, sky_ref)),
        "blendedness": float(measure.blendedness(target, sample.others[ref])),
        "blendedness_closest": 0.0,
    }
    if sample.neighbours:
        d = [
            np.hypot(
                p.dx_arcsec - sample.placements[0].dx_arcsec,
                p.dy_arcsec - sample.placements[0].dy_arcsec,
            )
            for p in sample.placements[1:]
        ]
        closest = sample.neighbours[int(np.argmin(d))][ref]
        stats["blendedness_closest"] = float(measure.blendedness(target, closest))
    return stats
