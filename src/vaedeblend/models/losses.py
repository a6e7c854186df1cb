"""Training losses. All take (N, C, H, W) images and (N, latent) mu, sigma, and return
per-batch means of per-image sums (the paper's convention).

- ``bce``: binary cross-entropy between the normalised noiseless target t in [0, 1) and the
  decoder output y = sigmoid(logits), summed over pixels and bands, + beta * KL (paper,
  beta = 0.01).
- ``gaussian``: Gaussian negative log-likelihood in electrons, each pixel weighted by its *true*
  noise variance (sky + true signal, known when training; never a predicted variance), summed
  over pixels and bands, + beta * KL (beta = 1 is the ELBO).

For the ``asinh`` output head (output s, electrons x = a_b sinh(s)):

- ``chi2``: the Gaussian likelihood with the true variance, linearised in s around the target:
  0.5 * sum w (s - s_t)^2 with w = (dx/ds at s_t)^2 / variance = (a_b cosh s_t)^2 / variance.
  To first order it is ``gaussian``'s chi^2, but its curvature in s is fixed per pixel, so it
  stays well conditioned from the empty sky (w = sky / variance ~ 1) to bright cores.
- ``mse``: 0.5 * sum (s - s_t)^2: noise units for faint pixels, relative (log) error for bright
  ones; every galaxy weighs about the same, whatever its flux.

Their ``recon`` is in units of chi^2 / 2 (``chi2``) or noise^2 / 2 at faint pixels (``mse``), so
beta = 1 would be an ELBO-like weight; the default 0.01 keeps the latent code from collapsing
(see docs/models.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from vaedeblend.training_choices import DEFAULT_BETA, LOSS_HEADS, LOSSES  # noqa: F401 (re-export)

# Lower bound on the variance (electrons^2): keeps the weight finite in a sky-free test band.
VARIANCE_FLOOR = 1e-3


@dataclass
class LossTerms:
    """Batch means (scalars): ``total`` = ``recon`` + beta * ``kl``."""

    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def kl_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over the latent axis: (N, L) -> (N,)."""
    return 0.5 * (mu.square() + sigma.square() - 1 - 2 * torch.log(sigma)).sum(dim=1)


def bce_loss(
    logits: torch.Tensor,
    target_norm: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    beta: float = DEFAULT_BETA["bce"],
) -> LossTerms:
    """Paper loss. ``logits``: decoder output before the sigmoid; ``target_norm``: normalised
    noiseless target, values in [0, 1)."""
    per_pixel = F.binary_cross_entropy_with_logits(logits, target_norm, reduction="none")
    recon = per_pixel.flatten(1).sum(dim=1)
    kl = kl_normal(mu, sigma)
    return LossTerms((recon + beta * kl).mean(), recon.mean(), kl.mean())


def noise_variance(signal: torch.Tensor, sky: torch.Tensor, model: str = "poisson") -> torch.Tensor:
    """True per-pixel noise variance (electrons^2) of the simulator's noise ``model``.

    ``signal``: noiseless (N, C, H, W) electrons, all sources in the stamp; ``sky`` (C,)
    electrons per pixel. ``poisson``: sky + signal; ``gaussian``: sky alone (the simulator's
    Gaussian noise has the sky variance only).
    """
    sky = sky.to(signal).reshape(1, -1, 1, 1)
    var = signal.clamp(min=0) + sky if model == "poisson" else sky.expand_as(signal)
    return var.clamp(min=VARIANCE_FLOOR)


def gaussian_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    variance: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    beta: float = DEFAULT_BETA["gaussian"],
) -> LossTerms:
    """Gaussian loss in electrons: 0.5 * sum((pred - target)^2 / variance) + beta * KL.

    ``variance`` is the true noise variance (:func:`noise_variance`); it is detached, so the
    network cannot lower the loss by changing the weights.
    """
    chi2 = (pred - target).square() / variance.detach()
    recon = 0.5 * chi2.flatten(1).sum(dim=1)
    kl = kl_normal(mu, sigma)
    return LossTerms((recon + beta * kl).mean(), recon.mean(), kl.mean())


def asinh_loss(
    out: torch.Tensor,
    target_s: torch.Tensor,
    weight: torch.Tensor | None,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    beta: float,
) -> LossTerms:
    """0.5 * sum(weight * (out - target_s)^2) + beta * KL in the asinh space; ``weight`` None
    is 1 everywhere (``mse``), else the detached ``chi2`` weights (:func:`asinh_chi2_weight`)."""
    sq = (out - target_s).square()
    if weight is not None:
        sq = sq * weight.detach()
    recon = 0.5 * sq.flatten(1).sum(dim=1)
    kl = kl_normal(mu, sigma)
    return LossTerms((recon + beta * kl).mean(), recon.mean(), kl.mean())


def asinh_chi2_weight(target: torch.Tensor, a: torch.Tensor, variance: torch.Tensor):
    """(dx/ds)^2 / variance at the target, per pixel: (a_b cosh s_t)^2 / variance, computed as
    (a_b^2 + x_t^2) / variance (cosh^2 = 1 + sinh^2 and x_t = a_b sinh s_t), with no
    transcendental function. ``target``: noiseless electrons (N, C, H, W)."""
    a2 = a.to(target).square().reshape(1, -1, 1, 1)
    return (a2 + target.square()) / variance
