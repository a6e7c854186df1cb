"""Steering the running response penalty by the bias the user measures: KSB's m per S/N bin.

:class:`vaedeblend.models.losses.RunningResponse` asks each S/N bin for a windowed-moment
slope (output against target ellipticities, no PSF correction) equal to a target, 1 by default.
That slope is a proxy: at equal windowed slope 1, KSB's PSF-corrected m (what ``evaluate``
reports) sat at -0.05 to -0.09 in the bright bins (docs/models.md). :class:`KsbSlopeControl`
measures KSB's m per bin on the validation stamps at every validation and moves each bin's
target against it (an integral controller):

    target_b <- clip(target_b - gain * m_b, *TARGET_BOUNDS)

so that a bin whose KSB m is negative is asked for a steeper windowed slope until its m is 0.

m_b is ``evaluate``'s: per component, the least-squares slope (with intercept) of KSB g of the
noiseless output against KSB g of the noiseless target in the reference band, minus 1; the two
components averaged. The statistics are sums, so that processes of a distributed run can add
theirs before the update.
"""

from __future__ import annotations

import numpy as np
import torch

# Bounds of a bin's target windowed slope: wide enough for the gaps measured between a
# windowed slope of 1 and KSB's m (up to 0.25 in the faintest bin, docs/models.md), narrow
# enough that a bin whose m does not respond stops there rather than running away.
TARGET_BOUNDS = (0.7, 1.5)
# Fewest KSB pairs (output and target both measured) in a bin for its m to move its target:
# at |e| ~ 0.3 scatter and 50 pairs m's standard error is about 0.05.
MIN_PAIRS = 50
# Sums kept per bin and component: n, sum x, sum y, sum x^2, sum x y (x: target g, y: output g).
N_SUMS = 5


class KsbSlopeControl:
    """KSB m per S/N bin of validation stamps, and the target slopes it steers.

    Args:
        psf_image: (P, P) PSF of the reference band (any normalisation).
        pixel_scale_arcsec: the reference band's pixel side.
        band_index: the reference band's channel in (N, C, H, W) stamps.
        snr_edges: the bins' edges in :func:`vaedeblend.models.losses.target_snr` (those of
            the running penalty).
        gain: fraction of a bin's m taken off its target at each update (> 0).
    """

    def __init__(
        self,
        psf_image: np.ndarray,
        pixel_scale_arcsec: float,
        band_index: int,
        snr_edges: tuple[float, ...],
        gain: float,
    ):
        if not gain > 0:
            raise ValueError(f"gain must be > 0, got {gain}")
        self.psf = np.asarray(psf_image, dtype=np.float64)
        if self.psf.ndim != 2 or not np.isfinite(self.psf).all():
            raise ValueError(f"psf_image must be a finite (P, P) image, got {self.psf.shape}")
        self.pixel_scale = float(pixel_scale_arcsec)
        self.band = int(band_index)
        self.edges = np.asarray(snr_edges, dtype=np.float64)
        self.gain = float(gain)
        self.sums = torch.zeros(len(self.edges) + 1, 2, N_SUMS, dtype=torch.float64)

    def reset(self) -> None:
        """Forget the stamps added so far (at the start of each validation)."""
        self.sums = torch.zeros_like(self.sums)

    def add(self, output_electrons: torch.Tensor, target_electrons: torch.Tensor,
            snr: torch.Tensor) -> None:  # fmt: skip
        """Measure KSB shapes of a batch of (N, C, H, W) noiseless outputs and targets
        (electrons) in the reference band and add them to their S/N bins (``snr``: (N,))."""
        from vaedeblend.measure import measure_shapes

        def shapes(images):
            band = images[:, self.band].detach().float().cpu().numpy()
            r = measure_shapes(band, self.psf, self.pixel_scale, "ksb")
            return np.stack([r.g1, r.g2])  # (2, N)

        y, x = shapes(output_electrons), shapes(target_electrons)
        bins = np.searchsorted(self.edges, snr.detach().cpu().numpy(), side="right")
        ok = np.isfinite(x).all(0) & np.isfinite(y).all(0)
        for b in np.unique(bins[ok]):
            sel = ok & (bins == b)
            xs, ys = x[:, sel], y[:, sel]
            stats = np.stack([np.full(2, sel.sum()), xs.sum(1), ys.sum(1),
                              (xs * xs).sum(1), (xs * ys).sum(1)], axis=1)  # fmt: skip
            self.sums[b] += torch.from_numpy(stats)

    @staticmethod
    def m_per_bin(sums: torch.Tensor) -> torch.Tensor:
        """(bins,) KSB m from summed statistics (bins, 2, 5); NaN where a bin has fewer than
        :data:`MIN_PAIRS` pairs or no spread in the target's shapes."""
        n, sx, sy, sxx, sxy = sums.double().unbind(-1)
        cov = sxy - sx * sy / n.clamp(min=1)
        var = sxx - sx * sx / n.clamp(min=1)
        slope = cov / var
        usable = (n >= MIN_PAIRS) & (var > 0)
        m = torch.where(usable, slope - 1, torch.full_like(slope, float("nan")))
        return m.mean(dim=1)

    def updated(
        self, targets: torch.Tensor, sums: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(m per bin, new targets): each bin with a measured m moves its target by
        -gain * m, within :data:`TARGET_BOUNDS`; the others keep theirs."""
        m = self.m_per_bin(sums).to(targets)
        moved = (targets - self.gain * m).clamp(*TARGET_BOUNDS)
        return m, torch.where(torch.isfinite(m), moved, targets)
