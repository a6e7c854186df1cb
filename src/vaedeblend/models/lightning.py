"""PyTorch Lightning pieces: the training module, the data module and atomic checkpoints.

One code path for CPU, one GPU and many GPUs / nodes (DDP): everything device-dependent
(noise, augmentation) happens inside the steps on the module's device.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vaedeblend.models.data import (
    EpochBatchSampler,
    SplitArrays,
    StampDataset,
    add_noise,
    random_dihedral,
)
from vaedeblend.models.flux_bias import RunningFluxBias, with_flux
from vaedeblend.models.flux_bias import blendedness as flux_blendedness
from vaedeblend.models.ksb_control import TARGET_BOUNDS, KsbSlopeControl
from vaedeblend.models.losses import (
    DEFAULT_BETA,
    LossTerms,
    RunningResponse,
    asinh_chi2_weight,
    asinh_loss,
    bce_loss,
    gaussian_loss,
    noise_variance,
    response_penalty,
    shape_penalty,
    target_snr,
    teacher_penalty,
    with_response,
    with_shape,
    with_teacher,
)
from vaedeblend.models.networks import Encoder, activation, build_vae
from vaedeblend.models.normalisation import Intensity
from vaedeblend.training_choices import SCHEDULERS
from vaedeblend.training_config import DEFAULTS


def warmup_cosine_factor(step: int, warmup: int, total: int, floor: float = 0.05) -> float:
    """Learning-rate factor at optimiser step ``step`` of a lineage: linear warm-up over
    ``warmup`` steps, then a cosine from 1 down to ``floor`` at step ``total``, flat after."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file, fsynced, then renamed: a run killed
    while saving leaves the previous checkpoint intact, never a truncated one.

    Read back with ``torch.load(weights_only=True)`` whatever the caller asks: tensors, numbers,
    strings and containers only. A run directory can come from someone else, and a full unpickle
    of a replaced ``last.ckpt`` would run whatever code it names."""

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{path}: refused to load this checkpoint: it holds objects other than tensors "
                "and plain values, which could run code; delete the run directory and train anew"
            ) from err

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class VAEModule(pl.LightningModule):
    """A VAE (or a deblender: ``freeze_decoder=True``) trained on noisy -> noiseless stamps.

    Batches are dicts of (B, C, H, W) electrons: ``target`` (noiseless central galaxy),
    optionally ``others`` (noiseless neighbours) and ``blend`` (stored noisy image). In training,
    augmentation and fresh noise are applied here, on the device.

    Args:
        arch: :class:`ArchConfig` dict.
        norm_constants: the output head's constants (C,), electrons: I_b (``sigmoid``) or
            a_b (``asinh``), see :class:`Intensity`.
        sky_levels: sky per pixel (C,), electrons.
        loss: ``bce``, ``gaussian``, ``chi2`` or ``mse``; beta: KL weight (None: the loss's
            default).
        shape_weight: weight of :func:`shape_penalty` added to the loss (0: none).
        response_weight: weight of :func:`response_penalty` added to the loss (0: none).
        response_groups: S/N groups of the batch whose slopes the response penalty asks to
            be 1 each (1: the whole batch's).
        response_memory: with > 0, the response penalty is :class:`RunningResponse`'s, its
            (slope - 1) from running sums over about this many batches in the fixed S/N bins
            ``response_snr_edges`` (multi-band matched-filter S/N, :func:`target_snr`);
            ``response_groups`` is then unused.
        response_ksb_gain: with > 0 (and ``response_memory``), each S/N bin's wanted slope
            is steered by KSB's m measured on the validation stamps at every validation
            (:class:`KsbSlopeControl`, this gain), in ``response_targets`` (bins,; a buffer:
            checkpointed). Needs ``ksb_reference``.
        ksb_reference: ``{"psf": (P, P) array, "pixel_scale_arcsec": float, "band": int}``,
            the reference band KSB measures in (not a hyperparameter).
        ema_decay: with > 0, an exponential moving average of the network's weights
            (``torch.optim.swa_utils.AveragedModel``, this decay per step) is what validation
            measures and what is exported: it smooths the oscillation a strong response
            penalty drives the weights into.
        flux_weight: weight of :class:`RunningFluxBias` (running over ``flux_memory``
            batches; validation: the batch's own) added to the loss (0: none); its bins are the
            target's blendedness in ``reference_channel``, edges ``flux_blendedness_edges``,
            each split by the target's multi-band S/N at ``flux_snr_edges`` (none: not split).
        response_targets_start: with ``response_ksb_gain``, the wanted slopes (bins,) the
            steering starts from (a continued model's last ones, so that its integral is not
            lost); None: 1 in every bin.
        export_weights: ``best`` (the weights of the lowest validation loss) or ``last`` (the
            latest validated ones while training, the final ones when it ends): what
            ``export_state`` holds, and so what is exported.
        scheduler: ``warmup_cosine`` (per step: ``warmup_steps`` of linear warm-up, then a
            cosine to 5 % at ``schedule_steps``, counted over the whole lineage: a run
            continued from a model starts at ``step_offset``), ``plateau``, ``cosine`` (per
            epoch) or ``none``.
        noise: the dataset's noise model (``poisson`` or ``gaussian``).
        stored_noise: train on the stored ``blend`` instead of redrawing noise.
        noise_draw: ``exact`` (Poisson) or ``gaussian`` (same variance), see :func:`add_noise`.
        initial_state: weights to start from (a VAE's, for the deblender).
        teacher_weight: with > 0 (a deblender), weight of :func:`teacher_penalty`: the
            latent means are pulled towards those the VAE's own encoder (``teacher_state``'s
            ``encoder.*`` weights, frozen) gives the same noisy stamp with the target's
            neighbours subtracted (their noiseless images; the noise stays), which is what the
            deblender should infer and what the decoder was trained to be read from.

    Defaults are :class:`vaedeblend.training_config.TrainConfig`'s.
    """

    def __init__(
        self,
        arch: dict,
        norm_constants: list[float],
        sky_levels: list[float],
        loss: str = DEFAULTS.loss,
        beta: float | None = None,
        shape_weight: float = DEFAULTS.shape_weight,
        response_weight: float = DEFAULTS.response_weight,
        response_groups: int = DEFAULTS.response_groups,
        response_memory: int = DEFAULTS.response_memory,
        response_snr_edges: tuple[float, ...] = DEFAULTS.response_snr_edges,
        response_ksb_gain: float = DEFAULTS.response_ksb_gain,
        ema_decay: float = DEFAULTS.ema_decay,
        export_weights: str = DEFAULTS.export_weights,
        flux_weight: float = DEFAULTS.flux_weight,
        flux_memory: int = DEFAULTS.flux_memory,
        flux_blendedness_edges: tuple[float, ...] = DEFAULTS.flux_blendedness_edges,
        flux_snr_edges: tuple[float, ...] = DEFAULTS.flux_snr_edges,
        response_targets_start: list[float] | None = None,
        reference_channel: int = 0,
        lr: float = DEFAULTS.lr,
        scheduler: str = DEFAULTS.scheduler,
        patience: int = DEFAULTS.patience,
        epochs: int = DEFAULTS.epochs,
        warmup_steps: int = DEFAULTS.warmup_steps,
        schedule_steps: int = 100_000,
        step_offset: int = 0,
        noise: str = "poisson",
        stored_noise: bool = False,
        noise_draw: str = DEFAULTS.noise_draw,
        augment: bool = DEFAULTS.augment,
        freeze_decoder: bool = False,
        seed: int = DEFAULTS.seed,
        initial_state: dict | None = None,
        ksb_reference: dict | None = None,
        teacher_weight: float = 0.0,
        teacher_state: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["initial_state", "ksb_reference", "teacher_state"])
        self.net = build_vae(arch)
        if initial_state is not None:
            self.net.load_state_dict(initial_state)
        # channels-last convolutions train 1.3x faster on this CPU (benchmarks/bench_networks.py
        # --channels-last); exports are made contiguous (io.export_model)
        self.net = self.net.to(memory_format=torch.channels_last)
        self.teacher = None
        if teacher_weight > 0:
            self.teacher = _frozen_encoder(self.net.cfg.decoder_side, teacher_state)
        if freeze_decoder:
            self.net.decoder.requires_grad_(False)
        self._ema = None
        if ema_decay > 0:  # a submodule: checkpointed with the network
            self._ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay),
                                      use_buffers=True).requires_grad_(False)  # fmt: skip
        self.beta = DEFAULT_BETA[loss] if beta is None else float(beta)
        self.register_buffer("norm_constants", torch.tensor(norm_constants, dtype=torch.float32))
        self.register_buffer("sky", torch.tensor(sky_levels, dtype=torch.float32))
        self._generator = None
        self._running_response = (
            RunningResponse(tuple(response_snr_edges), response_memory)
            if response_memory > 0
            else None
        )
        self._flux_bias = None
        if flux_weight > 0:
            self._flux_bias = RunningFluxBias(tuple(flux_blendedness_edges), flux_memory,
                                              tuple(flux_snr_edges))  # fmt: skip
        self._ksb = None
        if response_ksb_gain > 0:
            self._ksb = _ksb_control(response_ksb_gain, response_memory, ksb_reference,
                                     tuple(response_snr_edges))  # fmt: skip
            self.register_buffer(
                "response_targets", _start_targets(response_targets_start, response_snr_edges)
            )
        self._val_sums = None
        self.best_val_loss = float("inf")
        self.best_step = -1
        # The weights export writes (``export_weights``: the best or the latest validated).
        self.export_state: dict | None = None
        self.export_step = -1
        self.last_val_loss = float("nan")
        self.intensity = Intensity(self.net.cfg.head, self.norm_constants)
        # Seconds spent in fit over every resume of this run (checkpointed).
        self.elapsed_before_s = 0.0
        self._fit_started: float | None = None

    def elapsed_s(self) -> float:
        """Wall-clock seconds of training in this run so far, resumes included."""
        running = 0.0 if self._fit_started is None else time.monotonic() - self._fit_started
        return self.elapsed_before_s + running

    def on_fit_start(self) -> None:
        self._fit_started = time.monotonic()

    def on_fit_end(self) -> None:
        self.elapsed_before_s = self.elapsed_s()
        self._fit_started = None

    def train(self, mode: bool = True):
        # A frozen decoder stays in eval mode so that nothing in it (e.g. BatchNorm statistics)
        # can change while the encoder trains.
        super().train(mode)
        if self.hparams.freeze_decoder:
            self.net.decoder.eval()
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # -- steps -----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, target, signal = self._training_inputs(batch)
        terms = self._loss(x, target, signal, sample=True)
        n = len(target)
        self.log("train_loss", terms.total, prog_bar=True, batch_size=n)
        self.log_dict({"train_recon": terms.recon, "train_kl": terms.kl}, batch_size=n)
        if terms.shape is not None:
            self.log("train_shape", terms.shape, batch_size=n)
        if terms.response is not None:
            self.log("train_response", terms.response, batch_size=n)
        if terms.teacher is not None:
            self.log("train_teacher", terms.teacher, batch_size=n)
        if terms.flux is not None:
            self.log("train_flux", terms.flux, batch_size=n)
            biases = self._flux_bias.biases()
            self.log_dict({f"flux_bias_bin{b}": v for b, v in enumerate(biases.tolist())})
        return terms.total

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._ema is not None:
            self._ema.update_parameters(self.net)

    def measured_net(self) -> torch.nn.Module:
        """The network validation measures and export writes: the weights' moving average
        with ``ema_decay``, else the network itself."""
        return self.net if self._ema is None else self._ema.module

    def validation_step(self, batch, batch_idx):
        if len(batch["target"]) == 0:
            return None
        target = batch["target"]
        signal = target + batch["others"] if "others" in batch else target
        logits, mu, sigma = self._forward(batch["blend"], sample=False, net=self.measured_net())
        terms = self._terms(logits, mu, sigma, target, signal, sample=False)
        terms = self._with_teacher(terms, mu, batch["blend"], target, signal)
        if self._ksb is not None:
            output = self.intensity.electrons(activation(self.intensity.head, logits))
            self._ksb.add(output, target, self._snr(target, signal))
        n = len(target)
        sums = torch.stack([terms.total * n, terms.recon * n, terms.kl * n]).detach()
        count = torch.tensor([n], dtype=sums.dtype, device=sums.device)
        step = torch.cat([sums, count])
        self._val_sums = step if self._val_sums is None else self._val_sums + step
        return None

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(4, device=self.device)
        if self._ksb is not None:
            self._ksb.reset()
        self._broadcast_buffers()

    def on_train_end(self) -> None:
        self._broadcast_buffers()

    def _broadcast_buffers(self) -> None:
        # BatchNorm running statistics are per process under DDP without SyncBatchNorm: give
        # every rank rank 0's, so that validation and the final weights agree across ranks.
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            for buffer in self.net.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        # Exact mean over all validation stamps of all ranks (sum, then divide).
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        total, recon, kl = (sums[:3] / sums[3].clamp(min=1)).tolist()
        self.log_dict({"val_loss": total, "val_recon": recon, "val_kl": kl}, prog_bar=False)
        self.last_val_loss = total
        if self._ksb is not None:
            self._steer_response_targets()
        if self.trainer.state.fn != "fit":
            return
        improved = total < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_step = total, int(self.global_step)
        if improved or self.hparams.export_weights == "last":
            self.keep_for_export()

    def keep_for_export(self) -> None:
        """Make the measured network's current weights the ones export writes."""
        self.export_step = int(self.global_step)
        self.export_state = {
            k: v.detach().cpu().clone() for k, v in self.measured_net().state_dict().items()
        }

    def _steer_response_targets(self) -> None:
        """Move each S/N bin's wanted slope against the KSB m of this validation (summed over
        processes), and log both per bin."""
        sums = self.trainer.strategy.reduce(self._ksb.sums.to(self.device), reduce_op="sum")
        m, targets = self._ksb.updated(self.response_targets, sums.cpu())
        self.response_targets.copy_(targets)
        for b, (m_b, t_b) in enumerate(zip(m.tolist(), targets.tolist(), strict=True)):
            self.log_dict({f"ksb_m_bin{b}": m_b, f"response_target_bin{b}": t_b})

    # -- inputs and loss -------------------------------------------------------------------
    def _training_inputs(self, batch):
        """(noisy input, noiseless target, noiseless signal of all sources), augmented."""
        names = [k for k in ("target", "others", "blend") if k in batch]
        tensors = [batch[k] for k in names]
        if self.hparams.augment:
            tensors = random_dihedral(tensors, self._rng())
        b = dict(zip(names, tensors, strict=True))
        target = b["target"]
        signal = target + b["others"] if "others" in b else target
        if self.hparams.stored_noise:
            x = b["blend"]
        else:
            hp = self.hparams
            x = add_noise(signal, self.sky, hp.noise, self._rng(), hp.noise_draw)
        return x, target, signal

    def _rng(self) -> torch.Generator:
        # One generator per rank, seeded by (seed, rank, step at creation): ranks draw
        # different noise, and a resumed run does not replay the noise of the killed one.
        if self._generator is None:
            self._generator = torch.Generator(device=self.device)
            seq = np.random.SeedSequence([self.hparams.seed, self.global_rank, self.global_step])
            self._generator.manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))
        return self._generator

    def _loss(self, x, target, signal, sample: bool) -> LossTerms:
        logits, mu, sigma = self._forward(x, sample)
        terms = self._terms(logits, mu, sigma, target, signal, sample)
        return self._with_teacher(terms, mu, x, target, signal)

    def _with_teacher(self, terms: LossTerms, mu, x, target, signal) -> LossTerms:
        """``terms`` plus the teacher penalty, if any: the frozen VAE encoder's latents of the
        noisy input ``x`` less the target's neighbours (``signal - target``, noiseless)."""
        if self.teacher is None:
            return terms
        with torch.no_grad():
            alone = self.intensity.network_input(x - (signal - target))
            mu_teacher, sigma_teacher = self.teacher(alone)
        per_image = teacher_penalty(mu, mu_teacher, sigma_teacher)
        return with_teacher(terms, per_image, float(self.hparams.teacher_weight))

    def _forward(self, x, sample: bool, net: torch.nn.Module | None = None):
        """(logits, mu, sigma) of the noisy (N, C, H, W) input ``x`` (electrons), by ``net``
        (default: the network trained)."""
        self.intensity.constants = self.norm_constants  # the buffer, on the module's device
        return (net or self.net).forward_logits(self.intensity.network_input(x), sample)

    def _snr(self, target, signal) -> torch.Tensor:
        return target_snr(target, noise_variance(signal, self.sky, self.hparams.noise))

    def _terms(self, logits, mu, sigma, target, signal, sample: bool) -> LossTerms:
        terms = self._pixel_loss(logits, mu, sigma, target, signal)
        weight = float(self.hparams.get("shape_weight", 0.0))
        response_weight = float(self.hparams.get("response_weight", 0.0))
        if weight > 0 or response_weight > 0:
            output = activation(self.intensity.head, logits)
            target_s = self.intensity.target(target)
        if weight > 0:
            terms = with_shape(terms, shape_penalty(output, target_s), weight)
        if response_weight > 0:
            penalty = self._response(output, target_s, target, signal, sample)
            terms = with_response(terms, penalty, response_weight)
        flux_weight = float(self.hparams.get("flux_weight", 0.0))
        if flux_weight > 0:
            terms = with_flux(terms, self._flux(logits, target, signal, sample), flux_weight)
        return terms

    def _flux(self, logits, target, signal, training: bool) -> torch.Tensor:
        """The flux-bias penalty: running during training, the batch's own in validation
        (which must not feed the running sums)."""
        band = int(self.hparams.get("reference_channel", 0))
        b_tot = flux_blendedness(target[:, band], (signal - target)[:, band])
        output = self.intensity.electrons(activation(self.intensity.head, logits))
        running = self._flux_bias
        snr = self._snr(target, signal) if running.snr_edges else None
        penalty = running if training else RunningFluxBias(running.edges, 1, running.snr_edges)
        return penalty(output, target, b_tot, snr)

    def _response(self, output, target_s, target, signal, training: bool) -> torch.Tensor:
        groups = int(self.hparams.get("response_groups", 1))
        running = self._running_response
        snr = None
        if groups > 1 or running is not None:
            snr = self._snr(target, signal)
        if running is not None and training:
            targets = None if self._ksb is None else self.response_targets
            return running(output, target_s, snr, targets)
        # Validation keeps the batch's own penalty: it must not feed the running sums.
        return response_penalty(output, target_s, snr, groups)

    def _pixel_loss(self, logits, mu, sigma, target, signal) -> LossTerms:
        intensity, loss = self.intensity, self.hparams.loss
        if loss == "bce":
            return bce_loss(logits, intensity.target(target), mu, sigma, self.beta)
        var = noise_variance(signal, self.sky, self.hparams.noise)
        if loss == "gaussian":
            pred = intensity.electrons(activation(intensity.head, logits))
            return gaussian_loss(pred, target, var, mu, sigma, self.beta)
        target_s = intensity.target(target)
        weight = asinh_chi2_weight(target, self.norm_constants, var) if loss == "chi2" else None
        return asinh_loss(logits, target_s, weight, mu, sigma, self.beta)

    # -- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.hparams.lr)
        kind = self.hparams.scheduler
        if kind == "none":
            return opt
        if kind == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=0.5, patience=max(1, self.hparams.patience // 3)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
        if kind == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.epochs)
            return {"optimizer": opt, "lr_scheduler": sched}
        if kind == "warmup_cosine":
            hp = self.hparams

            def factor(step: int) -> float:
                return warmup_cosine_factor(
                    hp.step_offset + step, hp.warmup_steps, hp.schedule_steps
                )

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        raise ValueError(f"unknown scheduler {kind!r} ({', '.join(SCHEDULERS)})")

    # -- checkpoint extras: the weights to export travel with every checkpoint ----------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vaedeblend_best"] = {
            "val_loss": self.best_val_loss,
            "step": self.best_step,
            "state": self.export_state,
            "export_step": self.export_step,
            "elapsed_s": self.elapsed_s(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        best = checkpoint.get("vaedeblend_best")
        if best:
            self.best_val_loss, self.best_step = best["val_loss"], best["step"]
            self.export_state = best["state"]
            # checkpoints from before export_weights hold the best weights
            self.export_step = int(best.get("export_step", best["step"]))
            self.elapsed_before_s = float(best.get("elapsed_s", 0.0))


class StampDataModule(pl.LightningDataModule):
    """Serves :class:`SplitArrays`: training batches from :class:`EpochBatchSampler` (each rank
    its own share), validation batches in order. Samplers are built when Lightning asks, so
    that the rank and world size are known."""

    def __init__(
        self,
        arrays: SplitArrays,
        batch_size: int,
        steps_per_epoch: int | None,
        seed: int,
        pin_memory: bool = False,
    ):
        super().__init__()
        self.arrays = arrays
        self.batch_size, self.steps, self.seed = batch_size, steps_per_epoch, seed
        self.pin_memory = pin_memory
        self.train_set = StampDataset(arrays.train)
        self.val_set = StampDataset(arrays.val)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self):
        rank, world = self._rank_world()
        sampler = EpochBatchSampler(
            len(self.train_set), self.batch_size, self.steps, self.seed, rank, world
        )
        return self._loader(self.train_set, sampler)

    def val_dataloader(self):
        rank, world = self._rank_world()
        if len(self.val_set) < world:
            raise ValueError(f"{len(self.val_set)} validation stamps for {world} processes")
        sampler = EpochBatchSampler(
            len(self.val_set), self.batch_size, None, self.seed, rank, world, shuffle=False
        )
        return self._loader(self.val_set, sampler)

    def _loader(self, dataset, sampler):
        # batch_size=None: the sampler yields whole index batches, the dataset gathers them.
        return torch.utils.data.DataLoader(
            dataset, sampler=sampler, batch_size=None, pin_memory=self.pin_memory
        )


