"""The central galaxy's pixels taken from the data where the data know them better than the
decoder.

A decoder draws each galaxy from a few dozen latent numbers: detail finer than it learned (a
bright galaxy's exact profile and isophote twists) it cannot draw, and at high S/N that error is
larger than the noise. The observed electrons hold that detail, mixed with the neighbours' light.
:func:`combine_with_data` takes, pixel by pixel, the central galaxy's share of the observed
electrons (scarlet's flux re-distribution: data x central model / sum of all fitted models) and
weighs it against the central model by inverse variance: the model's variance (a fraction of
its own intensity) against the noise's (sky plus every fitted galaxy). Bright pixels come from
the data, faint ones from the model, which keeps the noise out of the wings.
"""

from __future__ import annotations

import torch


def combine_with_data(data, central, total, sky, model_error: float) -> torch.Tensor:
    """(B, C, H, W) electrons: per pixel ``w * share + (1 - w) * central``, where ``share =
    data * central / total`` and ``w = (f c)^2 / ((f c)^2 + sky + total)``, f =
    ``model_error`` (the model's fractional error per pixel) and c the central model; then
    each band is scaled back to the central model's flux summed over the stamp, so the data
    move the light (shape, profile), not its amount (which the flux fit measured).

    ``data``, ``central`` and ``total`` (every fitted galaxy summed, central included) are
    (B, C, H, W) electrons; ``sky`` broadcasts to them (electrons per pixel). A band whose
    model or combination sums to <= 0 electrons keeps its model."""
    if not model_error > 0:
        raise ValueError(f"model_error must be > 0, got {model_error}")
    model = central.clamp(min=0)
    # the central galaxy is part of the total; 1e-6 electron keeps empty pixels' share at 0
    total = torch.maximum(total, model).clamp(min=1e-6)
    share = data * model / total
    model_var = (model_error * model) ** 2
    weight = model_var / (model_var + sky + total)
    mixed = weight * share + (1 - weight) * central
    flux = central.sum(dim=(2, 3), keepdim=True)
    mixed_flux = mixed.sum(dim=(2, 3), keepdim=True)
    usable = (flux > 0) & (mixed_flux > 0)
    scale = flux / torch.where(usable, mixed_flux, torch.ones_like(mixed_flux))
    return torch.where(usable, mixed * scale, central)
