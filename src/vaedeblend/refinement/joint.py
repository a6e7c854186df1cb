"""Joint refinement: every detected galaxy of a stamp fitted together, through the decoder.

One forward pass of the deblender gives each galaxy's latent independently; nothing makes the
galaxies add up to the observed blend. Refinement starts from those latents (the deblender run
on a cutout centred on each detection) and optimises all of them, with a sub-pixel position
offset per galaxy, so that the sum of the decoded galaxies, each placed at its position on each
band's own grid (:func:`~vaedeblend.refinement.placement.shift_images`), explains every band:

    loss = sum_pixels [ (data - model)^2 / (2 v) + log(v) / 2 ],  v = sky + max(model, 0)
           - sum_galaxies log p(z)   (the flow prior, :mod:`vaedeblend.refinement.prior`)
           + sum_galaxies |offset|^2 / (2 sigma_pos^2)

in electrons and nats: the Gaussian approximation of the Poisson noise of sky plus model. One
Adam optimiser runs over a batch of stamps and all their galaxies at once (no Python loop over
galaxies) for at most ``iterations`` steps; each stamp keeps the parameters of its lowest loss
seen, so its final loss is never above its initial one. The procedure has no random step: the
same input gives the same output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import sep
import torch

from vaedeblend.argtypes import check_positive
from vaedeblend.models.api import DeblendContext, Model, check_stamps, expand_band_names
from vaedeblend.refinement.data_pixels import combine_with_data
from vaedeblend.refinement.placement import shift_images
from vaedeblend.refinement.prior import LatentPrior


@dataclass(frozen=True)
class RefineSettings:
    """Attributes:
    iterations: most Adam steps per batch of stamps.
    lr: Adam's step, in units of the encoder's posterior width (latents) and of a tenth of
        a pixel (positions).
    tolerance_nats: a stamp has converged when its best loss improved by less than this
        over the last ``patience`` steps; the batch stops when all have.
    patience: see ``tolerance_nats``.
    max_galaxies: galaxies fitted per stamp, the central one included (the brightest other
        detections are kept).
    nsigma, min_area: sep detection on the S/N-weighted stack of the first grid's bands.
    merge_radius_pixels: a detection this close to the stamp centre is the central galaxy.
    position_sigma_arcsec: width of the Gaussian prior on each galaxy's position offset.
    flux_sigma: None, or fit each galaxy's flux in each band as a free scale exp(s) on its
        decoded image, with a Gaussian prior of this width on s (natural log): room for the
        fit to correct a decoder that draws bright galaxies too faint (sigmoid cores).
    batch_size: stamps optimised together.
    detect_on_residual: detect the neighbours on the stamp minus the model's one-pass central
        galaxy (True), or on the stamp itself.
    central_prior: the central galaxy's latent prior: ``"flow"`` (the latent prior, as for
        every galaxy), ``"deblender"`` (the deblender's own Gaussian q(z | stamp), which
        keeps the fit near the one-pass output that was trained on the truth) or ``"fixed"``
        (the central galaxy stays the one-pass output, latent and position: only its
        neighbours are fitted, to what it leaves of the stamp).
    flux_anchor_sigma: None, or a Gaussian prior of this width on ln(F / F_one_pass) of the
        central galaxy, F its flux summed over bands and pixels (electrons) and F_one_pass
        the deblender's one-pass output's: the one pass was trained on the truth (with the
        flux-bias term, issue 12), the fit's optimum is not, and in crowded stamps it hands
        the central galaxy undetected neighbours' light or gives its light to fitted ones.
        Colours and shapes stay free.
    flux_from_data: None (the central galaxy's flux in each band is its model's), or measure
        it on the data, given a prior on the model's own flux of this fractional error. The
        returned image is the central model scaled per band, so its shape is the model's and
        its flux the measurement.
    data_flux_fit: how ``flux_from_data`` measures: ``"joint"`` (every fitted galaxy's
        amplitude per band in one weighted least-squares fit, :func:`joint_flux_scale`) or
        ``"share"`` (the observed electrons within the fitted galaxies' footprint shared
        among them in proportion to their models, scarlet's flux conservation, combined by
        inverse variance with the model's flux, :func:`data_flux_scale`; the first
        implementation, kept to reproduce its measurements).
    pixels_from_data: None (the central galaxy's image is its model, scaled to the measured
        flux), or the model's fractional error per pixel: each pixel combines the model with
        the central's share of the observed electrons by inverse variance, keeping each
        band's flux (:func:`~vaedeblend.refinement.data_pixels.combine_with_data`). Bright
        galaxies' shapes then follow the data where the decoder cannot draw their detail.
    """

    # 25 steps of 0.2 match 40 of 0.1 on centred LSST blends at 0.6 of the time, and do better
    # on simulated fields (docs/refinement.md)
    iterations: int = 25
    lr: float = 0.2
    tolerance_nats: float = 0.5
    patience: int = 10
    max_galaxies: int = 4
    nsigma: float = 1.5
    min_area: int = 5
    merge_radius_pixels: float = 2.0
    position_sigma_arcsec: float = 0.1
    flux_sigma: float | None = None
    batch_size: int = 32
    detect_on_residual: bool = True
    central_prior: str = "flow"
    flux_anchor_sigma: float | None = None
    flux_from_data: float | None = None
    data_flux_fit: str = "joint"
    pixels_from_data: float | None = None

    # what settings added since the first calibrations were measured did before they existed
    # (fit.check_calibration reads a calibration that lacks one as measured with this value)
    BEFORE_ADDED: ClassVar[dict] = {"data_flux_fit": "share"}

    def __post_init__(self):
        if self.central_prior not in ("flow", "deblender", "fixed"):
            raise ValueError(
                f"central_prior must be 'flow', 'deblender' or 'fixed', got {self.central_prior!r}"
            )
        if self.data_flux_fit not in ("joint", "share"):
            raise ValueError(
                f"data_flux_fit must be 'joint' or 'share', got {self.data_flux_fit!r}"
            )
        for name in ("iterations", "patience", "max_galaxies", "min_area", "batch_size"):
            check_positive(name, getattr(self, name))
        for name in ("lr", "nsigma", "position_sigma_arcsec", "tolerance_nats"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("flux_sigma", "flux_anchor_sigma", "flux_from_data", "pixels_from_data"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")


#: The settings ``--refine`` runs with in stamp mode unless its flags say otherwise
#: (``evaluate``, ``prior --calibrate-on``, the demo's refined row): the best measured on the
#: test blends (docs/refinement.md, "What it gives today"). The central galaxy stays the
#: one-pass output, its flux in each band is measured on the data (the model's own given a
#: 5 % error) and its bright pixels follow the data (a 10 % error per model pixel); only its
#: neighbours are fitted. ``RefineSettings()`` itself is the full joint fit of every galaxy
#: under the flow prior, of which these switch parts off or on.
STAMP_REFINEMENT: dict = {"central_prior": "fixed", "flux_from_data": 0.05, "pixels_from_data": 0.1}

#: ``deblend --refine`` (field mode), where the one pass on field cut-outs is poorer and
#: fitting the central galaxy too does better: the full joint fit, bright pixels from the data.
FIELD_REFINEMENT: dict = {"central_prior": "flow", "flux_from_data": None, "pixels_from_data": 0.1}


@dataclass
class RefinementResult:
    """What :meth:`RefinedModel.refine` returns for N stamps (model band order).

    Attributes:
        central: (N, C, H, W) float32 electrons, the refined central galaxy.
        initial_loss, final_loss: (N,) the loss (nats) at the deblender's latents and at the
            returned ones.
        n_galaxies: (N,) galaxies fitted (central included).
        latents: (N, K, latent_dim) refined latents (slot 0: the central galaxy).
        offsets_arcsec: (N, K, 2) refined (dx, dy) of each galaxy from the stamp centre.
        iterations: (N,) Adam steps run on the stamp's batch.
        log_flux_scale: (N, K, C) each galaxy's fitted flux scale per band, natural log (0
            without ``RefineSettings.flux_sigma``).
        data_flux_scale: (N, C) the factor per band that gave ``central`` the flux measured
            on the data (1 without ``RefineSettings.flux_from_data``).
    """

    central: np.ndarray
    initial_loss: np.ndarray
    final_loss: np.ndarray
    n_galaxies: np.ndarray
    latents: np.ndarray
    offsets_arcsec: np.ndarray
    iterations: np.ndarray
    log_flux_scale: np.ndarray
    data_flux_scale: np.ndarray


@dataclass(frozen=True)
class GalaxyPositions:
    """Where the galaxies of N stamps are, for refinement to fit them: slot 0 of each stamp is
    the central galaxy.

    Attributes:
        offsets_arcsec: (N, K, 2) (dx, dy) of each slot from the stamp centre, arcsec.
        used: (N, K) bool, the slots that hold a galaxy (slot 0 always does).
    """

    offsets_arcsec: np.ndarray
    used: np.ndarray

    def __post_init__(self):
        n, k, two = np.shape(self.offsets_arcsec)
        if two != 2 or np.shape(self.used) != (n, k) or k < 1:
            raise ValueError(
                f"positions: offsets must be (N, K, 2) and used (N, K), got "
                f"{np.shape(self.offsets_arcsec)} and {np.shape(self.used)}"
            )
        if not np.all(np.isfinite(self.offsets_arcsec)):
            raise ValueError("positions: offsets hold NaN or infinite values")
        if n and not np.all(self.used[:, 0]):
            raise ValueError("positions: slot 0 (the central galaxy) must be used in every stamp")

    @classmethod
    def from_truth(cls, truth, n_stamps: int, half_width_arcsec: float, k: int):
        """The true positions of a simulated set's galaxies (its ``truth`` table: columns
        ``blend_index``, ``is_target``, ``dx_arcsec``, ``dy_arcsec`` and ``flux_lsst_r``, else
        the first ``flux_*``, to rank them): the target in slot 0, then the brightest others
        whose centre is on the stamp (within ``half_width_arcsec`` of its centre in x and y),
        at most ``k`` galaxies. Peers that fit known positions (MADNESS) work in this setting:
        it leaves detection out."""
        names = truth.dtype.names
        flux = "flux_lsst_r" if "flux_lsst_r" in names else next(
            name for name in names if name.startswith("flux_")
        )  # fmt: skip
        rows = truth[truth["blend_index"] < n_stamps]
        inside = np.maximum(np.abs(rows["dx_arcsec"]), np.abs(rows["dy_arcsec"]))
        rows = rows[(inside < half_width_arcsec) | rows["is_target"]]
        offsets, used = np.zeros((n_stamps, k, 2)), np.zeros((n_stamps, k), bool)
        for i in range(n_stamps):
            mine = rows[rows["blend_index"] == i]
            mine = mine[np.lexsort((-mine[flux], ~mine["is_target"]))][:k]
            if not len(mine) or not mine["is_target"][0]:
                raise ValueError(f"positions: stamp {i} has no target in the truth table")
            offsets[i, : len(mine)] = np.stack([mine["dx_arcsec"], mine["dy_arcsec"]], axis=1)
            used[i, : len(mine)] = True
        return cls(offsets, used)


def find_galaxies(
    stamps: np.ndarray, sky: np.ndarray, scales: np.ndarray, settings: RefineSettings
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (N, K, 2) arcsec, used (N, K) bool): slot 0 is the central galaxy at the stamp
    centre; the others are sep detections on the S/N-weighted stack of the bands on the first
    channel's grid of ``stamps``, brightest first, beyond ``merge_radius_pixels`` of the
    centre."""
    n, _, h, w = stamps.shape
    k = settings.max_galaxies
    offsets = np.zeros((n, k, 2))
    used = np.zeros((n, k), bool)
    used[:, 0] = True
    grid = [c for c in range(len(scales)) if np.isclose(scales[c], scales[0])]
    weights = 1.0 / sky[grid]
    noise = float(np.sqrt((weights**2 * sky[grid]).sum()))
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    for i in range(n):
        xy = _detections(stamps[i, grid], weights, noise, settings)
        xy = xy[np.hypot(*(xy - centre).T) > settings.merge_radius_pixels][: k - 1]
        offsets[i, 1 : 1 + len(xy)] = (xy - centre) * scales[0]
        used[i, 1 : 1 + len(xy)] = True
    return offsets, used


