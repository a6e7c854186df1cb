"""A training penalty on the deblended flux's bias, per blendedness bin: :class:`RunningFluxBias`.

The pixel loss is minimised by each pixel's conditional mean given the noisy blend; where a
neighbour's light overlaps the target, that mean keeps part of it, so the most blended targets
come out too bright (the shipped detected LSST deblender: median dmag -0.4 to -0.7 for B_tot >
0.4, which dominates the paper's binned |median dmag|). This term asks each bin of the target's
blendedness for a zero mean log flux ratio, like :class:`~vaedeblend.models.losses.RunningResponse`
asks each S/N bin for an unbiased shape response: the bias comes from running sums over the last
~``memory`` batches, the gradient from the current batch, so a bin already unbiased pulls nothing
and a few strongly blended galaxies in one batch do not set it alone.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from vaedeblend.models.losses import LossTerms
from vaedeblend.training_config import TrainConfig

# Default bins of the target's B_tot (reference band) the penalty asks an unbiased flux of
# (``TrainConfig.flux_blendedness_edges``, where the choice is explained).
FLUX_BLENDEDNESS_EDGES = tuple(TrainConfig.flux_blendedness_edges)

# A galaxy's output flux is floored at this fraction of its true flux before the logarithm, so
# that an output emptied by an early network does not give an infinite ratio.
_RATIO_FLOOR = 1e-3

# Each ln ratio is clipped to +/- this before the bins' means (a winsorised mean): the paper's
# statistic is a median, and a plain mean follows the faint tail instead. In a 13-minute trial
# (W 500) the shipped detected deblender's plain mean ln ratio was -0.18 in the unblended bin,
# where evaluate's median dmag is within 0.04 of 0. ln 1.65: dmag 0.54.
LOG_RATIO_CLIP = 0.5


def blendedness(target: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """B_tot = 1 - sum(t^2) / sum(t (t + o)) of noiseless (N, H, W) images (electrons), as in
    :func:`vaedeblend.measure.blendedness`; (N,), 0 where the target has no light."""
    own = target.square().flatten(1).sum(1)
    total = (target * (target + others)).flatten(1).sum(1)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, 1 - own / safe, torch.zeros_like(total))


def log_flux_ratio(output: torch.Tensor, target: torch.Tensor):
    """(N, C) ln(F_out / F_true) of (N, C, H, W) electron images (stamp sums, as ``evaluate``
    measures dmag = -2.5 log10 of the same ratio), clipped to +/- :data:`LOG_RATIO_CLIP`
    (a clipped galaxy counts, but pulls nothing), and (N, C) the true fluxes F_true."""
    true_flux = target.flatten(2).sum(-1)
    out_flux = output.flatten(2).sum(-1)
    floor = _RATIO_FLOOR * true_flux.clamp(min=1e-6)
    ratio = torch.log(torch.maximum(out_flux, floor) / true_flux.clamp(min=1e-6))
    return ratio.clamp(-LOG_RATIO_CLIP, LOG_RATIO_CLIP), true_flux


class RunningFluxBias:
    """Penalty sum_bins sum_bands share * bias^2, with bias the running mean of the clipped
    ln(F_out / F_true) (:func:`log_flux_ratio`) over the bin's galaxies (bins of the target's
    B_tot in the reference band, fixed ``edges``, each split by the target's S/N at
    ``snr_edges`` if given; galaxies with no true flux in a band left out of that band), and
    share each band's part of the bin's true flux (bands where galaxies are faint count
    little). Bins count equally. Its gradient is that of the current batch's mean log ratio
    with the running bias as factor; its value is the running penalty. ``memory`` 1: the
    batch's own penalty (validation). The running sums live in memory only.
    """

    def __init__(self, edges: tuple[float, ...] = FLUX_BLENDEDNESS_EDGES, memory: int = 50,
                 snr_edges: tuple[float, ...] = ()):  # fmt: skip
        if memory < 1:
            raise ValueError(f"memory must be >= 1 batch, got {memory}")
        if list(edges) != sorted(set(edges)) or not all(0 < e < 1 for e in edges):
            raise ValueError(f"blendedness edges must be increasing, in (0, 1), got {edges}")
        if list(snr_edges) != sorted(set(snr_edges)) or not all(e > 0 for e in snr_edges):
            raise ValueError(f"S/N edges must be increasing values > 0, got {snr_edges}")
        self.edges = tuple(float(e) for e in edges)
        self.snr_edges = tuple(float(e) for e in snr_edges)
        self.decay = 1.0 - 1.0 / memory
        self.sums: torch.Tensor | None = None  # (3, bins, C): sum ln ratio, count, true flux

    def __call__(self, output: torch.Tensor, target: torch.Tensor, b_tot: torch.Tensor,
                 snr: torch.Tensor | None = None):  # fmt: skip
        """``output``, ``target``: (N, C, H, W) electrons; ``b_tot``: (N,) the targets'
        blendedness; ``snr``: (N,) their S/N (needed with ``snr_edges``). Returns the penalty
        (a scalar)."""
        ratio, true_flux = log_flux_ratio(output, target)
        member = self.membership(b_tot, snr).to(output.dtype)  # (N, bins)
        valid = (true_flux > 0).to(output.dtype)  # (N, C)
        ratio = ratio * valid
        batch_sum = torch.einsum("ng,nc->gc", member, ratio)
        batch = torch.stack([
            batch_sum.detach(),
            torch.einsum("ng,nc->gc", member, valid),
            torch.einsum("ng,nc->gc", member, true_flux.detach() * valid),
        ])  # fmt: skip
        decayed = 0.0 if self.sums is None else self.decay * self.sums.to(batch)
        self.sums = decayed + batch
        bias = (self.sums[0] / self.sums[1].clamp(min=1e-6)).detach()  # (bins, C)
        share = self.sums[2] / self.sums[2].sum(1, keepdim=True).clamp(min=1e-6)
        present = (self.sums[1].sum(1) > 0).to(output.dtype)
        bin_weight = present / present.sum().clamp(min=1)
        value = (bin_weight[:, None] * share * bias.square()).sum()
        batch_mean = batch_sum / batch[1].clamp(min=1e-6)
        seen = (batch[1] > 0).to(output.dtype)  # only bins this batch has members in pull
        pull = (bin_weight[:, None] * share * seen * 2 * bias * batch_mean).sum()
        return value + pull - pull.detach()

    def membership(self, b_tot: torch.Tensor, snr: torch.Tensor | None) -> torch.Tensor:
        """(N, bins) one-hot bin of each target: its blendedness bin, split by S/N bin when
        ``snr_edges`` are given (bin = blendedness bin x S/N bins + S/N bin)."""
        edges = torch.tensor(self.edges, dtype=b_tot.dtype, device=b_tot.device)
        index = torch.bucketize(b_tot.detach(), edges)
        n_snr = len(self.snr_edges) + 1
        if self.snr_edges:
            if snr is None:
                raise ValueError("flux bias with S/N edges needs the targets' S/N")
            snr_edges = torch.tensor(self.snr_edges, dtype=snr.dtype, device=snr.device)
            index = index * n_snr + torch.bucketize(snr.detach(), snr_edges)
        return F.one_hot(index, (len(self.edges) + 1) * n_snr)

    def biases(self) -> torch.Tensor | None:
        """The running mean ln(F_out / F_true) per bin, over bands by their share (bins,), or
        None before the first batch."""
        if self.sums is None:
            return None
        share = self.sums[2] / self.sums[2].sum(1, keepdim=True).clamp(min=1e-6)
        return (share * self.sums[0] / self.sums[1].clamp(min=1e-6)).sum(1)


def with_flux(terms: LossTerms, value: torch.Tensor, weight: float) -> LossTerms:
    """``terms`` with ``weight`` x ``value`` (:class:`RunningFluxBias`'s) added to the total
    and kept as ``flux``."""
    return replace(terms, total=terms.total + weight * value, flux=value)
