"""Measurements of the deblended galaxies: fluxes, magnitudes, errors, S/N, shapes, blendedness.

Everything is measured on each galaxy's model stamp (N, C, S, S), electrons, each band at its own
pixel scale.

- Flux (``flux_<band>``): the sum of the model stamp, electrons.
- Flux uncertainty: the noise of a sum over the model's *footprint*, the pixels where the model
  is above ``FOOTPRINT_NSIGMA`` times the pixel noise sigma, together with a disc of one PSF FWHM
  around the centre: sigma_F^2 = sum over the footprint of (V_pix + max(model, 0)). V_pix is the
  variance map when given (then taken to hold all the noise and nothing is added), else the sky
  variance (``SKYLEVEL``) or sep's background rms squared, plus the galaxy's own Poisson noise
  (the model, electrons). This is the statistical error of an ideal measurement of that flux; it
  does not include the deblender's own error.
- Data flux (``flux_data_<band>``): the *image* shared between overlapping galaxies in
  proportion to their models (as scarlet measures fluxes), summed over the footprint:
  sum(image * model / sum of all models). It keeps the model's shape but takes the amplitude
  from the data, so a model that is too bright or too faint does not bias it; its error is
  sqrt(sum(share^2 (V_pix + max(all models, 0)))).
- S/N: sqrt(sum model^2 / (V_pix + max(model, 0))) over the stamp (the paper's formula, with the
  measured noise in place of the sky level).
- Shapes: GalSim HSM on the reference band's model: ``e1, e2`` adaptive moments of the
  PSF-convolved model (``observed_shape``, as MADNESS), ``sigma_arcsec`` its size;
  ``e1_ksb, e2_ksb`` PSF-corrected KSB (paper) when the PSF is known.
- Blendedness: B_tot in the reference band, the model against the sum of all other models.
"""

from __future__ import annotations

import numpy as np

from vaedeblend import measure
from vaedeblend.fieldmode.geometry import FieldGeometry

FOOTPRINT_NSIGMA = 0.1
DEFAULT_FWHM_PIXELS = 3.0
MAG_PER_LN = 2.5 / np.log(10.0)

FLAG_EDGE = 1  # a stamp crosses the image edge (padded with zeros)
FLAG_MASKED = 2  # a stamp holds masked, NaN or infinite pixels (set to 0 before deblending)
FLAG_SHAPE_FAILED = 4  # HSM adaptive moments failed on the reference band
FLAG_FLUX_NONPOSITIVE = 8  # reference-band model flux <= 0: no magnitude
FLAGS = {
    "EDGE": FLAG_EDGE,
    "MASKED": FLAG_MASKED,
    "SHAPE_FAILED": FLAG_SHAPE_FAILED,
    "FLUX_NONPOSITIVE": FLAG_FLUX_NONPOSITIVE,
}
FLAG_KEYS = {
    "EDGE": "FLAGEDGE",
    "MASKED": "FLAGMASK",
    "SHAPE_FAILED": "FLAGSHAP",
    "FLUX_NONPOSITIVE": "FLAGFLUX",
}  # FITS header keywords (8 characters at most)