def _detections(images, weights, noise: float, settings: RefineSettings) -> np.ndarray:
    """(M, 2) (x, y) pixels of sep's detections on the weighted stack, brightest first."""
    stack = np.ascontiguousarray((images * weights[:, None, None]).sum(axis=0), dtype=np.float64)
    found = sep.extract(stack, settings.nsigma, err=noise, minarea=settings.min_area)
    if not len(found):
        return np.zeros((0, 2))
    order = np.argsort(-found["flux"])
    return np.stack([found["x"][order], found["y"][order]], axis=1)


class RefinedModel:
    """A trained model whose outputs are refined jointly with their neighbours under a latent
    prior: a :class:`~vaedeblend.models.api.Deblender` (stamp mode and field mode).

    Args:
        model: the deblender (or VAE) giving the starting latents and the decoder.
        prior: the latent prior fitted on that model's decoder.
        settings: the optimisation (:class:`RefineSettings`).
    """

    def __init__(self, model: Model, prior: LatentPrior, settings: RefineSettings | None = None):
        if prior.latent_dim != model.latent_dim:
            raise ValueError(
                f"prior has {prior.latent_dim} latent dimensions, the model {model.latent_dim}"
            )
        self.model = model
        self.prior = prior
        self.settings = settings or RefineSettings()
        self.band_ids = list(model.band_ids)
        self.stamp_size = model.stamp_size
        for p in list(model.net.parameters()) + list(prior.parameters()):
            p.requires_grad_(False)

    @property
    def name(self) -> str:
        return f"{self.model.name} refined"

    @property
    def config(self) -> dict:
        """The wrapped model's configuration (bands, pixel scales, sky levels it learned)."""
        return self.model.config

    @property
    def path(self):
        """The wrapped model's directory."""
        return self.model.path

    def deblend(
        self,
        stamps,
        bands: Sequence[str] | None = None,
        context: DeblendContext | None = None,
        batch_size: int | None = None,
        positions: GalaxyPositions | None = None,
    ) -> np.ndarray:
        """(N, C, H, W) float32 electrons, the refined central galaxy of each stamp, channels in
        the order of ``stamps`` (``bands`` or ``context.band_ids``; None: the model's). The
        context's sky levels, where given, are the noise model's; ``batch_size``: stamps
        optimised together (default: the settings'); ``positions``: the galaxies to fit in
        each stamp (default: detected, :func:`find_galaxies`)."""
        if batch_size is not None and batch_size != self.settings.batch_size:
            return RefinedModel(
                self.model, self.prior, replace(self.settings, batch_size=batch_size)
            ).deblend(stamps, bands, context, positions=positions)
        x, perm, sky = self.in_model_order(stamps, bands, context)
        out = self.refine(x, sky, positions).central
        return out[:, perm] if perm is not None else out

    def in_model_order(self, stamps, bands=None, context: DeblendContext | None = None):
        """(stamps in the model's channel order, the permutation back to the stamps' order or
        None, the context's sky levels in the model's order or None)."""
        if bands is None and context is not None:
            bands = list(context.band_ids)
        x, perm = self.model._prepare(stamps, bands)
        sky = None
        if context is not None:
            # the context's sky levels are in the stamps' channel order: put them in the model's
            names = expand_band_names(list(bands), self.model.band_ids) if bands else None
            to_model = [names.index(b) for b in self.model.band_ids] if names else None
            sky = np.asarray(context.sky_levels_electrons, dtype=np.float64)
            sky = sky[to_model] if to_model is not None else sky
        return x, perm, sky

    def refine(
        self, stamps, sky_levels_electrons=None, positions: GalaxyPositions | None = None
    ) -> RefinementResult:
        """Refine (N, C, H, W) electrons in the model's band order (:class:`RefinementResult`).
        ``sky_levels_electrons`` (C,): the noise model's sky per pixel (default: the levels the
        model was trained with). ``positions``: the galaxies to fit, e.g. from a deeper
        catalogue (default: detected on the stamps, :func:`find_galaxies`)."""
        x = check_stamps(stamps)
        self.model._check_shape(x)
        config = self.model.config
        sky = np.asarray(
            config["sky_levels_electrons"]
            if sky_levels_electrons is None
            else sky_levels_electrons,
            dtype=np.float64,
        )
        if sky.shape != (x.shape[1],) or not np.all(np.isfinite(sky)) or np.any(sky <= 0):
            raise ValueError(f"sky levels must be {x.shape[1]} finite values > 0, got {sky}")
        scales = np.asarray(config["pixel_scales_arcsec"], dtype=np.float64)
        # the neighbours are found where the one-pass central galaxy has been taken away: its
        # light no longer hides close neighbours, nor merges them with it
        if positions is None:
            seen = x - self.model.deblend(x) if self.settings.detect_on_residual else x
            offsets, used = find_galaxies(seen, sky, scales, self.settings)
        elif len(positions.used) != len(x):
            raise ValueError(f"positions are for {len(positions.used)} stamps, not {len(x)}")
        else:
            offsets, used = positions.offsets_arcsec, positions.used
        parts = []
        step = self.settings.batch_size
        for start in range(0, len(x), step):
            sl = slice(start, start + step)
            parts.append(self._refine_batch(x[sl], offsets[sl], used[sl], sky, scales))
        if not parts:
            return _empty_result(x, used.shape[1], self.model.latent_dim)
        return RefinementResult(*(np.concatenate(p) for p in zip(*parts, strict=True)))

    def _initial_latents(self, data: torch.Tensor, stamp, where, scales):
        """(mu, sigma), each (G, D): the model's q(z | cutout) on cutouts of stamp ``stamp[g]``
        centred on each galaxy ``g`` (at ``where[g]`` arcsec from the stamp centre)."""
        cutouts = shift_images(data[stamp], -where, scales)
        with torch.no_grad():
            return self.model.net.encoder(self.model.intensity.network_input(cutouts))

    def _refine_batch(self, x, offsets, used, sky, scales):
        s = self.settings
        b, k = used.shape
        stamp, slot = (torch.from_numpy(a) for a in np.nonzero(used))  # galaxies, row-major
        data = torch.from_numpy(x)
        start = torch.from_numpy(offsets[used]).float()
        # Steps are taken in units of the encoder's posterior width per dimension (z = mu +
        # sigma * u) and of a tenth of a pixel (delta = pixel / 10 * v): Adam's first steps
        # are about ``lr`` in every parameter, which in raw latent units overshoots the
        # well-measured dimensions of bright galaxies.
        mu, sigma = self._initial_latents(data, stamp, start, scales)
        u = torch.zeros_like(mu, requires_grad=True)
        v = torch.zeros_like(start, requires_grad=True)
        # flux scales in units of their prior width, like the latents
        fit_flux = s.flux_sigma is not None
        w = torch.zeros((len(mu), x.shape[1]), requires_grad=fit_flux)
        position_unit = float(scales[0]) / 10
        loss_of = _JointLoss(self, data, stamp, start, torch.from_numpy(sky).float(), scales)
        central = slot == 0  # one per stamp, in stamp order
        if s.central_prior == "deblender":
            loss_of.anchor(central, mu, sigma)
        if s.flux_anchor_sigma is not None:
            loss_of.anchor_flux(central, mu[central], s.flux_anchor_sigma)
        # "fixed": the central galaxy stays the one pass (latent and position); only its
        # neighbours (and flux scales) move to explain what it leaves
        free = (~central if s.central_prior == "fixed" else torch.ones_like(central)).float()
        if s.central_prior == "fixed":
            loss_of.fix(central, mu[central])
        opt = torch.optim.Adam([u, v, w] if fit_flux else [u, v], lr=s.lr)
        best_loss = torch.full((b,), torch.inf, dtype=torch.float64)
        best_z, best_delta, best_s = mu.clone(), torch.zeros_like(start), torch.zeros_like(w)
        history, initial, steps = [], None, 0
        for it in range(s.iterations + 1):
            z, delta = mu + sigma * u * free[:, None], position_unit * v * free[:, None]
            log_s = s.flux_sigma * w if fit_flux else None
            loss = loss_of(z, delta, log_s)
            with torch.no_grad():
                better = loss < best_loss
                best_loss = torch.where(better, loss, best_loss)
                mine = better[stamp]
                best_z[mine], best_delta[mine] = z[mine], delta[mine]
                if fit_flux:
                    best_s[mine] = log_s[mine]
            if initial is None:
                initial = loss.detach().clone()
            history.append(best_loss.clone())
            converged = len(history) > s.patience and bool(
                torch.all(history[-1 - s.patience] - best_loss < s.tolerance_nats)
            )
            if it == s.iterations or converged:
                break
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
            steps += 1
        with torch.no_grad():
            images = loss_of.placed(best_z[central], best_delta[central], central,
                                    best_s[central])  # fmt: skip
            scale = torch.ones(images.shape[:2], dtype=torch.float64)
            if s.flux_from_data is not None or s.pixels_from_data is not None:
                every = loss_of.placed(best_z, best_delta, log_scale=best_s)
                total = torch.zeros_like(data).index_add(0, stamp, every)
            if s.flux_from_data is not None:
                if s.data_flux_fit == "joint":
                    scale = joint_flux_scale(data, every, stamp, slot, loss_of.sky,
                                             s.flux_from_data)  # fmt: skip
                else:
                    scale = data_flux_scale(data, images, total, loss_of.sky, s.flux_from_data)
            scaled = images * scale[:, :, None, None].float()
            if s.pixels_from_data is not None:
                # the neighbours as fitted, the central galaxy at its measured flux
                total = scaled + (total - images).clamp(min=0)
                scaled = combine_with_data(data, scaled, total, loss_of.sky, s.pixels_from_data)
            images = scaled
        latents = np.zeros((b, k, z.shape[1]), np.float32)
        latents[used] = best_z.numpy()
        where = np.zeros((b, k, 2))
        where[used] = (start + best_delta).numpy()
        log_scale = np.zeros((b, k, x.shape[1]), np.float32)
        log_scale[used] = best_s.numpy()
        return (
            images.numpy(), initial.numpy(), best_loss.numpy(), used.sum(axis=1),
            latents, where, np.full(b, steps), log_scale, scale.numpy(),
        )  # fmt: skip