def _ksb_control(gain: float, memory: int, reference: dict | None, edges: tuple) -> KsbSlopeControl:
    if memory < 1:
        raise ValueError(
            "response_ksb_gain steers the running penalty: it needs response_memory > 0"
        )
    if reference is None:
        raise ValueError(
            "response_ksb_gain needs the reference band's PSF (ksb_reference): the dataset "
            "has no PSF images, or its reference band is not among the model's bands"
        )
    return KsbSlopeControl(reference["psf"], reference["pixel_scale_arcsec"], reference["band"],
                           edges, gain)  # fmt: skip


def _start_targets(start: list[float] | None, edges: tuple) -> torch.Tensor:
    """The steering's first wanted slopes (bins,): ``start``, or 1 in every bin."""
    if start is None:
        return torch.ones(len(edges) + 1)
    targets = torch.tensor([float(t) for t in start], dtype=torch.float32)
    low, high = TARGET_BOUNDS
    if targets.shape != (len(edges) + 1,) or not ((targets >= low) & (targets <= high)).all():
        raise ValueError(
            f"response_targets_start must be {len(edges) + 1} slopes in [{low}, {high}] "
            f"(one per S/N bin), got {list(start)}"
        )
    return targets


def _frozen_encoder(cfg, state: dict | None) -> Encoder:
    """The teacher: an encoder of architecture ``cfg`` (the VAE's: the decoder's mirror, however
    wide the student's encoder) holding ``state``'s ``encoder.*`` weights, frozen, in eval mode."""
    if not state:
        raise ValueError("teacher_weight > 0 needs the teacher's (the VAE's) weights")
    encoder = Encoder(cfg)
    prefix = "encoder."
    encoder.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return encoder.requires_grad_(False).eval()
