"""Measurements on noiseless or deblended images: S/N, blendedness, fluxes, shapes, SSIM.

Images are arrays in electrons, sky-subtracted. Functions that work on one band take axes
(..., H, W) or, where a loop over stamps is needed (GalSim HSM, sep), a batch (N, H, W).
Pixel coordinates follow numpy: ``image[y, x]``; the stamp centre is GalSim's ``true_center``,
i.e. ((W - 1) / 2, (H - 1) / 2) in 0-based pixel coordinates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import galsim
import numpy as np
import sep
from scipy import ndimage

SHAPE_METHODS = ("ksb", "adaptive")


def snr(image_electrons: np.ndarray, sky_level_electrons: float) -> np.ndarray:
    """S/N of a noiseless image (paper formula): sqrt(sum(s^2 / (s + sky))) over the stamp.

    ``image_electrons`` has axes (..., H, W); ``sky_level_electrons`` is the sky per pixel.
    """
    s = np.asarray(image_electrons, dtype=np.float64)
    return np.sqrt(np.sum(s * s / (s + sky_level_electrons), axis=(-2, -1)))


def blendedness(target_electrons: np.ndarray, others_electrons: np.ndarray) -> np.ndarray:
    """B_tot = 1 - sum(I_c^2) / sum(I_c (I_c + I_others)) on noiseless images (axes ..., H, W).

    0 for an isolated galaxy, towards 1 as the neighbours' light dominates the target's pixels.
    """
    c = np.asarray(target_electrons, dtype=np.float64)
    o = np.asarray(others_electrons, dtype=np.float64)
    own = np.sum(c * c, axis=(-2, -1))
    total = np.sum(c * (c + o), axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1.0 - own / total, 0.0)


def blendedness_each(target_electrons: np.ndarray, neighbours_electrons: np.ndarray) -> np.ndarray:
    """B_tot of the target against each neighbour alone.

    ``target_electrons`` has axes (..., H, W); ``neighbours_electrons`` (..., K, H, W), noiseless,
    zero-padded (a zero neighbour gives 0). Returns (..., K).
    """
    c = np.asarray(target_electrons, dtype=np.float64)[..., None, :, :]
    return blendedness(c, neighbours_electrons)


def blendedness_closest(
    target_electrons: np.ndarray,
    neighbours_electrons: np.ndarray,
    distances_arcsec: np.ndarray | None = None,
) -> np.ndarray:
    """Closest-neighbour blendedness: B_tot against the single closest neighbour.

    ``neighbours_electrons`` is (..., K, H, W), zero-padded. With ``distances_arcsec`` (..., K)
    (NaN or inf for padding) the closest is the nearest in distance; without it, the neighbour
    that blends most with the target (largest single-neighbour B_tot), which is the nearest one
    for galaxies of similar size. Returns (...,); 0 when there is no neighbour.
    """
    each = blendedness_each(target_electrons, neighbours_electrons)
    if each.shape[-1] == 0:
        return np.zeros(each.shape[:-1])
    if distances_arcsec is None:
        return each.max(axis=-1)
    d = np.where(np.isfinite(distances_arcsec), distances_arcsec, np.inf)
    idx = np.argmin(d, axis=-1)[..., None]
    closest = np.take_along_axis(each, idx, axis=-1)[..., 0]
    return np.where(np.isfinite(np.min(d, axis=-1)), closest, 0.0)


# --------------------------------------------------------------------------------------------
# Fluxes and magnitudes
# --------------------------------------------------------------------------------------------


def flux_sum(images_electrons: np.ndarray) -> np.ndarray:
    """Paper flux: sum over the stamp, electrons. Axes (..., H, W) -> (...)."""
    # Accumulate in float64 without copying a float32 batch.
    return np.sum(np.asarray(images_electrons), axis=(-2, -1), dtype=np.float64)


def stamp_centre(shape: tuple[int, ...]) -> tuple[float, float]:
    """GalSim ``true_center`` of a (..., H, W) stamp as 0-based (x, y) pixel coordinates."""
    h, w = shape[-2], shape[-1]
    return (w - 1) / 2.0, (h - 1) / 2.0


def aperture_flux(
    images_electrons: np.ndarray,
    pixel_scale_arcsec: float,
    radius_arcsec: float = 1.0,
    centres_xy: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Circular aperture photometry with ``sep.sum_circle`` (exact pixel overlap), as MADNESS.

    Args:
        images_electrons: (N, H, W), one band, electrons.
        pixel_scale_arcsec: pixel side of that band, arcsec.
        radius_arcsec: aperture radius, arcsec (converted to this band's pixels).
        centres_xy: (N, 2) 0-based pixel centres; default the stamp centre (``true_center``).

    Returns:
        flux (N,) electrons, and flags (N,) int (sep flags; ``sep.APER_TRUNC`` when the
        aperture crosses the stamp edge).
    """
    imgs = np.asarray(images_electrons)
    n = imgs.shape[0]
    if centres_xy is None:
        centres_xy = np.tile(stamp_centre(imgs.shape), (n, 1))
    radius_pix = radius_arcsec / pixel_scale_arcsec
    flux = np.empty(n)
    flags = np.zeros(n, dtype=np.int64)
    for i in range(n):
        # sep needs a C-contiguous native-endian array.
        data = np.ascontiguousarray(imgs[i], dtype=np.float64)
        f, _, flag = sep.sum_circle(
            data, [centres_xy[i, 0]], [centres_xy[i, 1]], radius_pix, subpix=0
        )
        flux[i], flags[i] = f[0], flag[0]
    return flux, flags