# pixels where the fitted galaxies' sum exceeds this many sky sigmas are their footprint, whose
# electrons data_flux_scale shares among them; beyond it, the noise would outweigh the light
FOOTPRINT_NSIGMA = 1.0


def data_flux_scale(data, central, total, sky, model_error: float) -> torch.Tensor:
    """(B, C) float64: per stamp and band, the factor that gives the central galaxy's model
    the flux measured on the data. ``data``, ``central`` and ``total`` (the sum of every
    fitted galaxy, central included) are (B, C, H, W) electrons, ``sky`` (1, C, 1, 1) the sky
    per pixel.

    Within the footprint (``total`` above FOOTPRINT_NSIGMA sky sigmas) each pixel's electrons
    are shared among the galaxies in proportion to their models (scarlet's flux
    conservation): the central galaxy's flux is its model's plus its share of the residual.
    That measurement's variance is the pixels' (sky + model), widened by the reduced chi^2
    under the galaxy, where it exceeds 1, of the residual that the central rescaled to the
    measured flux still leaves: a flux the model merely got wrong leaves nothing (the data
    win), light no fitted galaxy explains (an undetected neighbour) is not noise, and there
    the model's own flux, given a fractional error ``model_error``, should keep the weight.
    The two are combined by inverse variance."""
    foot = total > FOOTPRINT_NSIGMA * sky.sqrt()
    share = torch.where(foot, central / torch.where(foot, total, 1.0), 0.0).double()
    var = (sky + total.clamp(min=0)).double()
    resid = (data - total).double()
    model_flux = central.double().sum(dim=(2, 3))
    measured = model_flux + (share * resid).sum(dim=(2, 3))
    weight = share.sum(dim=(2, 3)).clamp(min=1e-12)
    # the residual that rescaling the central galaxy to the measured flux leaves
    gain = ((measured - model_flux) / model_flux.clamp(min=1.0))[:, :, None, None]
    left = resid - gain * central.double()
    chi2 = (share * left**2 / var).sum(dim=(2, 3)) / weight
    # no footprint: the measurement is the model's flux, whatever weight it gets
    var_measured = ((share**2 * var).sum(dim=(2, 3)) * chi2.clamp(min=1)).clamp(min=1e-12)
    floor = model_flux.clamp(min=1.0)  # 1 electron: outputs with no flux keep theirs
    var_model = (model_error * floor) ** 2
    flux = (model_flux / var_model + measured / var_measured) / (1 / var_model + 1 / var_measured)
    return (flux / floor).clamp(min=0)


