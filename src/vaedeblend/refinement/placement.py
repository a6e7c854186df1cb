"""Placing galaxy images at sub-pixel positions on each band's own pixel grid.

All channels of a stamp share its centre (GalSim's ``true_center``) but not their pixel scale
(LSST 0.2", VIS 0.1", NISP 0.3"), so one sky offset (arcsec) is a different pixel shift per
channel. Shifts are Fourier phase ramps on an image zero-padded by half its size on each axis,
so that what leaves one edge (by at most half the stamp) does not come back on the other; they
are exact for whole pixels and band-limited interpolation in between, and differentiable in
both the images and the offsets.
"""

from __future__ import annotations

import math

import torch


def shift_images(images: torch.Tensor, offsets_arcsec: torch.Tensor, pixel_scales_arcsec):
    """``images`` (M, C, H, W) moved by ``offsets_arcsec`` (M, 2) = (dx, dy), +x along W
    (columns) and +y along H (rows), on each channel's grid of ``pixel_scales_arcsec`` (C,).
    Returns (M, C, H, W) in ``images``' dtype. A channel shifted by more than half the stamp
    on either axis (a neighbour outside a finer grid's smaller field) comes back as zeros: the
    padding would wrap it around, and its centre lies outside that channel's stamp."""
    m, c, h, w = images.shape
    scales = torch.as_tensor(pixel_scales_arcsec, dtype=images.dtype, device=images.device)
    if scales.shape != (c,):
        raise ValueError(f"{scales.shape[0]} pixel scales for {c} channels")
    if offsets_arcsec.shape != (m, 2):
        raise ValueError(f"offsets must be ({m}, 2), got {tuple(offsets_arcsec.shape)}")
    shift = offsets_arcsec.to(images.dtype)[:, None, :] / scales[None, :, None]  # (M, C, 2) px
    inside = (shift[..., 0].abs() <= w / 2) & (shift[..., 1].abs() <= h / 2)  # (M, C)
    ph, pw = h + h // 2, w + w // 2
    ky = torch.fft.fftfreq(ph, dtype=images.dtype, device=images.device)
    kx = torch.fft.rfftfreq(pw, dtype=images.dtype, device=images.device)
    phase = -2 * math.pi * (
        shift[..., 0, None, None] * kx[None, None, None, :]
        + shift[..., 1, None, None] * ky[None, None, :, None]
    )  # fmt: skip
    spectrum = torch.fft.rfft2(images, s=(ph, pw))
    moved = torch.fft.irfft2(spectrum * torch.polar(torch.ones_like(phase), phase), s=(ph, pw))
    return moved[..., :h, :w] * inside[..., None, None]