def flux_to_mag(flux_electrons: np.ndarray, zeropoint_mag: float, exposure_s: float) -> np.ndarray:
    """AB magnitude from a flux in electrons: m = zp - 2.5 log10(flux / t); NaN if flux <= 0."""
    f = np.asarray(flux_electrons, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(f > 0, zeropoint_mag - 2.5 * np.log10(f / exposure_s), np.nan)


def mag_error(flux_out: np.ndarray, flux_in: np.ndarray) -> np.ndarray:
    """Signed magnitude error -2.5 log10(F_out / F_in); NaN where either flux is <= 0."""
    fo = np.asarray(flux_out, dtype=np.float64)
    fi = np.asarray(flux_in, dtype=np.float64)
    ok = (fo > 0) & (fi > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, -2.5 * np.log10(fo / fi), np.nan)


# --------------------------------------------------------------------------------------------
# Shapes (GalSim HSM)
# --------------------------------------------------------------------------------------------


@dataclass
class ShapeResult:
    """Shapes of a batch of N stamps.

    Attributes:
        g1, g2: reduced-shear ellipticity (N,); NaN where the measurement failed.
        sigma_arcsec: adaptive-moments size sigma (N,), arcsec; NaN on failure.
        failed: (N,) bool, True where the measurement failed (HSM error, non-finite, |g| > 1).
        reasons: per-reason failure counts (``hsm_error``, ``nonfinite_image``, ``abs_g_gt_1``).
        method: ``ksb`` or ``adaptive``.
    """

    g1: np.ndarray
    g2: np.ndarray
    sigma_arcsec: np.ndarray
    failed: np.ndarray
    reasons: dict[str, int] = field(default_factory=dict)
    method: str = "ksb"

    @property
    def n_failed(self) -> int:
        """Number of stamps whose shape could not be measured."""
        return int(np.count_nonzero(self.failed))

    @property
    def abs_g(self) -> np.ndarray:
        """|g| (N,), NaN on failure."""
        return np.hypot(self.g1, self.g2)


def _one_shape(
    image: np.ndarray, psf: galsim.Image | None, scale: float, method: str
) -> tuple[float, float, float, str]:
    """(g1, g2, sigma_arcsec, failure reason or '') of one (H, W) stamp."""
    if not np.all(np.isfinite(image)):
        return np.nan, np.nan, np.nan, "nonfinite_image"
    img = galsim.Image(np.ascontiguousarray(image, dtype=np.float64), scale=scale)
    try:
        if method == "ksb":
            res = galsim.hsm.EstimateShear(img, psf, shear_est="KSB", strict=False)
            g1, g2 = res.corrected_g1, res.corrected_g2
        else:
            res = galsim.hsm.FindAdaptiveMom(img, strict=False)
            g1, g2 = res.observed_shape.g1, res.observed_shape.g2
    except (galsim.GalSimError, ValueError, RuntimeError):
        # strict=False catches HSM's own failures; the rest (e.g. a degenerate shape that
        # galsim.Shear refuses) still count as failures rather than aborting the batch.
        return np.nan, np.nan, np.nan, "hsm_error"
    if res.error_message or res.moments_status != 0:
        return np.nan, np.nan, np.nan, "hsm_error"
    if not (np.isfinite(g1) and np.isfinite(g2)) or g1 * g1 + g2 * g2 > 1.0:
        return np.nan, np.nan, np.nan, "abs_g_gt_1"
    return float(g1), float(g2), float(res.moments_sigma) * scale, ""


def measure_shapes(
    images_electrons: np.ndarray,
    psf_image: np.ndarray | None,
    pixel_scale_arcsec: float,
    method: str = "ksb",
) -> ShapeResult:
    """Ellipticities of a batch of stamps of one band with GalSim HSM.

    Args:
        images_electrons: (N, H, W) electrons, one band.
        psf_image: (P, P) PSF image of that band at the same pixel scale (any normalisation);
            needed for ``ksb``, ignored for ``adaptive``.
        pixel_scale_arcsec: pixel side, arcsec.
        method: ``ksb``: PSF-corrected KSB shear estimate (``EstimateShear(..., 'KSB')``,
            ``corrected_g1/g2``), as in the paper. ``adaptive``: ``FindAdaptiveMom``
            ``observed_shape`` of the PSF-convolved image (not PSF-corrected), as MADNESS.

    Failures are never dropped: they give NaN and ``failed=True``, counted by reason.
    """
    if method not in SHAPE_METHODS:
        raise ValueError(f"unknown shape method {method!r}; use one of {SHAPE_METHODS}")
    imgs = np.asarray(images_electrons)
    if imgs.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {imgs.shape}")
    psf = None
    if method == "ksb":
        if psf_image is None:
            raise ValueError("KSB needs the PSF image")
        psf = galsim.Image(
            np.ascontiguousarray(psf_image, dtype=np.float64), scale=pixel_scale_arcsec
        )
    rows = [_one_shape(im, psf, pixel_scale_arcsec, method) for im in imgs]
    g1, g2, sig = (np.array([r[k] for r in rows], dtype=np.float64) for k in range(3))
    reasons = Counter(r[3] for r in rows if r[3])
    failed = np.array([bool(r[3]) for r in rows], dtype=bool)
    return ShapeResult(g1, g2, sig, failed, dict(reasons), method)


# --------------------------------------------------------------------------------------------
# Image similarity and residuals
# --------------------------------------------------------------------------------------------


def ssim(
    reference: np.ndarray,
    image: np.ndarray,
    data_range: float | np.ndarray | None = None,
    sigma_pix: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """Mean structural similarity (Wang et al. 2004) per stamp, Gaussian window.

    Matches scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``: local statistics with a Gaussian window (truncated at
    3.5 sigma, reflective edges), constants C1 = (k1 L)^2, C2 = (k2 L)^2, and the SSIM map
    averaged after cropping the half-window at the edges.

    Args:
        reference, image: (..., H, W); the same shape.
        data_range: L, per stamp (...,) or scalar; default max - min of ``reference`` per stamp
            (the noiseless truth), since float images have no natural range.
    Returns:
        (...,) mean SSIM; 1 for identical images.
    """
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(image, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if data_range is None:
        data_range = x.max(axis=(-2, -1)) - x.min(axis=(-2, -1))
    lr = np.asarray(data_range, dtype=np.float64)[..., None, None]
    c1, c2 = (k1 * lr) ** 2, (k2 * lr) ** 2
    sig = [0.0] * (x.ndim - 2) + [sigma_pix, sigma_pix]

    def smooth(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma=sig, mode="reflect", truncate=3.5)

    mx, my = smooth(x), smooth(y)
    vx = smooth(x * x) - mx * mx
    vy = smooth(y * y) - my * my
    cxy = smooth(x * y) - mx * my
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    pad = int(3.5 * sigma_pix + 0.5)
    return smap[..., pad : smap.shape[-2] - pad, pad : smap.shape[-1] - pad].mean(axis=(-2, -1))


def residual_stats(
    output_electrons: np.ndarray,
    target_electrons: np.ndarray,
    variance_electrons2: np.ndarray | float,
) -> dict[str, np.ndarray]:
    """Pixel residual statistics per stamp, axes (..., H, W) -> (...).

    ``variance_electrons2`` is the per-pixel noise variance of the input (e.g. sky + noiseless
    blend for Poisson noise), broadcastable to the images. Returns ``mean`` and ``rms`` of
    output - target (electrons) and ``chi_mean`` and ``chi_rms`` of the residual over
    sqrt(variance) (dimensionless; chi_rms < 1 means the residual is below the input noise).
    """
    r = np.asarray(output_electrons, dtype=np.float64) - np.asarray(target_electrons, np.float64)
    chi = r / np.sqrt(np.asarray(variance_electrons2, dtype=np.float64))
    ax = (-2, -1)
    return {
        "mean": r.mean(axis=ax),
        "rms": np.sqrt((r * r).mean(axis=ax)),
        "chi_mean": chi.mean(axis=ax),
        "chi_rms": np.sqrt((chi * chi).mean(axis=ax)),
    }
