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

Any loss can add ``shape_weight`` x :func:`shape_penalty`: the squared difference of the
output's and the target's ellipticities, measured from windowed second moments of each band in
the head's own normalised space, so that the decoder is rewarded for shapes directly rather
than only through the pixels (ellipticity bias m is what the user measures), and
``response_weight`` x :func:`response_penalty`: the batch's (slope - 1)^2 of output against
target ellipticities, which asks for an unbiased shape response rather than the shrunk
conditional mean the squared error alone is minimised by.

Their ``recon`` is in units of chi^2 / 2 (``chi2``) or noise^2 / 2 at faint pixels (``mse``), so
beta = 1 would be an ELBO-like weight; the default 0.01 keeps the latent code from collapsing
(see docs/models.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.nn import functional as F

from vaedeblend.training_choices import DEFAULT_BETA, LOSS_HEADS, LOSSES  # noqa: F401 (re-export)

# Lower bound on the variance (electrons^2): keeps the weight finite in a sky-free test band.
VARIANCE_FLOOR = 1e-3


@dataclass
class LossTerms:
    """Batch means (scalars): ``total`` = ``recon`` + beta * ``kl`` (+ shape_weight *
    ``shape``, see :func:`with_shape`; + response_weight * ``response``, see
    :func:`with_response`; + flux_weight * ``flux``, see :func:`.flux_bias.with_flux`; +
    teacher_weight * ``teacher``, see :func:`with_teacher`)."""

    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    shape: torch.Tensor | None = None
    response: torch.Tensor | None = None
    flux: torch.Tensor | None = None
    teacher: torch.Tensor | None = None


# Window of the shape penalty: a circular Gaussian whose sigma (pixels) follows the target's
# size, between these bounds: 1.5 px keeps a point-like galaxy's window wider than the PSF core's
# pixelisation; 8 px (1.6" in LSST) covers the largest galaxies of a 64-pixel stamp.
SHAPE_WINDOW_PX = (1.5, 8.0)


def _window_moments(image: torch.Tensor, centre: torch.Tensor, sigma: torch.Tensor):
    """Windowed flux and second moments of (N, C, H, W) images about ``centre`` (N, 2: x, y
    in pixels) with a circular Gaussian of ``sigma`` (N,) pixels: (flux, qxx, qyy, qxy), each
    (N, C), the moments normalised by the windowed flux."""
    h, w = image.shape[-2:]
    ys = torch.arange(h, dtype=image.dtype, device=image.device).reshape(1, h, 1)
    xs = torch.arange(w, dtype=image.dtype, device=image.device).reshape(1, 1, w)
    dx = xs - centre[:, 0].reshape(-1, 1, 1)
    dy = ys - centre[:, 1].reshape(-1, 1, 1)
    window = torch.exp(-0.5 * (dx.square() + dy.square()) / sigma.reshape(-1, 1, 1).square())
    weighted = image * window.unsqueeze(1)
    flux = weighted.sum(dim=(-2, -1))
    safe = flux.clamp(min=1e-6)

    def moment(a):
        return (weighted * a.unsqueeze(1)).sum(dim=(-2, -1)) / safe

    return flux, moment(dx * dx), moment(dy * dy), moment(dx * dy)


def _ellipticities(output: torch.Tensor, target: torch.Tensor):
    """(e_out, e_true, band_weight) of (N, C, H, W) images: e = (qxx - qyy, 2 qxy) /
    (qxx + qyy), each (2, N, C), from second moments in the target's Gaussian window, and
    each band's share (N, C) of the target's windowed flux; see :func:`shape_penalty`."""
    with torch.no_grad():
        total = target.sum(dim=1, keepdim=True).clamp(min=0)
        h, w = target.shape[-2:]
        grid_y, grid_x = torch.meshgrid(
            torch.arange(h, dtype=target.dtype, device=target.device),
            torch.arange(w, dtype=target.dtype, device=target.device),
            indexing="ij",
        )
        mass = total.flatten(1).sum(dim=1).clamp(min=1e-6)
        centre = torch.stack(
            [(total[:, 0] * grid_x).flatten(1).sum(1), (total[:, 0] * grid_y).flatten(1).sum(1)],
            dim=1,
        ) / mass.unsqueeze(1)
        wide = torch.full((len(target),), SHAPE_WINDOW_PX[1], dtype=target.dtype,
                          device=target.device)  # fmt: skip
        _, qxx, qyy, _ = _window_moments(total, centre, wide)
        sigma = (0.5 * (qxx + qyy)[:, 0]).clamp(min=0).sqrt().clamp(*SHAPE_WINDOW_PX)
        t_flux, t_xx, t_yy, t_xy = _window_moments(target, centre, sigma)
        band_weight = t_flux.clamp(min=0) / t_flux.clamp(min=0).sum(1, keepdim=True).clamp(1e-6)
        t_trace = (t_xx + t_yy).clamp(min=1e-6)
        e_true = torch.stack([(t_xx - t_yy) / t_trace, 2 * t_xy / t_trace])
    _, o_xx, o_yy, o_xy = _window_moments(output, centre, sigma)
    o_trace = (o_xx + o_yy).clamp(min=1e-6)
    e_out = torch.stack([(o_xx - o_yy) / o_trace, 2 * o_xy / o_trace])
    return e_out, e_true, band_weight


def shape_penalty(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image (N,): sum over bands of w_b |e_out - e_true|^2, with e = (qxx - qyy, 2 qxy) /
    (qxx + qyy) from Gaussian-windowed second moments.

    ``output`` and ``target`` are (N, C, H, W) in the head's normalised space (a monotone
    function of electrons: elliptical isophotes keep their shape). Centre and window come from
    the target summed over bands (its centroid; sigma = the rms radius of a first 8-pixel
    window, clipped to :data:`SHAPE_WINDOW_PX`), detached, and are the same for both images,
    so a shifted output is penalised too. w_b: each band's share of the target's windowed
    flux, so that bands where the galaxy is invisible do not count.
    """
    e_out, e_true, band_weight = _ellipticities(output, target)
    return ((e_out - e_true).square().sum(0) * band_weight).sum(1)


def response_penalty(
    output: torch.Tensor, target: torch.Tensor, snr: torch.Tensor | None = None, groups: int = 1
) -> torch.Tensor:
    """The batch's (slope - 1)^2 (a scalar), where slope is the least-squares slope through
    the origin of the output's ellipticities on the target's (both components), one slope per
    band, the bands' (slope - 1)^2 averaged with each band's share of the batch's windowed
    flux (the band weights of :func:`shape_penalty`): a proxy, without PSF correction, of
    1 + m, the multiplicative bias that ``evaluate`` measures with KSB. Per band, because one
    slope pooled over bands lets bands that stay shrunk push the others past 1 (ten LSST +
    Euclid bands: LSST r went from slope 1.07 to 1.14 while the Euclid bands stayed at 0.85).
    With ``groups`` > 1 the batch is split into that many groups of consecutive S/N (``snr``,
    (N,), e.g. :func:`target_snr`) and the penalty is the mean over groups, so that the faint
    galaxies' slope counts as much as the bright ones' (their shapes are the most shrunk).

    :func:`shape_penalty` alone is minimised by the conditional mean of the ellipticity given
    the noisy blend, which is shrunk towards round (slope < 1, m < 0); this term asks for an
    unbiased response instead, at the price of more scatter for faint galaxies.
    """
    e_out, e_true, band_weight = _ellipticities(output, target)
    weight = band_weight.unsqueeze(0)  # (1, N, C)
    if groups > 1:
        if snr is None:
            raise ValueError("response_penalty needs each image's snr to form S/N groups")
        members = torch.argsort(snr.detach()).tensor_split(groups)
    else:
        members = [torch.arange(len(target), device=target.device)]
    penalties = []
    for index in members:
        w, o, t = weight[:, index], e_out[:, index], e_true[:, index]
        slope = (w * o * t).sum(dim=(0, 1)) / (w * t.square()).sum(dim=(0, 1)).clamp(min=1e-6)
        share = w.sum(dim=(0, 1)) / w.sum().clamp(min=1e-6)  # (C,) band shares of the flux
        penalties.append((share * (slope - 1).square()).sum())
    return torch.stack(penalties).mean()


class RunningResponse:
    """The response penalty with a low-noise (slope - 1): per S/N bin (fixed ``snr_edges`` of
    :func:`target_snr`) and band, the slope of output on target ellipticities comes from
    running sums over the last ~``memory`` batches (exponentially decaying, detached), while
    the gradient comes from the current batch's slope. Its gradient is that of
    sum_bins sum_bands share * (slope - 1)^2 with the running slope in the factor (slope - 1):
    a bin already at slope 1 pulls nothing, so asking the faint bins (the most shrunk) for an
    unbiased response does not tilt the bright ones, and 16 galaxies of a batch no longer set
    the target alone (their slope's noise, squared, would be minimised too). Bins count
    equally; each band by its share of the bin's windowed target flux (as in
    :func:`response_penalty`). Its value is the running penalty.

    ``targets`` (bins,), when given, replaces 1 as each bin's wanted slope (steered by KSB's
    m, :class:`vaedeblend.models.ksb_control.KsbSlopeControl`).

    The running sums live in memory only: a resumed run re-accumulates them within ~``memory``
    steps.
    """

    def __init__(self, snr_edges: tuple[float, ...], memory: int):
        if memory < 1:
            raise ValueError(f"memory must be >= 1 batch, got {memory}")
        if list(snr_edges) != sorted(snr_edges) or any(e <= 0 for e in snr_edges):
            raise ValueError(f"snr_edges must be increasing and > 0, got {snr_edges}")
        self.edges = tuple(float(e) for e in snr_edges)
        self.decay = 1.0 - 1.0 / memory
        self.sums: torch.Tensor | None = None  # (3, bins, C): sum w o t, sum w t^2, sum w

    def __call__(
        self,
        output: torch.Tensor,
        target: torch.Tensor,
        snr: torch.Tensor,
        targets: torch.Tensor | None = None,
    ):
        e_out, e_true, band_weight = _ellipticities(output, target)
        edges = torch.tensor(self.edges, dtype=snr.dtype, device=snr.device)
        member = F.one_hot(torch.bucketize(snr.detach(), edges), len(self.edges) + 1)
        member = member.to(output.dtype)  # (N, bins)
        w = band_weight  # (N, C)
        numerator = torch.einsum("ng,nc,knc->gc", member, w, e_out * e_true)
        batch = torch.stack([
            numerator.detach(),
            torch.einsum("ng,nc,knc->gc", member, w, e_true.square()),
            torch.einsum("ng,nc->gc", member, w),
        ])  # fmt: skip
        decayed = 0.0 if self.sums is None else self.decay * self.sums.to(batch)
        self.sums = decayed + batch
        running_slope = self.sums[0] / self.sums[1].clamp(min=1e-6)
        batch_slope = numerator / batch[1].clamp(min=1e-6)
        share = self.sums[2] / self.sums[2].sum(1, keepdim=True).clamp(min=1e-6)  # (bins, C)
        present = (self.sums[2].sum(1) > 0).to(output.dtype)  # (bins,)
        bin_weight = present / present.sum().clamp(min=1)
        wanted = 1.0 if targets is None else targets.to(output.dtype).reshape(-1, 1)
        error = (running_slope - wanted).detach()
        value = (bin_weight[:, None] * share * error.square()).sum()
        seen = (batch[2] > 0).to(output.dtype)  # only bins this batch has members in pull
        pull = (bin_weight[:, None] * share * seen * 2 * error * batch_slope).sum()
        return value + pull - pull.detach()

    def slopes(self) -> torch.Tensor | None:
        """The running slopes (bins, C), or None before the first batch."""
        return None if self.sums is None else self.sums[0] / self.sums[1].clamp(min=1e-6)


def target_snr(target: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """(N,) S/N of each noiseless (N, C, H, W) target (electrons) under the per-pixel noise
    ``variance`` (electrons^2): sqrt(sum over pixels and bands of target^2 / variance), the
    optimal (matched-filter) S/N."""
    return (target.square() / variance).flatten(1).sum(1).sqrt()


def with_shape(terms: LossTerms, per_image: torch.Tensor, weight: float) -> LossTerms:
    """``terms`` with ``weight`` x the batch mean of ``per_image`` (:func:`shape_penalty`)
    added to the total and kept as ``shape``."""
    shape = per_image.mean()
    return replace(terms, total=terms.total + weight * shape, shape=shape)


def teacher_penalty(mu, mu_teacher, sigma_teacher) -> torch.Tensor:
    """(N,) nats: half the squared distance of the deblender's latent means ``mu`` (N, D) from
    the teacher's (the VAE encoder's on the stamp without its neighbours), in units of the
    teacher's posterior widths, summed over latent dimensions: the dimensions the teacher
    measures well pull hardest."""
    return 0.5 * (((mu - mu_teacher) / sigma_teacher) ** 2).sum(dim=1)


def with_teacher(terms: LossTerms, per_image: torch.Tensor, weight: float) -> LossTerms:
    """``terms`` with ``weight`` x the batch mean of ``per_image`` (:func:`teacher_penalty`)
    added to the total and kept as ``teacher``."""
    teacher = per_image.mean()
    return replace(terms, total=terms.total + weight * teacher, teacher=teacher)


def with_response(terms: LossTerms, value: torch.Tensor, weight: float) -> LossTerms:
    """``terms`` with ``weight`` x ``value`` (:func:`response_penalty`) added to the total and
    kept as ``response``."""
    return replace(terms, total=terms.total + weight * value, response=value)


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
