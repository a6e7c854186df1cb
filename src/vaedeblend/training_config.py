"""The settings of one training run, as one frozen, self-checking dataclass: :class:`TrainConfig`.

Every default lives here: :func:`vaedeblend.models.training.train_vae` and ``train_deblender``
fill what they are not given from it, the command line prints its defaults from it, and a
run's ``run.json`` stores it (``to_dict``). Free of torch and Lightning, like
:mod:`vaedeblend.training_choices`, so that ``vaedeblend --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import ClassVar, Literal

from vaedeblend.argtypes import check_positive
from vaedeblend.training_choices import LOSS_HEADS, LOSSES, SCHEDULERS

Arch = Literal["paper", "fast"]
Head = Literal["sigmoid", "asinh"]
Loss = Literal["bce", "gaussian", "chi2", "mse"]
Scheduler = Literal["warmup_cosine", "plateau", "cosine", "none"]
NoiseDraw = Literal["exact", "gaussian"]
WeightsDtype = Literal["float32", "float16"]
ExportWeights = Literal["best", "last"]


@dataclass(frozen=True)
class TrainConfig:
    """One training run's settings (see :mod:`vaedeblend.models.training` for each one's
    meaning). None means "the architecture's, loss's or lineage's own" where noted there;
    ``head`` None becomes the loss's default head when the config is built."""

    # network
    arch: Arch = "paper"
    widths: list | None = None
    latent_dim: int | None = None
    dense_dim: int | None = None
    prelu: str | None = None
    out_width: int | None = None
    norm: str | None = None
    head: Head | None = None
    # deblenders: an encoder wider than its VAE's (None: the VAE's, or init_from's, widths);
    # a narrower one is grown to these widths computing the same function (networks.widen_encoder)
    encoder_widths: list | None = None
    encoder_dense_dim: int | None = None
    # loss
    loss: Loss = "bce"
    beta: float | None = None
    shape_weight: float = 0.0
    response_weight: float = 0.0
    response_groups: int = 1
    response_memory: int = 0
    # Multi-band matched-filter S/N (losses.target_snr); for LSST about 1.8x the r-band S/N
    # that evaluate bins by, so these are r-band S/N ~20, 50, 200.
    response_snr_edges: tuple = (35.0, 90.0, 350.0)
    # > 0: each bin's wanted slope is steered by KSB's m on the validation stamps
    # (models.ksb_control); needs response_memory.
    response_ksb_gain: float = 0.0
    # > 0: validation and export use an exponential moving average of the weights, this
    # decay per step (0.998: ~500 steps)
    ema_decay: float = 0.0
    # > 0: weight of the flux-bias penalty per blendedness bin (models.flux_bias), its running
    # bias over about flux_memory batches
    flux_weight: float = 0.0
    flux_memory: int = 50
    # the flux-bias penalty's bins: edges of the target's B_tot in the reference band. Most
    # detected LSST targets have B_tot < 0.02; the paper's statistic bins [0, 0.55] in ten, so
    # an edge at 0.55 keeps the much more blended targets out of its last bins' penalty.
    flux_blendedness_edges: tuple = (0.02, 0.1, 0.25, 0.4)
    # each blendedness bin split at these multi-band matched-filter S/N values (as
    # response_snr_edges); empty: not split. Isolated galaxies all fall in the first blendedness
    # bin, so for a VAE these are the only bins: e.g. 90,350,900 (r-band S/N ~50, 200, 500),
    # where bright cores come out too faint.
    flux_snr_edges: tuple = ()
    # > 0 (deblenders): weight of the pull of the latent means towards the VAE encoder's on the
    # same noisy stamp less the target's neighbours (models.losses.teacher_penalty)
    teacher_weight: float = 0.0
    # which weights the run exports: those of the lowest validation loss, or the latest
    # validated (a steered run's validation loss asks for slope 1 and so undoes the steering)
    export_weights: ExportWeights = "best"
    # optimisation
    epochs: int = 1000
    steps_per_epoch: int | None = 128
    batch_size: int = 100
    lr: float = 1e-4
    scheduler: Scheduler = "warmup_cosine"
    warmup_steps: int = 200
    schedule_steps: int | None = None
    patience: int = 30
    max_steps: int = -1
    max_time: float | str | None = None
    # lineage and data
    init_from: str | None = None
    intensity_scale: float = 1.0
    # VAE continued with init_from: train its encoder only, its decoder frozen (its
    # deblenders, which share that decoder, and its latent prior stay valid)
    encoder_only: bool = False
    val_fraction: float = 0.1
    augment: bool = True
    stored_noise: bool | None = None
    noise_draw: NoiseDraw = "gaussian"
    seed: int = 0
    # hardware
    accelerator: str = "auto"
    devices: int | str | list = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    # bookkeeping
    resume: bool = False
    checkpoint_every: int = 50
    progress: bool = True
    validate_first: bool = True
    weights_dtype: WeightsDtype = "float32"

    # Settings that may change when a run is resumed; the others must stay as the run started.
    CONTROL: ClassVar[tuple[str, ...]] = (
        "epochs", "max_steps", "max_time", "accelerator", "devices", "num_nodes", "strategy",
        "precision", "resume", "checkpoint_every", "progress", "validate_first", "patience",
        "schedule_steps", "export_weights",
    )  # fmt: skip

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {LOSSES}")
        heads = LOSS_HEADS[self.loss]
        if self.head is None:
            object.__setattr__(self, "head", heads[-1])
        if self.head not in heads:
            raise ValueError(
                f"loss {self.loss!r} needs the output head {' or '.join(heads)}, not {self.head!r}"
            )
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r} ({', '.join(SCHEDULERS)})")
        for name, allowed in (("arch", Arch), ("noise_draw", NoiseDraw),
                              ("weights_dtype", WeightsDtype),
                              ("export_weights", ExportWeights)):  # fmt: skip
            if getattr(self, name) not in allowed.__args__:
                raise ValueError(
                    f"{name} must be one of {allowed.__args__}, not {getattr(self, name)!r}"
                )
        for name in ("batch_size", "epochs", "checkpoint_every", "warmup_steps"):
            check_positive(name, getattr(self, name))
        for name in ("steps_per_epoch", "schedule_steps"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        if int(self.max_steps) != -1:
            check_positive("max_steps", self.max_steps)
        if int(self.patience) < 0:
            raise ValueError(f"patience must be >= 0 (0: no early stopping), got {self.patience}")
        if not 0 < float(self.val_fraction) < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not float(self.intensity_scale) > 0:
            raise ValueError(f"intensity_scale must be > 0, got {self.intensity_scale}")
        if float(self.intensity_scale) != 1 and self.head != "sigmoid":
            raise ValueError("intensity_scale applies to the sigmoid head's I_b only")
        if self.encoder_only and self.init_from is None:
            raise ValueError("encoder_only continues a model's encoder: it needs init_from")
        if self.encoder_only and float(self.intensity_scale) != 1:
            raise ValueError("encoder_only keeps the decoder and so its I_b: drop intensity_scale")
        if not float(self.shape_weight) >= 0:
            raise ValueError(f"shape_weight must be >= 0 (0: none), got {self.shape_weight}")
        check_positive("response_groups", self.response_groups)
        if int(self.response_memory) < 0:
            raise ValueError(
                f"response_memory must be >= 0 batches (0: this batch only), "
                f"got {self.response_memory}"
            )
        edges = [float(e) for e in self.response_snr_edges]
        if not edges or edges != sorted(set(edges)) or edges[0] <= 0:
            raise ValueError(
                f"response_snr_edges must be increasing S/N values > 0, "
                f"got {self.response_snr_edges}"
            )
        if not float(self.response_weight) >= 0:
            raise ValueError(f"response_weight must be >= 0 (0: none), got {self.response_weight}")
        if not float(self.response_ksb_gain) >= 0:
            raise ValueError(
                f"response_ksb_gain must be >= 0 (0: wanted slope 1), got {self.response_ksb_gain}"
            )
        if float(self.response_ksb_gain) > 0 and (
            int(self.response_memory) < 1 or not float(self.response_weight) > 0
        ):
            raise ValueError(
                "response_ksb_gain steers the running response penalty: it needs "
                "response_weight > 0 and response_memory >= 1"
            )
        if not float(self.flux_weight) >= 0:
            raise ValueError(f"flux_weight must be >= 0 (0: none), got {self.flux_weight}")
        check_positive("flux_memory", self.flux_memory)
        s_edges = [float(e) for e in self.flux_snr_edges]
        if s_edges != sorted(set(s_edges)) or (s_edges and s_edges[0] <= 0):
            raise ValueError(
                f"flux_snr_edges must be increasing S/N values > 0, got {self.flux_snr_edges}"
            )
        b_edges = [float(e) for e in self.flux_blendedness_edges]
        if not b_edges or b_edges != sorted(set(b_edges)) or not 0 < b_edges[0] <= b_edges[-1] < 1:
            raise ValueError(
                f"flux_blendedness_edges must be increasing blendedness values in (0, 1), "
                f"got {self.flux_blendedness_edges}"
            )
        if not float(self.teacher_weight) >= 0:
            raise ValueError(f"teacher_weight must be >= 0 (0: none), got {self.teacher_weight}")
        if not 0 <= float(self.ema_decay) < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0: none), got {self.ema_decay}")
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @classmethod
    def from_dict(cls, settings: dict) -> TrainConfig:
        """A config from a settings dict (a ``run.json``'s, or keyword arguments); unknown keys
        are refused with the list of known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**settings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def defaults() -> dict:
    """Each setting's default as declared (``head`` None: the loss's own)."""
    return {f.name: f.default for f in fields(TrainConfig)}


DEFAULTS = TrainConfig()  # the defaults, resolved (head: bce's sigmoid); for help texts
