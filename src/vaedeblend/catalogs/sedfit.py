"""Fit a CWW template SED to broad-band AB magnitudes at a known redshift.

Used by catalogs that give magnitudes but no spectrum (CatSim: LSST u..y; real COSMOS images:
HSC g..y), so that any other band (Euclid, HST F814W) can be computed. For each template the
model magnitudes are ``m_b = m0 + C_b(z)``, with ``C_b(z) = m_b - m_F814W`` of the redshifted
template (the same cached colour tables the renderer uses, ``vaedeblend.galaxy``), and ``m0`` a
free normalisation; the template with the smallest sum of squared magnitude residuals wins
(least squares in colour space: the free ``m0`` removes the overall brightness). Besides the four
templates, mixes of adjacent templates (E+Sbc, Sbc+Scd, Scd+Im, F814W flux fractions in steps of
0.05) are candidates: four templates alone leave ~0.16 mag RMS colour residuals on CatSim. The
chosen SED is then normalised so that one band (``norm_band``) is reproduced exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaedeblend.bands import load_bandpass
from vaedeblend.galaxy import (
    CWW_TEMPLATES,
    REFERENCE_BANDPASS,
    Component,
    colour_table,
    template_sed,
)

MIX_WEIGHTS = np.linspace(0.0, 1.0, 21)
"""F814W-flux fraction of the redder template's neighbour in a two-template mix (step 0.05)."""


@dataclass
class TemplateFit:
    """Per-row result of :func:`fit_templates`.

    The SED of a row is ``(1 - weight) x template + weight x template_b``, both redshifted and
    scaled in F814W flux (``weight`` = 0: a pure template).

    Attributes:
        template, template_b: template names per row (adjacent in the CWW sequence).
        weight: F814W flux fraction of ``template_b``, per row.
        mag_f814w: F814W AB magnitude of the normalised SED, per row.
        model_mags: (n_rows, n_bands) AB magnitudes of the fitted SED in the input bands.
        residuals: ``model_mags - observed`` (mag), (n_rows, n_bands).
        rms_colour_residual: per row, RMS of the residuals after removing their mean (a colour
            mismatch that no normalisation could fix), mag.
    """

    template: np.ndarray
    template_b: np.ndarray
    weight: np.ndarray
    mag_f814w: np.ndarray
    model_mags: np.ndarray
    residuals: np.ndarray
    rms_colour_residual: np.ndarray

    def subset(self, keep) -> TemplateFit:
        return TemplateFit(**{k: v[keep] for k, v in vars(self).items()})

    def component(self, row: int, profile, mag_f814w: float, redshift: float) -> Component:
        """A :class:`~vaedeblend.galaxy.Component` with this row's SED scaled to ``mag_f814w``."""
        a, b, w = str(self.template[row]), str(self.template_b[row]), float(self.weight[row])
        if w <= 0.0 or a == b:  # a pure template: the renderer's fast cached-colour path
            return Component(profile, float(mag_f814w), a, float(redshift))
        reference = load_bandpass(REFERENCE_BANDPASS)
        parts = [
            template_sed(name)
            .atRedshift(redshift)
            .withMagnitude(mag_f814w - 2.5 * np.log10(fraction), reference)
            for name, fraction in ((a, 1.0 - w), (b, w))
            if fraction > 0
        ]
        sed = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        return Component(profile, float(mag_f814w), redshift=float(redshift), sed=sed)


def template_colours(template: str, band_sources, redshift) -> np.ndarray:
    """(n_rows, n_bands) of ``m_band - m_F814W`` for ``template`` at each row's redshift."""
    redshift = np.clip(np.asarray(redshift, dtype=float), 0.0, 6.0)
    return np.stack([colour_table(template, b)(redshift) for b in band_sources], axis=-1)


def _mixture_colours(templates, band_sources, redshift, weights):
    """Colours of every mix of adjacent templates: (n_models, n_rows, n_bands) and its labels."""
    pure = [10.0 ** (-0.4 * template_colours(t, band_sources, redshift)) for t in templates]
    colours, labels = [], []
    for k in range(len(templates)):
        colours.append(-2.5 * np.log10(pure[k]))
        labels.append((k, k, 0.0))
    for k in range(len(templates) - 1):
        for w in weights[(weights > 0) & (weights < 1)]:
            colours.append(-2.5 * np.log10((1 - w) * pure[k] + w * pure[k + 1]))
            labels.append((k, k + 1, float(w)))
    return np.stack(colours), labels


def fit_templates(
    mags, redshift, band_sources, norm_band: int, templates=CWW_TEMPLATES, weights=MIX_WEIGHTS
) -> TemplateFit:
    """Best SED per row for AB magnitudes ``mags`` (n_rows, n_bands) at ``redshift``.

    Candidates: each template, and mixes of adjacent templates (in the order of ``templates``,
    from red to blue) with F814W flux fractions ``weights``; ``weights=()`` fits pure templates.

    Args:
        mags: observed AB magnitudes, (n_rows, n_bands).
        redshift: per row.
        band_sources: bandpass sources of the columns (``vaedeblend.bands.load_bandpass`` names).
        norm_band: column reproduced exactly by the normalised SED.
        templates: candidate templates (CWW names of ``vaedeblend.galaxy``), red to blue.
        weights: mixing fractions tried between neighbours.
    """
    mags = np.atleast_2d(np.asarray(mags, dtype=float))
    colours, labels = _mixture_colours(templates, band_sources, redshift, np.asarray(weights))
    offsets = np.mean(mags[None] - colours, axis=-1, keepdims=True)  # free normalisation
    chi2 = np.sum((mags[None] - colours - offsets) ** 2, axis=-1)  # (n_models, n_rows)
    best = np.argmin(chi2, axis=0)
    rows = np.arange(len(mags))
    best_colours = colours[best, rows]
    mag_f814w = mags[:, norm_band] - best_colours[:, norm_band]
    model = mag_f814w[:, None] + best_colours
    residuals = model - mags
    colour_residual = residuals - residuals.mean(axis=1, keepdims=True)
    names = np.asarray(templates)
    return TemplateFit(
        template=names[[labels[i][0] for i in best]],
        template_b=names[[labels[i][1] for i in best]],
        weight=np.array([labels[i][2] for i in best]),
        mag_f814w=mag_f814w,
        model_mags=model,
        residuals=residuals,
        rms_colour_residual=np.sqrt(np.mean(colour_residual**2, axis=1)),
    )