COLUMNS = {
    "id": ("", "row number = index in the stamps cube"),
    "x": ("pix", "detection x, reference grid, 0-based pixel"),
    "y": ("pix", "detection y, reference grid, 0-based pixel"),
    "ra": ("deg", "right ascension of the detection (NaN without WCS)"),
    "dec": ("deg", "declination of the detection (NaN without WCS)"),
    "iteration": ("", "detection pass that found the galaxy (1 = first)"),
    "flags": ("", "1 EDGE, 2 MASKED, 4 SHAPE_FAILED, 8 FLUX_NONPOSITIVE"),
    "snr": ("", "S/N of the model, reference band"),
    "blendedness": ("", "B_tot of the model against all other models, reference band"),
    "e1": ("", "HSM adaptive-moments g1 of the reference-band model (PSF-convolved)"),
    "e2": ("", "HSM adaptive-moments g2 of the reference-band model (PSF-convolved)"),
    "sigma_arcsec": ("arcsec", "adaptive-moments size sigma, reference-band model"),
    "e1_ksb": ("", "KSB PSF-corrected g1, reference band (NaN without PSF)"),
    "e2_ksb": ("", "KSB PSF-corrected g2, reference band (NaN without PSF)"),
    # --refine --posterior: Laplace posterior of each galaxy given its stamp (docs/refinement.md)
    "e1_q16": ("", "posterior 16 % quantile of e1 (--posterior)"),
    "e1_q50": ("", "posterior median of e1 (--posterior)"),
    "e1_q84": ("", "posterior 84 % quantile of e1 (--posterior)"),
    "e2_q16": ("", "posterior 16 % quantile of e2 (--posterior)"),
    "e2_q50": ("", "posterior median of e2 (--posterior)"),
    "e2_q84": ("", "posterior 84 % quantile of e2 (--posterior)"),
}
BAND_COLUMNS = {
    "x": ("pix", "detection x in this band's grid, 0-based pixel"),
    "y": ("pix", "detection y in this band's grid, 0-based pixel"),
    "flux": ("", "model flux, electrons"),
    "flux_err": ("", "noise of the flux over the model footprint, electrons"),
    "flux_data": ("", "image flux shared by the models' ratio over the footprint, electrons"),
    "flux_data_err": ("", "noise of flux_data, electrons"),
    "mag": ("mag", "AB magnitude of the model flux (NaN without zero point)"),
    "mag_err": ("mag", "magnitude uncertainty"),
    "snr": ("", "S/N of the model"),
    "flux_q16": ("", "posterior 16 % quantile of the model flux, electrons (--posterior)"),
    "flux_q50": ("", "posterior median of the model flux, electrons (--posterior)"),
    "flux_q84": ("", "posterior 84 % quantile of the model flux, electrons (--posterior)"),
}


def column_doc(name: str, bands: list[str]) -> tuple[str, str]:
    """(unit, description) of a catalog column (flux units, electrons, are not FITS units:
    they are in the description)."""
    if name in COLUMNS:
        return COLUMNS[name]
    for band in bands:
        if name.endswith(f"_{band}") and name[: -len(band) - 1] in BAND_COLUMNS:
            unit, text = BAND_COLUMNS[name[: -len(band) - 1]]
            return unit, f"{text}, {band}"
    return "", ""


def footprint(model: np.ndarray, variance: np.ndarray, fwhm_pixels: float) -> np.ndarray:
    """(N, P, P) bool: model above FOOTPRINT_NSIGMA pixel sigmas, or within one FWHM of the
    stamp centre (a faint galaxy still has an aperture)."""
    s = model.shape[-1]
    yy, xx = np.mgrid[:s, :s] - (s - 1) / 2
    disc = np.hypot(xx, yy) <= max(fwhm_pixels, 1.0)
    return (model > FOOTPRINT_NSIGMA * np.sqrt(np.maximum(variance, 0))) | disc