# prior width of a neighbour's amplitude in the joint flux fit: its model's flux is a start, not
# a measurement (undetected light, one-pass outputs of neighbours not trained on)
NEIGHBOUR_FLUX_ERROR = 1.0


def joint_flux_scale(data, every, stamp, slot, sky, model_error: float) -> torch.Tensor:
    """(B, C) float64: per stamp and band, the factor that gives the central galaxy's model
    the flux measured on the data by fitting every galaxy's amplitude at once. ``data`` is
    (B, C, H, W) electrons, ``every`` (G, C, H, W) the fitted galaxies' placed models, of
    stamps ``stamp`` (G,) in slots ``slot`` (G,) (slot 0: the central galaxy), ``sky``
    (1, C, 1, 1) the sky per pixel.

    Weighted least squares of the data on the G models (weights 1 / (sky + model sum)), with
    Gaussian priors on the amplitudes: 1 +- ``model_error`` for the central galaxy, 1 +-
    NEIGHBOUR_FLUX_ERROR for its neighbours. Light no fitted galaxy explains is not noise: the
    data term is divided by the reduced chi^2 of the fit's residual within the footprint (sum
    above FOOTPRINT_NSIGMA sky sigmas) where it exceeds 1, and the fit solved again, so that
    the prior keeps the weight there. Unlike sharing the residual by model ratio, the fit
    gives a neighbour the light that has its shape and not the central galaxy's."""
    b, c, h, w = data.shape
    k = int(slot.max()) + 1
    models = torch.zeros(b, k, c, h * w, dtype=torch.float64)
    models[stamp, slot] = every.double().reshape(len(every), c, h * w)
    total = models.sum(dim=1)
    sky_b = sky.reshape(1, c, 1).double()
    weight = 1 / (sky_b + total.clamp(min=0))
    pixels = data.double().reshape(b, c, h * w)
    normal = torch.einsum("bkcp,bjcp,bcp->bckj", models, models, weight)
    projected = torch.einsum("bkcp,bcp,bcp->bck", models, weight, pixels)
    width = torch.full((k,), NEIGHBOUR_FLUX_ERROR, dtype=torch.float64)
    width[0] = model_error
    precision = 1 / width**2
    foot = total > FOOTPRINT_NSIGMA * sky_b.sqrt()
    chi2 = torch.ones(b, c, dtype=torch.float64)
    for _ in range(2):  # the second solve with the data term widened by the first's chi^2
        lhs = normal / chi2[..., None, None] + torch.diag(precision)
        rhs = projected / chi2[..., None] + precision
        amplitude = torch.linalg.solve(lhs, rhs[..., None])[..., 0]
        residual = pixels - torch.einsum("bck,bkcp->bcp", amplitude, models)
        chi2 = (residual**2 * weight * foot).sum(-1) / foot.sum(-1).clamp(min=1)
        chi2 = chi2.clamp(min=1)
    return amplitude[..., 0].clamp(min=0)


