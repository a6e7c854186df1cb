"""Posteriors of the central galaxy's flux and shape: a Laplace approximation in latent space.

Around the refined point (:meth:`~vaedeblend.refinement.joint.RefinedModel.refine`), the loss
as a function of the central galaxy's latent z (the neighbours held at their refined latents
and every position at its refined value) is approximated by a quadratic: its Hessian H
(latent_dim x latent_dim, exact second derivatives through the decoder, the placement and the
prior) is the inverse covariance of a Gaussian posterior on z. Directions of negative or tiny
curvature (a point short of the optimum, or a flat direction) are floored at
``min_curvature``, i.e. at most ``1 / sqrt(min_curvature)`` wide. Latents drawn from that
Gaussian are decoded and measured like any output: per band the stamp-sum flux (electrons) and,
in one band, the adaptive-moment ellipticity (GalSim HSM ``FindAdaptiveMom``, as
``evaluate``'s adaptive shapes); their quantiles are the intervals.

Alone, that is a statement about the model: the intervals would be as good as the decoder is
unbiased. When the prior carries the decoder's measured error on isolated galaxies
(:mod:`.decoder_error`, measured by ``vaedeblend prior``), each draw also takes one of those
residuals, so that the intervals hold the model's error too. When it carries a calibration on
simulated blends (``vaedeblend prior --calibrate-on``), the intervals are that calibration's
instead: the refined estimate's own residuals against the truth, drawn for galaxies of the
same refined S/N and estimated blendedness, taken off the refined estimate (bias included);
they already hold the noise, so no Laplace draws are added to them (nor computed: the posterior
then costs the refined galaxy's measurement only). ``benchmarks/bench_posterior.py`` measures
the coverage against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vaedeblend.argtypes import check_positive
from vaedeblend.measure import flux_sum, measure_shapes, snr
from vaedeblend.models.api import DeblendContext
from vaedeblend.refinement.decoder_error import blendedness_estimate, r_channel
from vaedeblend.refinement.fit import check_decoder_error, select_calibration
from vaedeblend.refinement.joint import (
    GalaxyPositions,
    RefinedModel,
    RefinementResult,
    RefineSettings,
    _JointLoss,
)
from vaedeblend.refinement.placement import shift_images

QUANTILES = (0.025, 0.16, 0.5, 0.84, 0.975)


@dataclass
class CentralPosterior:
    """Posterior summaries of N central galaxies (model band order).

    Attributes:
        quantiles: the probabilities of the quantile axes, :data:`QUANTILES`.
        flux_electrons: (N, C, Q) stamp-sum flux per band, electrons.
        ellipticity: (N, 2, Q) adaptive-moment (g1, g2) in ``shape_channel``.
        shape_failures: (N,) share of samples whose shape measurement failed.
        latent_sigma: (N, D) Laplace standard deviation of each latent dimension (NaN when a
            calibration gives the intervals: no Laplace approximation is drawn then).
        shape_channel: the channel the shapes were measured in.
    """

    quantiles: tuple[float, ...]
    flux_electrons: np.ndarray
    ellipticity: np.ndarray
    shape_failures: np.ndarray
    latent_sigma: np.ndarray
    shape_channel: int


def central_posterior(
    refiner: RefinedModel,
    stamps: np.ndarray,
    result: RefinementResult,
    *,
    sky_levels_electrons=None,
    n_samples: int = 64,
    shape_channel: int = 2,
    min_curvature: float = 1.0,
    seed: int = 0,
    decoder_error: bool = True,
) -> CentralPosterior:
    """Laplace posterior of each stamp's central galaxy (see the module docstring).

    Args:
        refiner: the refined model that produced ``result``.
        stamps: the (N, C, H, W) electrons given to :meth:`RefinedModel.refine`.
        result: its :class:`RefinementResult`.
        sky_levels_electrons: as given to ``refine`` (None: the model's).
        n_samples: latents drawn per galaxy.
        shape_channel: model channel of the shapes (2: lsst_r in the LSST models).
        min_curvature: floor on the Hessian's eigenvalues (1 / latent units squared).
        seed: the draws; same seed, same result.
        decoder_error: add the decoder's measured error when the prior carries one (False:
            the noise alone, e.g. for a galaxy the decoder draws exactly).
    """
    check_positive("n_samples", n_samples)
    x = np.asarray(stamps, dtype=np.float32)
    if len(x) != len(result.central):
        raise ValueError(f"{len(x)} stamps for a refinement of {len(result.central)}")
    config = refiner.model.config
    sky = np.asarray(
        config["sky_levels_electrons"] if sky_levels_electrons is None else sky_levels_electrons,
        dtype=np.float64,
    )
    scales = np.asarray(config["pixel_scales_arcsec"], dtype=np.float64)
    prior = refiner.prior
    error = None
    if decoder_error and prior.refined_error is not None:  # the one for these settings
        error = select_calibration(prior, refiner.model, refiner.settings)
    elif decoder_error:
        error = prior.decoder_error
    uncalibrated = error is None or not error.calibrated
    if uncalibrated and refiner.settings.flux_from_data is not None:
        # the Laplace samples are decoded latents: they know nothing of the data's flux
        raise ValueError(
            "uncalibrated posteriors are drawn from the model's flux, not the one measured on "
            "the data: refine without flux_from_data, or calibrate the prior with it"
        )
    if uncalibrated and error is not None:
        check_decoder_error(prior.config.get("decoder_error") or {}, refiner.model)
    parts = []
    step = refiner.settings.batch_size
    for start in range(0, len(x), step):
        sl = slice(start, start + step)
        parts.append(
            _batch(refiner, x[sl], result, sl, sky, scales, n_samples, shape_channel,
                   min_curvature, error, np.random.default_rng([seed, start]))
        )  # fmt: skip
    flux, ell, failed, sigma = (np.concatenate(p) for p in zip(*parts, strict=True))
    return CentralPosterior(QUANTILES, flux, ell, failed, sigma, shape_channel)


def _batch(refiner, x, result, sl, sky, scales, n_samples, shape_channel, min_curvature, error,
           rng):  # fmt: skip
    used = np.arange(result.latents.shape[1])[None] < result.n_galaxies[sl, None]
    stamp, slot = (torch.from_numpy(a) for a in np.nonzero(used))
    latents = torch.from_numpy(result.latents[sl][used]).float()
    where = torch.from_numpy(result.offsets_arcsec[sl][used]).float()
    log_scale = torch.from_numpy(result.log_flux_scale[sl][used]).float()
    central = slot == 0
    if error is not None and error.calibrated:  # no Laplace approximation needed
        no_width = np.full(latents[central].shape, np.nan)
        return (*_calibrated(error, refiner.model, result.central[sl], x, sky, scales,
                             shape_channel, n_samples, rng), no_width)  # fmt: skip
    data = torch.from_numpy(x)
    loss_of = _JointLoss(refiner, data, stamp, where, torch.from_numpy(sky).float(), scales)
    if refiner.settings.central_prior == "deblender":
        # the fit's Gaussian prior on the central latent, as the fit anchored it; its
        # curvature 1 / sigma^2 (all the Hessian sees) taken at the refined position
        loss_of.anchor(central, *refiner._initial_latents(data, stamp, where, scales))
    if refiner.settings.flux_anchor_sigma is not None:  # the fit's flux anchor, likewise
        one_pass, _ = refiner._initial_latents(data, stamp, where, scales)
        loss_of.anchor_flux(central, one_pass[central], refiner.settings.flux_anchor_sigma)
    z0 = latents[central].clone().requires_grad_(True)
    hessian = _hessian(loss_of, latents, central, z0, log_scale)
    if loss_of.anchored is not None:
        hessian = _anchored_precision(hessian, loss_of.anchored[2][central].double().numpy())
    mean = z0.detach().double().numpy()
    values, vectors = np.linalg.eigh(0.5 * (hessian + hessian.transpose(0, 2, 1)))
    root = vectors / np.sqrt(np.maximum(values, min_curvature))[:, None, :]  # cov = root root^T
    latent_sigma = np.sqrt(np.einsum("bij,bij->bi", root, root))
    draws = rng.standard_normal((len(mean), n_samples, mean.shape[1]))
    z = mean[:, None, :] + np.einsum("bij,bsj->bsi", root, draws)
    images = _decode_placed(refiner, z, where[central], scales)  # (B, S, C, H, W)
    images *= np.exp(log_scale[central].numpy())[:, None, :, None, None]  # the fitted fluxes
    flux = flux_sum(images.reshape(-1, *images.shape[2:])).reshape(*images.shape[:2], -1)
    shapes = measure_shapes(
        images[:, :, shape_channel].reshape(-1, *images.shape[-2:]), None,
        float(scales[shape_channel]), method="adaptive",
    )  # fmt: skip
    g = np.stack([shapes.g1, shapes.g2], axis=-1).reshape(len(mean), n_samples, 2)
    if error is not None:
        flux, g = _with_decoder_error(error, images, flux, g, sky, shape_channel, rng)
    q = np.asarray(QUANTILES)
    return (
        np.moveaxis(np.quantile(flux, q, axis=1), 0, -1),  # (B, C, Q)
        np.moveaxis(np.nanquantile(g, q, axis=1), 0, -1),  # (B, 2, Q)
        shapes.failed.reshape(len(mean), n_samples).mean(axis=1),
        latent_sigma,
    )


def _calibrated(error, model, central, x, sky, scales, shape_channel, n_samples, rng):
    """Quantiles (as :func:`_batch` returns them, but the latent widths) of the truth given the
    refined ``central`` galaxies (B, C, H, W electrons) and a calibration: truth = estimate /
    (1 + residual) for the flux and estimate - residual for the shape, one residual per draw
    from galaxies of the same refined S/N and estimated blendedness. The residuals are the
    refined estimate's own against the truth on simulated blends, so they already hold the
    noise: Laplace draws added to them would count it twice (on 2,000 detected LSST blends,
    73 % of the truths fell inside the 68 % flux intervals that way, 76 % at S/N 20-50)."""
    c = error.shape_channel
    estimate_snr = snr(np.clip(central[:, c], 0, None), float(sky[c]))
    one_pass = None
    if error.blendedness_estimate == "max_one_pass":  # as the calibration estimated it
        one_pass = model.deblend(x, bands=model.band_ids)[:, c]
    b_est = blendedness_estimate(error.blendedness_estimate, central[:, c], x[:, c], one_pass)
    flux_rel, dg = error.draw(estimate_snr, n_samples, rng, b_est)
    flux = flux_sum(central)[:, None, :] / (1.0 + flux_rel)  # (B, S, C)
    shapes = measure_shapes(central[:, shape_channel], None, float(scales[shape_channel]),
                            method="adaptive")  # fmt: skip
    g = np.stack([shapes.g1, shapes.g2], axis=-1)[:, None, :] - (shape_channel == c) * dg
    q = np.asarray(QUANTILES)
    return (
        np.moveaxis(np.quantile(flux, q, axis=1), 0, -1),  # (B, C, Q)
        np.moveaxis(np.nanquantile(g, q, axis=1), 0, -1),  # (B, 2, Q)
        shapes.failed.astype(float),
    )


def _with_decoder_error(error, images, flux, g, sky, shape_channel, rng):
    """Each latent draw's flux and shape moved by one residual of an isolated galaxy of the
    same S/N (:mod:`.decoder_error`, about its bin's median): the intervals then hold the
    decoder's scatter with the noise. The S/N is the median draw's, in the error's band; shape
    residuals only apply in that band."""
    c = error.shape_channel
    snr_of = np.median(snr(np.clip(images[:, :, c], 0, None), float(sky[c])), axis=1)
    flux_rel, dg = error.draw(snr_of, flux.shape[1], rng)
    return flux * (1.0 + flux_rel), (g + dg if shape_channel == c else g)


def _anchored_precision(hessian: np.ndarray, anchor_sigma: np.ndarray) -> np.ndarray:
    """(B, D, D) Laplace precision under the deblender's Gaussian anchor of widths
    ``anchor_sigma`` (B, D): the rest of ``hessian`` (the pixels', away from their optimum
    not always positive) projected onto its non-negative curvatures, plus the anchor's
    diag(1 / sigma^2), so that no latent comes out wider than the anchor allows."""
    anchor = anchor_sigma**-2.0
    rest = 0.5 * (hessian + hessian.transpose(0, 2, 1))
    rest[:, np.arange(anchor.shape[1]), np.arange(anchor.shape[1])] -= anchor
    values, vectors = np.linalg.eigh(rest)
    rest = np.einsum("bij,bj,bkj->bik", vectors, np.maximum(values, 0.0), vectors)
    rest[:, np.arange(anchor.shape[1]), np.arange(anchor.shape[1])] += anchor
    return rest


def _hessian(loss_of: _JointLoss, latents, central, z0, log_scale) -> np.ndarray:
    """(B, D, D) second derivatives of each stamp's loss in its central latent (stamps are
    independent, so one backward pass per latent dimension serves the whole batch), at the
    fitted flux scales ``log_scale`` (G, C)."""
    z = latents.clone()
    z[central] = z0
    loss = loss_of(z, torch.zeros(len(z), 2), log_scale)
    (grad,) = torch.autograd.grad(loss.sum(), z0, create_graph=True)
    rows = [
        torch.autograd.grad(grad[:, j].sum(), z0, retain_graph=True)[0] for j in range(z0.shape[1])
    ]
    return torch.stack(rows, dim=1).double().numpy()


def _decode_placed(refiner, z: np.ndarray, where, scales) -> np.ndarray:
    """(B, S, C, H, W) float32 electrons: latents (B, S, D) decoded and placed at ``where``."""
    b, s, d = z.shape
    with torch.no_grad():
        images = refiner.model.decode_differentiable(torch.from_numpy(z.reshape(b * s, d)))
        placed = shift_images(images.float(), where.repeat_interleave(s, dim=0), scales)
    return placed.numpy().reshape(b, s, *placed.shape[1:])


class PosteriorRefinedModel(RefinedModel):
    """A :class:`RefinedModel` that also reports each central galaxy's posterior: field mode's
    ``--posterior`` catalogue columns (16, 50 and 84 % quantiles of the flux in every band,
    electrons, and of e1, e2 in the shape band).

    Args:
        model, prior, settings: as :class:`RefinedModel`.
        n_samples: latents drawn per galaxy; ``seed``: their random generator.
    """

    def __init__(self, model, prior, settings: RefineSettings | None = None,
                 n_samples: int = 64, seed: int = 0):  # fmt: skip
        super().__init__(model, prior, settings)
        # refused now rather than after the refinement
        if prior.refined_error is not None:
            select_calibration(prior, model, self.settings)
        elif prior.decoder_error is not None:
            check_decoder_error(prior.config.get("decoder_error") or {}, model)
        self.n_samples = check_positive("n_samples", n_samples)
        self.seed = int(seed)

    def deblend_with_columns(
        self,
        stamps,
        bands=None,
        context: DeblendContext | None = None,
        shape_band: str | None = None,
        positions: GalaxyPositions | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(the refined central galaxies as :meth:`deblend` gives them, columns (N,) each:
        ``flux_q16_<band>``, ``flux_q50_<band>``, ``flux_q84_<band>`` per model band, and
        ``e1_q16`` ... ``e2_q84`` in ``shape_band`` (default: the model's r band)).
        ``positions``: the galaxies to fit in each stamp (default: detected)."""
        x, perm, sky = self.in_model_order(stamps, bands, context)
        result = self.refine(x, sky, positions)
        bands_of_model = list(self.model.band_ids)
        channel = _shape_channel(bands_of_model, shape_band)
        post = central_posterior(self, x, result, sky_levels_electrons=sky,
                                 n_samples=self.n_samples, shape_channel=channel,
                                 seed=self.seed)  # fmt: skip
        columns = {}
        for k, q in ((1, "q16"), (2, "q50"), (3, "q84")):
            for c, band in enumerate(bands_of_model):
                columns[f"flux_{q}_{band}"] = post.flux_electrons[:, c, k]
            columns[f"e1_{q}"] = post.ellipticity[:, 0, k]
            columns[f"e2_{q}"] = post.ellipticity[:, 1, k]
        central = result.central[:, perm] if perm is not None else result.central
        return central, columns


def posterior_column_names(band_ids) -> list[str]:
    """Names of :meth:`PosteriorRefinedModel.deblend_with_columns`'s columns."""
    return [
        *(f"flux_{q}_{b}" for q in ("q16", "q50", "q84") for b in band_ids),
        *(f"e{i}_{q}" for i in (1, 2) for q in ("q16", "q50", "q84")),
    ]


def _shape_channel(band_ids: list[str], shape_band: str | None) -> int:
    return band_ids.index(shape_band) if shape_band is not None else r_channel(band_ids)