def _band_photometry(flux, own, image, total, noise, inside, fp, poisson: bool):
    """Columns of one band (see :func:`photometry`); arrays (N, P, P), float64."""
    own_var = noise + np.maximum(own, 0.0) if poisson else noise
    data_var = noise + np.maximum(total, 0.0) if poisson else noise
    err = np.sqrt(np.where(fp, own_var, 0.0).sum(axis=(-2, -1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.sqrt(np.where(own_var > 0, own * own / own_var, 0.0).sum(axis=(-2, -1)))
        share = np.where(inside & (total > 0), np.clip(own / total, 0.0, 1.0), 0.0) * fp
        mag_err = np.where(flux > 0, MAG_PER_LN * err / flux, np.nan)
    return {
        "flux_err": err,
        "mag_err": mag_err,
        "snr": snr,
        "flux_data": (share * image).sum(axis=(-2, -1)),
        "flux_data_err": np.sqrt((share * share * data_var).sum(axis=(-2, -1))),
    }


def photometry(stamps, cuts, geom: FieldGeometry) -> dict[str, np.ndarray]:
    """Per-band ``flux``, ``flux_err``, ``mag``, ``mag_err``, ``snr``, ``flux_data`` and
    ``flux_data_err`` columns (electrons, AB mag).

    Args:
        stamps: (N, C, S, S) model stamps, electrons.
        cuts: :class:`~vaedeblend.fieldmode.region.GridCuts` of the same galaxies.
    """
    cols: dict[str, np.ndarray] = {}
    for b, band in enumerate(geom.band_ids):
        flux = stamps[:, b].sum(axis=(-2, -1), dtype=np.float64)
        own, noise = cuts.own[:, b].astype(np.float64), cuts.noise[:, b].astype(np.float64)
        fp = footprint(own, noise, geom.fwhm_pixels[b] or DEFAULT_FWHM_PIXELS)
        band_cols = _band_photometry(
            flux,
            own,
            cuts.image[:, b].astype(np.float64),
            cuts.total[:, b].astype(np.float64),
            noise,
            cuts.inside[:, b],
            fp,
            poisson=not geom.has_variance_map[b],
        )
        zp = geom.zeropoints[b]
        mag = measure.flux_to_mag(flux, zp, 1.0) if zp is not None else np.full(len(flux), np.nan)
        cols[f"flux_{band}"] = flux
        cols[f"flux_err_{band}"] = band_cols["flux_err"]
        cols[f"mag_{band}"] = mag
        cols[f"mag_err_{band}"] = np.where(np.isfinite(mag), band_cols["mag_err"], np.nan)
        cols[f"snr_{band}"] = band_cols["snr"]
        cols[f"flux_data_{band}"] = band_cols["flux_data"]
        cols[f"flux_data_err_{band}"] = band_cols["flux_data_err"]
    return cols


def shapes(models_ref: np.ndarray, geom: FieldGeometry) -> dict[str, np.ndarray]:
    """``e1, e2, sigma_arcsec`` (adaptive moments) and ``e1_ksb, e2_ksb`` of (N, S, S)
    reference-band models, plus ``shape_failed`` (N,) bool."""
    scale, psf = geom.scales[geom.ref], geom.psfs[geom.ref]
    n = len(models_ref)
    if n == 0:
        empty = np.zeros(0)
        return dict(
            e1=empty,
            e2=empty,
            sigma_arcsec=empty,
            e1_ksb=empty,
            e2_ksb=empty,
            shape_failed=np.zeros(0, bool),
        )
    ad = measure.measure_shapes(models_ref, None, scale, method="adaptive")
    cols = dict(e1=ad.g1, e2=ad.g2, sigma_arcsec=ad.sigma_arcsec, shape_failed=ad.failed)
    if psf is not None:
        ksb = measure.measure_shapes(models_ref, psf, scale, method="ksb")
        cols.update(e1_ksb=ksb.g1, e2_ksb=ksb.g2)
    else:
        cols.update(e1_ksb=np.full(n, np.nan), e2_ksb=np.full(n, np.nan))
    return cols


def measure_sources(stamps, cuts, geom: FieldGeometry, base_flags):
    """All measured columns of N sources.

    Args:
        stamps: (N, C, S, S) model stamps, electrons.
        cuts: their :class:`~vaedeblend.fieldmode.region.GridCuts`.
        base_flags: (N,) int, EDGE / MASKED flags set while cutting the stamps.
    """
    cols = photometry(stamps, cuts, geom)
    r = geom.ref
    ref = geom.band_ids[r]
    cols["snr"] = cols[f"snr_{ref}"]
    cols.update(shapes(stamps[:, r], geom))
    own = cuts.own[:, r].astype(np.float64)
    others = np.where(cuts.inside[:, r], np.clip(cuts.total[:, r] - own, 0.0, None), 0.0)
    cols["blendedness"] = measure.blendedness(own, others)
    flags = np.asarray(base_flags, dtype=np.int32).copy()
    flags |= np.where(cols.pop("shape_failed"), FLAG_SHAPE_FAILED, 0).astype(np.int32)
    flags |= np.where(cols[f"flux_{ref}"] > 0, 0, FLAG_FLUX_NONPOSITIVE).astype(np.int32)
    cols["flags"] = flags
    return cols