class _JointLoss:
    """The loss of one batch (see the module docstring), per stamp (B,), float64 sums of
    float32 images. ``stamp`` (G,) names the stamp of each of the G galaxies, ``start`` (G, 2)
    their detected offsets, arcsec."""

    def __init__(self, refined: RefinedModel, data, stamp, start, sky, scales):
        self.refined, self.data, self.stamp, self.start = refined, data, stamp, start
        self.sky = sky[None, :, None, None]
        self.scales = scales
        self.position_var = refined.settings.position_sigma_arcsec**2
        self.flux_var = (refined.settings.flux_sigma or 1.0) ** 2
        self.anchored = None
        self.flux_anchor = None
        self.fixed = None

    def fix(self, which: torch.Tensor, z: torch.Tensor) -> None:
        """Galaxies ``which`` (G,) bool keep the latents ``z`` (one per galaxy of ``which``)
        at their detected offsets: decoded and placed once, not at every step (the
        ``"fixed"`` central galaxy; its flux scale, if fitted, still applies)."""
        with torch.no_grad():
            images = self.placed(z, torch.zeros(len(z), 2), which)
        self.fixed = (which, images)

    def anchor_flux(self, which: torch.Tensor, z_one_pass: torch.Tensor, sigma: float) -> None:
        """Galaxies ``which`` (G,) bool (one per stamp) take a Gaussian prior of width
        ``sigma`` on ln(F / F_one_pass), F summed over bands and pixels, F_one_pass that of
        the decoded ``z_one_pass`` (one latent per galaxy of ``which``)."""
        with torch.no_grad():
            one_pass = self.refined.model.decode_differentiable(z_one_pass).sum(dim=(1, 2, 3))
        # 1 electron: a floor for outputs with no flux at all, far below any detectable galaxy
        self.flux_anchor = (which, torch.log(one_pass.double().clamp(min=1.0)), sigma)

    def _flux_anchor_term(self, placed: torch.Tensor) -> torch.Tensor:
        """(G,) the flux anchor's negative log prior of each galaxy (0 where not anchored)."""
        which, log_one_pass, sigma = self.flux_anchor
        log_flux = torch.log(placed[which].sum(dim=(1, 2, 3)).double().clamp(min=1.0))
        term = torch.zeros(len(placed), dtype=torch.float64)
        term[which] = 0.5 * ((log_flux - log_one_pass) / sigma) ** 2
        return term

    def anchor(self, which: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> None:
        """Galaxies ``which`` (G,) bool take the Gaussian N(mu, sigma^2) per latent dimension
        ((G, D) each) as their prior instead of the flow."""
        self.anchored = (which, mu, sigma)

    def _log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """(G,) log prior density of each galaxy's latent, up to a constant per galaxy."""
        log_p = self.refined.prior.log_prob(z)
        if self.anchored is None:
            return log_p
        which, mu, sigma = self.anchored
        gaussian = -0.5 * (((z - mu) / sigma) ** 2).sum(dim=1)
        return torch.where(which, gaussian.to(log_p.dtype), log_p)

    def placed(self, z, delta, which=slice(None), log_scale=None) -> torch.Tensor:
        """(G', C, H, W) float32 electrons: galaxies ``which`` decoded, scaled by
        exp(``log_scale``) per band ((G', C); None: 1) and put at start + delta."""
        images = self.refined.model.decode_differentiable(z).float()
        if log_scale is not None:
            images = images * torch.exp(log_scale)[:, :, None, None]
        return shift_images(images, self.start[which] + delta, self.scales)

    def _placed_every(self, z, delta, log_scale=None) -> torch.Tensor:
        """(G, C, H, W): :meth:`placed` for every galaxy, the fixed ones (:meth:`fix`) taken
        from their images placed once: their latents and offsets do not move."""
        if self.fixed is None:
            return self.placed(z, delta, log_scale=log_scale)
        which, fixed = self.fixed
        moving = ~which
        if log_scale is not None:  # a per-band factor: placing and scaling commute
            fixed = fixed * torch.exp(log_scale[which])[:, :, None, None]
        placed = torch.zeros((len(z), *fixed.shape[1:]), dtype=fixed.dtype)
        placed = placed.index_put((which.nonzero()[:, 0],), fixed)
        if moving.any():
            scale = None if log_scale is None else log_scale[moving]
            free = self.placed(z[moving], delta[moving], moving, scale)
            placed = placed.index_put((moving.nonzero()[:, 0],), free)
        return placed

    def __call__(self, z, delta, log_scale=None) -> torch.Tensor:
        placed = self._placed_every(z, delta, log_scale)
        model = torch.zeros_like(self.data).index_add(0, self.stamp, placed)
        var = self.sky + model.clamp(min=0)
        pixels = 0.5 * ((self.data - model) ** 2 / var + torch.log(var))
        position = (delta**2).sum(dim=1) / (2 * self.position_var)
        per_galaxy = position - self._log_prior(z)
        if log_scale is not None:
            per_galaxy = per_galaxy + (log_scale**2).sum(dim=1) / (2 * self.flux_var)
        per_galaxy = per_galaxy.double()
        if self.flux_anchor is not None:
            per_galaxy = per_galaxy + self._flux_anchor_term(placed)
        per_stamp = torch.zeros(len(self.data), dtype=torch.float64)
        per_stamp = per_stamp.index_add(0, self.stamp, per_galaxy)
        return pixels.double().sum(dim=(1, 2, 3)) + per_stamp


def _empty_result(x: np.ndarray, k: int, d: int) -> RefinementResult:
    return RefinementResult(
        np.zeros(x.shape, np.float32), np.zeros(0), np.zeros(0), np.zeros(0, int),
        np.zeros((0, k, d), np.float32), np.zeros((0, k, 2)), np.zeros(0, int),
        np.zeros((0, k, x.shape[1]), np.float32), np.zeros((0, x.shape[1])),
    )  # fmt: skip
