"""Training entry points: :func:`train_vae` and :func:`train_deblender`.

A run directory ``out`` holds, when training ends or whenever the validation loss improves, the
exported model (``model.safetensors`` + ``config.json``: load it with
:func:`vaedeblend.load_model`, or pass it as ``vae_dir`` to :func:`train_deblender`), and, while
training, ``run.json`` (the run's settings), ``checkpoints/last.ckpt`` (Lightning's checkpoint,
written atomically every ``checkpoint_every`` steps; a torch pickle that only this run writes
and reads, for ``resume=True``) and ``logs/version_N/metrics.csv`` (plus TensorBoard logs under
``tb/`` when ``tensorboard`` is installed).

Settings (``**config``; defaults and checks in
:class:`vaedeblend.training_config.TrainConfig`, also as the dict :data:`TRAIN_DEFAULTS`):

- network: ``arch`` (``paper``, ``fast``), ``widths``, ``latent_dim``, ``dense_dim``, ``prelu``,
  ``out_width``, ``norm`` (None: the architecture's preset), ``head`` (``sigmoid``, ``asinh``;
  None: the loss's own, ``asinh`` for ``chi2`` and ``mse``); deblenders only:
  ``encoder_widths`` and ``encoder_dense_dim`` (an encoder wider than the VAE's, grown from the
  one it starts from computing the same function, :func:`.networks.widen_encoder`; None: the
  widths of that encoder);
- loss: ``loss`` (``bce``, ``gaussian``, ``chi2``, ``mse``; see :mod:`.losses`), ``beta``
  (None: the loss's default, :data:`.losses.DEFAULT_BETA`), ``shape_weight`` (weight of the
  ellipticity penalty :func:`.losses.shape_penalty`; 0: none, the paper's loss),
  ``response_weight`` (weight of the shape-response penalty :func:`.losses.response_penalty`;
  0: none), ``response_groups`` (the S/N groups of a batch it asks an unbiased slope of),
  ``response_memory`` and ``response_snr_edges`` (running slopes in fixed S/N bins,
  :class:`.losses.RunningResponse`), ``response_ksb_gain`` (each S/N bin's wanted slope
  steered by KSB's m on the validation stamps, :class:`.ksb_control.KsbSlopeControl`; the
  slopes it ends with are recorded as ``training.response_steering`` and a continued run with
  the same S/N bins, and for a deblender the same decoder, starts from them); ``flux_weight``,
  ``flux_memory`` and ``flux_blendedness_edges`` (a penalty on the running mean log flux ratio
  per bin of the target's blendedness, :class:`.flux_bias.RunningFluxBias`; 0: none),
  ``flux_snr_edges`` (each blendedness bin split by the target's S/N; empty: not split);
  ``ema_decay`` (> 0: validation and export use the weights' exponential moving average);
  ``export_weights`` (``best``: the lowest validation loss's weights; ``last``: the latest
  validated while training, the final ones at the end, for steered runs whose validation loss
  does not measure what the steering wants; may change on resume, so that a finished run
  resumed with ``max_steps`` at its step count exports its final weights without training);
- optimisation: ``epochs``, ``steps_per_epoch`` (None: one pass over the data), ``batch_size``
  (per process), ``lr``, ``scheduler`` (``warmup_cosine``, ``plateau``, ``cosine``, ``none``),
  ``warmup_steps`` and ``schedule_steps`` (``warmup_cosine``: the cosine ends at lineage step
  ``schedule_steps``; None: at the end of this run's ``max_steps``, else epochs x steps),
  ``patience`` (early stopping, epochs; 0 disables), ``max_steps``, ``max_time`` (seconds or
  ``DD:HH:MM:SS``);
- lineage: ``init_from`` (a model directory or a shipped name: start from its weights,
  architecture, head and normalisation; the new model's record adds its steps and CPU-hours,
  and the schedule continues from its step count); ``intensity_scale`` (VAE, ``sigmoid``
  head: I_b times this, the data's or the continued model's); ``encoder_only`` (VAE with
  ``init_from``: its decoder stays frozen, bit-identical, so the deblenders and latent prior
  fitted on it stay valid);
- data: ``val_fraction``, ``augment``, ``stored_noise`` (None: only for ``detected`` sets),
  ``noise_draw`` (``exact`` Poisson, or ``gaussian`` of the same variance: cheaper on CPUs),
  ``seed``;
- hardware: ``accelerator`` (``auto``, ``cpu``, ``gpu``), ``devices``, ``num_nodes``,
  ``strategy`` (``auto``, ``ddp``, ...), ``precision``;
- bookkeeping: ``resume``, ``checkpoint_every`` (steps), ``progress``, ``validate_first``
  (log the untrained network's validation loss), ``weights_dtype`` (``float32``, ``float16``).
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from vaedeblend.models.data import SplitArrays, load_split
from vaedeblend.models.io import export_model, load_vae, model_config
from vaedeblend.models.lightning import AtomicCheckpointIO, StampDataModule, VAEModule
from vaedeblend.models.networks import (
    ArchConfig,
    build_vae,
    check_growth,
    preset,
    widen_encoder,
)
from vaedeblend.models.normalisation import asinh_constants
from vaedeblend.training_choices import DEFAULT_BETA
from vaedeblend.training_config import TrainConfig
from vaedeblend.training_config import defaults as training_defaults

ARCH_KEYS = ("arch", "widths", "latent_dim", "dense_dim", "prelu", "out_width", "norm", "head")
# One place for every default and check: :class:`vaedeblend.training_config.TrainConfig`.
TRAIN_DEFAULTS = training_defaults()
# Settings that may change when a run is resumed; the others must stay as the run started.
CONTROL_KEYS = TrainConfig.CONTROL
RUN_FILE = "run.json"
LAST_CKPT = "last.ckpt"


@dataclass
class TrainResult:
    """What a training call returns (on every rank; only rank 0 exports)."""

    out: Path
    module: VAEModule
    global_step: int
    best_val_loss: float
    best_step: int
    initial_val_loss: float | None


def train_vae(
    data: str | os.PathLike, out: str | os.PathLike, callbacks: list | None = None, **config
) -> TrainResult:
    """Train a denoising VAE on an isolated-galaxy dataset; export it to ``out``.

    Args:
        data: dataset path (``vaedeblend simulate`` output), noisy ``blend`` in, noiseless
            ``target`` out.
        out: run directory; it receives the exported model and the checkpoints.
        callbacks: extra Lightning callbacks (e.g. timers), added to the run's own.
        **config: settings, see the module docstring. With ``init_from``, the network,
            its head and normalisation come from that model, and training continues it.
    """
    source = _init_source(config.get("init_from"), "vae")
    if source is not None:
        config = _inherit(config, source.config, f"the model of init_from={source.name!r}")
    cfg = _resolve(config, out, kind="vae", data=data)
    if float(cfg.get("teacher_weight", 0.0)) > 0:
        raise ValueError("teacher_weight is a deblender's: its teacher is its VAE's encoder")
    if cfg.get("encoder_widths") is not None or cfg.get("encoder_dense_dim") is not None:
        raise ValueError("encoder_widths and encoder_dense_dim are a deblender's: a VAE's "
                         "encoder mirrors its decoder (use widths, dense_dim)")  # fmt: skip
    bands = None if source is None else source.config["band_ids"]
    arrays = load_split(data, cfg["val_fraction"], cfg["seed"], bands, cfg["stored_noise"])
    if source is not None:
        _check_compatible(arrays, source.config, data, source.name)
        arch, norm = source.config["architecture"], source.config["norm_constants_electrons"]
    else:
        stamp = arrays.val["target"].shape[-1]
        overrides = {k: cfg[k] for k in ARCH_KEYS[1:]}
        channels = len(arrays.info.band_ids)
        arch = preset(cfg["arch"], channels=channels, stamp_size=stamp, **overrides).to_dict()
        norm = _head_constants(arch["head"], arrays)
    # a wider range before the ceiling: the network relearns the remapped intensities
    norm = np.asarray(norm, dtype=float) * float(cfg["intensity_scale"])
    state = None if source is None else source.state
    freeze = bool(cfg.get("encoder_only", False))
    module = _module(cfg, arch, arrays, norm, freeze, state, _lineage(source),
                     _steering_start(source, cfg))  # fmt: skip
    return _fit(module, arrays, cfg, Path(out), "vae", None, source, callbacks)


def train_deblender(
    vae_dir: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    callbacks: list | None = None,
    **config,
) -> TrainResult:
    """Train a deblender on a blended dataset, starting from the VAE in ``vae_dir``.

    The encoder is trained (from the VAE's encoder, or from the deblender ``init_from``
    names, to continue it); the decoder is frozen (bit-identical to the VAE's) and the VAE's
    normalisation constants are kept. ``loss`` and ``beta`` default to the VAE's. The dataset's
    bands must be a permutation of the VAE's (they are reordered), with the same pixel scales
    and stamp size.
    """
    vae, vcfg = load_vae(vae_dir)
    config = _inherit(config, vcfg, "the VAE")
    source = _init_source(config.get("init_from"), "deblender")
    if source is not None:
        _inherit(config, source.config, f"the deblender of init_from={source.name!r}")
    start_arch = ArchConfig.from_dict(_arch_of(vcfg if source is None else source.config))
    if config.get("encoder_widths") or config.get("encoder_dense_dim"):
        # refused before the run directory is written (a resumed run reads them in _resolve)
        _encoder_arch(ArchConfig.from_dict(_arch_of(vcfg)), start_arch, config)
    cfg = _resolve(config, out, kind="deblender", data=data)
    if float(cfg["intensity_scale"]) != 1:
        raise ValueError("intensity_scale is the VAE's; a deblender keeps its VAE's I_b")
    arrays = load_split(
        data, cfg["val_fraction"], cfg["seed"], vcfg["band_ids"], cfg["stored_noise"], "the VAE's"
    )
    _check_compatible(arrays, vcfg, data, vae_dir)
    norm = np.asarray(vcfg["norm_constants_electrons"])
    state = vae.state_dict()
    # the VAE's own encoder teaches (teacher_weight): copied before a continued encoder replaces it
    teacher = dict(state) if float(cfg.get("teacher_weight", 0.0)) > 0 else None
    if source is not None:
        # the encoder continues the given deblender; the decoder is always the VAE's
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        state.update({k: v for k, v in source.state.items() if k.startswith("encoder.")})
    # the wanted slopes a steered deblender ended with hold for the decoder it was trained on
    on_its_decoder = source is not None and same_decoder(source.state, state)
    steering = _steering_start(source, cfg) if on_its_decoder else None
    arch = _encoder_arch(ArchConfig.from_dict(_arch_of(vcfg)), start_arch, cfg)
    if arch.encoder != start_arch.encoder:
        state = widen_encoder(state, start_arch, arch, int(cfg["seed"]))
    module = _module(cfg, arch.to_dict(), arrays, norm, True, state, _lineage(source),
                     steering, teacher)  # fmt: skip
    vae_record = {
        "path": os.fspath(vae_dir),
        "training": vcfg["training"],
        "package_version": vcfg["package_version"],
    }
    return _fit(module, arrays, cfg, Path(out), "deblender", vae_record, source, callbacks)


def _encoder_arch(vae: ArchConfig, start: ArchConfig, cfg: dict) -> ArchConfig:
    """A deblender's architecture: the VAE's, with the encoder widths asked for in ``cfg``
    (``encoder_widths``, ``encoder_dense_dim``), else those of the encoder it starts from
    (``start``: the VAE's, or the continued deblender's)."""
    own = start.encoder
    widths = cfg.get("encoder_widths") or own.widths
    dense = cfg.get("encoder_dense_dim") or own.dense_dim
    arch = replace(
        vae,
        encoder_widths=None if tuple(widths) == tuple(vae.widths) else tuple(widths),
        encoder_dense_dim=None if int(dense) == vae.dense_dim else int(dense),
    )
    check_growth(start, arch)
    return arch


@dataclass
class InitSource:
    """A model training starts from (``init_from``): its name, config and weights."""

    name: str
    config: dict
    state: dict


def _init_source(name, kind: str) -> InitSource | None:
    """The model ``name`` (a directory, or a shipped name such as ``lsst``: its ``kind``
    part) to continue; None when not given."""
    if name is None:
        return None
    path = Path(name)
    if not path.exists():
        from vaedeblend.pretrained import PRETRAINED, pretrained_dir

        if name not in PRETRAINED:
            raise FileNotFoundError(
                f"init_from {name!r} is neither a model directory nor a shipped name "
                f"({', '.join(PRETRAINED)})"
            )
        path = pretrained_dir(name, kind)
    net, cfg = load_vae(path)
    if cfg["kind"] != kind:
        raise ValueError(f"init_from {name!r} is a {cfg['kind']}, not a {kind}")
    return InitSource(os.fspath(name), cfg, net.state_dict())


def _arch_of(model_config: dict) -> dict:
    """The architecture dict of a model config; configs written before output heads existed
    are ``sigmoid``."""
    return {
        **model_config["architecture"],
        "head": model_config["architecture"].get("head", "sigmoid"),
    }


def _inherit(config: dict, model_config: dict, what: str) -> dict:
    """``config`` with the architecture (and default loss and beta) of ``model_config``;
    architecture settings given in ``config`` must equal the model's."""
    arch = _arch_of(model_config)
    differ = [k for k in ARCH_KEYS if config.get(k) is not None and _jsonable(config[k]) != arch[k]]
    if differ:
        raise ValueError(f"the architecture comes from {what}; drop {differ} (they differ)")
    config = {**config, **{k: arch[k] for k in ARCH_KEYS}}
    config["loss"] = config.get("loss") or model_config["loss"]
    if config.get("beta") is None and config["loss"] == model_config["loss"]:
        config["beta"] = model_config["beta"]
    return config


def _head_constants(head: str, arrays: SplitArrays) -> np.ndarray:
    """The output head's per-band constants (electrons): I_b from the training images
    (``sigmoid``), or the sky noise sigma a_b (``asinh``)."""
    if head == "sigmoid":
        return arrays.norm_constants
    return asinh_constants(arrays.info.sky_levels_electrons)


def _lineage(source: InitSource | None) -> dict:
    """The training history a new run adds to: steps and CPU-hours of every run before."""
    if source is None:
        return {"steps": 0, "cpu_hours": 0.0, "runs": []}
    record = source.config.get("training", {})
    if "lineage" in record:
        return record["lineage"]
    # A model written before lineages were recorded: its own run is all that is known. Its
    # CPU-hours are estimated from its time limit on one core (the shipped models were trained
    # with one torch thread each, benchmarks/train_pretrained.sh), None without a limit.
    steps = int(record.get("global_step") or 0)
    limit = record.get("settings", {}).get("max_time")
    hours = round(float(limit) / 3600, 4) if isinstance(limit, int | float) else None
    note = "no lineage recorded; CPU-hours estimated from the time limit on one thread"
    run = {"init_from": None, "steps": steps, "cpu_hours": hours, "note": note}
    return {"steps": steps, "cpu_hours": hours, "runs": [run]}


def _steering_start(source: InitSource | None, cfg: dict) -> list[float] | None:
    """The wanted slopes a KSB-steered run continued from ``source`` starts from: those the
    source's run ended with (``training.response_steering``), if it recorded them for the
    same S/N bins; else None (1 in every bin, as a new run starts)."""
    if source is None or not float(cfg.get("response_ksb_gain") or 0) > 0:
        return None
    record = source.config.get("training", {}).get("response_steering")
    edges = [float(e) for e in cfg.get("response_snr_edges", TrainConfig.response_snr_edges)]
    if not record or [float(e) for e in record["snr_edges"]] != edges:
        return None
    return [float(t) for t in record["targets"]]


def same_decoder(a: dict, b: dict) -> bool:
    """Whether two network state dicts hold the same decoder weights (to float16 rounding:
    shipped weights are stored as float16)."""
    keys = [k for k in a if k.startswith("decoder.")]
    return bool(keys) and all(
        k in b and a[k].shape == b[k].shape and torch.allclose(a[k].float(), b[k].float(),
                                                               rtol=1e-3, atol=1e-6)
        for k in keys
    )  # fmt: skip


def _check_compatible(arrays: SplitArrays, vcfg: dict, data, vae_dir) -> None:
    stamp = arrays.val["target"].shape[-1]
    if stamp != vcfg["stamp_size"]:
        raise ValueError(
            f"{data}: {stamp}-pixel stamps, the VAE in {vae_dir} takes {vcfg['stamp_size']}"
        )
    scales = np.asarray(arrays.info.pixel_scales_arcsec)
    bad = ~np.isclose(scales, vcfg["pixel_scales_arcsec"], rtol=1e-6)
    if bad.any():
        names = [vcfg["band_ids"][i] for i in np.flatnonzero(bad)]
        raise ValueError(f"{data}: pixel scales differ from the VAE's in bands {names}")


# -- configuration and resume ------------------------------------------------------------------
def _resolve(config: dict, out, kind: str, data) -> dict:
    """Defaults + ``config``, checked; on resume, the stored run settings (only the
    :data:`CONTROL_KEYS` may change)."""
    unknown = sorted(set(config) - set(TRAIN_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown training settings {unknown}; known: {sorted(TRAIN_DEFAULTS)}")
    given = {k: v for k, v in config.items() if v is not None}
    out = Path(out)
    last = out / "checkpoints" / LAST_CKPT
    if last.exists() and not given.get("resume"):
        raise FileExistsError(
            f"{out} holds a run already: pass resume=True (--resume) or use "
            "another output directory"
        )
    cfg = {**TRAIN_DEFAULTS, **given}
    fingerprint = _check_data_kind(data, kind)
    if last.exists():
        cfg = _merge_stored(out, given, kind, fingerprint)
    cfg.pop("fingerprint", None)
    cfg = TrainConfig.from_dict(cfg).to_dict()  # checked, head resolved
    cfg["fingerprint"] = fingerprint
    out.mkdir(parents=True, exist_ok=True)
    if not last.exists():
        settings = {k: _jsonable(v) for k, v in cfg.items() if k != "resume"}
        run = {"kind": kind, "data": os.fspath(data), "settings": settings}
        (out / RUN_FILE).write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
    return cfg


def _merge_stored(out: Path, given: dict, kind: str, fingerprint: str | None) -> dict:
    """The stored settings of the run in ``out``, with the given :data:`CONTROL_KEYS`."""
    run = json.loads((out / RUN_FILE).read_text())
    if run["kind"] != kind:
        raise ValueError(f"{out} holds a {run['kind']} run, not a {kind} run")
    stored = run["settings"]
    if stored.get("fingerprint") != fingerprint:
        raise ValueError(
            f"cannot resume {out}: its data fingerprint {stored.get('fingerprint')!r} differs "
            f"from this dataset's {fingerprint!r}"
        )
    changed = [
        k
        for k, v in given.items()
        if k not in CONTROL_KEYS and k in stored and stored[k] != _jsonable(v)
    ]
    if changed:
        detail = ", ".join(f"{k}: {stored[k]!r} -> {given[k]!r}" for k in changed)
        raise ValueError(f"cannot resume {out} with different settings ({detail})")
    control = {k: v for k, v in given.items() if k in CONTROL_KEYS}
    # settings a newer version no longer has are dropped; ones it added take their defaults
    known = {k: v for k, v in stored.items() if k in TRAIN_DEFAULTS}
    return {**TRAIN_DEFAULTS, **known, **control}


def _jsonable(v):
    return json.loads(json.dumps(v))


# What each kind of training learns from: a VAE the isolated galaxies, a deblender the blends.
DATA_KIND = {"vae": "isolated", "deblender": "blended"}


def _check_data_kind(data, kind: str) -> str | None:
    """The dataset's fingerprint, after checking that it is the kind of set ``kind`` trains
    on: a VAE trained on blends learns to reproduce the neighbours, and a deblender trained on
    isolated galaxies never sees one."""
    from vaedeblend.dataset import open_dataset

    with open_dataset(data) as ds:
        data_kind = ds.meta.get("kind", "blended")
        if data_kind != DATA_KIND[kind]:
            raise ValueError(
                f"{data} holds {data_kind} stamps; a {kind} trains on {DATA_KIND[kind]} ones "
                f"(vaedeblend simulate --kind {DATA_KIND[kind]})"
            )
        return ds.meta.get("fingerprint")


# -- module, trainer, fit, export ----------------------------------------------------------------
def _schedule_steps(cfg: dict, lineage: dict, n_train: int) -> int:
    """The lineage step at which the warm-up + cosine schedule ends: ``schedule_steps`` if
    given, else the end of this run (``max_steps``, or every epoch)."""
    if cfg["schedule_steps"] is not None:
        return int(cfg["schedule_steps"])
    if int(cfg["max_steps"]) > 0:
        return int(lineage["steps"]) + int(cfg["max_steps"])
    per_epoch = cfg["steps_per_epoch"] or max(1, n_train // int(cfg["batch_size"]))
    return int(lineage["steps"]) + int(cfg["epochs"]) * int(per_epoch)


def _module(cfg, arch, arrays: SplitArrays, norm, freeze: bool, initial_state, lineage: dict,
            steering_start: list[float] | None = None,
            teacher_state: dict | None = None):  # fmt: skip
    # Seeded here, before the network's initialisation: same seed, same starting weights.
    pl.seed_everything(int(cfg["seed"]), workers=False, verbose=False)
    module = VAEModule(
        arch=arch,
        norm_constants=[float(c) for c in norm],
        sky_levels=[float(s) for s in arrays.info.sky_levels_electrons],
        loss=cfg["loss"],
        beta=cfg["beta"],
        shape_weight=float(cfg["shape_weight"]),
        response_weight=float(cfg.get("response_weight", 0.0)),
        response_groups=int(cfg.get("response_groups", 1)),
        response_memory=int(cfg.get("response_memory", 0)),
        response_snr_edges=tuple(
            float(e) for e in cfg.get("response_snr_edges", TrainConfig.response_snr_edges)
        ),
        response_ksb_gain=float(cfg.get("response_ksb_gain", 0.0)),
        ema_decay=float(cfg.get("ema_decay", 0.0)),
        flux_weight=float(cfg.get("flux_weight", 0.0)),
        flux_memory=int(cfg.get("flux_memory", TrainConfig.flux_memory)),
        flux_blendedness_edges=tuple(
            float(e) for e in cfg.get("flux_blendedness_edges", TrainConfig.flux_blendedness_edges)
        ),
        flux_snr_edges=tuple(float(e) for e in cfg.get("flux_snr_edges", ())),
        response_targets_start=steering_start,
        reference_channel=_reference_channel(arrays.info),
        export_weights=cfg.get("export_weights", "best"),
        ksb_reference=_ksb_reference(arrays.info),
        lr=float(cfg["lr"]),
        scheduler=cfg["scheduler"],
        patience=int(cfg["patience"]),
        epochs=int(cfg["epochs"]),
        warmup_steps=int(cfg["warmup_steps"]),
        schedule_steps=_schedule_steps(cfg, lineage, len(arrays.train["target"])),
        step_offset=int(lineage["steps"]),
        noise=arrays.info.noise,
        stored_noise=arrays.info.stored_noise,
        noise_draw=cfg["noise_draw"],
        augment=bool(cfg["augment"]),
        freeze_decoder=freeze,
        seed=int(cfg["seed"]),
        initial_state=initial_state,
        teacher_weight=float(cfg.get("teacher_weight", 0.0)),
        teacher_state=teacher_state,
    )
    module.lineage = lineage
    return module


def _reference_channel(info) -> int:
    """The model channel of the dataset's reference band (0 if it is not one of them)."""
    return info.band_ids.index(info.reference_band) if info.reference_band in info.band_ids else 0


def _ksb_reference(info) -> dict | None:
    """The reference band's PSF, pixel scale and channel, where KSB measures m (None if the
    dataset has no PSFs or its reference band is not one of the model's)."""
    if info.psf is None or info.reference_band not in info.band_ids:
        return None
    band = info.band_ids.index(info.reference_band)
    return {"psf": info.psf[band], "pixel_scale_arcsec": info.pixel_scales_arcsec[band],
            "band": band}  # fmt: skip


def _max_time(value):
    if value is None or isinstance(value, (str, dict, datetime.timedelta)):
        return value
    return datetime.timedelta(seconds=float(value))


def _trainer(cfg: dict, out: Path, callbacks: list) -> pl.Trainer:
    world = int(cfg["num_nodes"]) * (cfg["devices"] if isinstance(cfg["devices"], int) else 1)
    distributed = world > 1 or "ddp" in str(cfg["strategy"])
    loggers = [CSVLogger(save_dir=out, name="logs")]
    try:
        import tensorboard  # noqa: F401  (optional dependency)
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=out, name="tb"))
    except ImportError:
        pass
    steps = cfg["steps_per_epoch"]
    return pl.Trainer(
        accelerator=cfg["accelerator"],
        devices=cfg["devices"],
        num_nodes=int(cfg["num_nodes"]),
        strategy=cfg["strategy"],
        precision=cfg["precision"],
        # On GPUs BatchNorm statistics are averaged over all processes (SyncBatchNorm, which
        # is GPU-only); on CPUs the module broadcasts rank 0's running statistics instead.
        sync_batchnorm=distributed and cfg["accelerator"] != "cpu" and torch.cuda.is_available(),
        max_epochs=int(cfg["epochs"]),
        max_steps=int(cfg["max_steps"]),
        max_time=_max_time(cfg["max_time"]),
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, steps or 50)),
        enable_progress_bar=bool(cfg["progress"]),
        enable_model_summary=bool(cfg["progress"]),
        default_root_dir=out,
    )


class _ExportBest(pl.Callback):
    """Rank 0 exports the weights to export (``export_weights``: the best or the latest
    validated) each time they change, so that a killed run leaves a usable model behind."""

    def __init__(self, export):
        self.export = export
        self.exported_step = None

    def on_validation_end(self, trainer, module) -> None:
        if trainer.state.fn != "fit" or module.export_step == self.exported_step:
            return
        if trainer.is_global_zero and module.export_state is not None:
            self.export(module, trainer)
        self.exported_step = module.export_step


def _callbacks(cfg: dict, out: Path, export) -> list:
    callbacks = [
        ModelCheckpoint(
            dirpath=out / "checkpoints",
            monitor=None,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=int(cfg["checkpoint_every"]),
        ),
        LearningRateMonitor(logging_interval="epoch"),
        _ExportBest(export),
    ]
    if int(cfg["patience"]) > 0:
        # strict=False: a run shorter than one epoch has no validation loss yet when it
        # ends, and must still export its model rather than fail
        callbacks.append(
            EarlyStopping(monitor="val_loss", patience=int(cfg["patience"]), strict=False)
        )
    return callbacks


def _fit(module, arrays, cfg, out: Path, kind, vae_source, init, extra_callbacks) -> TrainResult:
    def export(mod, trainer):
        _export(mod, arrays, cfg, out, kind, vae_source, trainer, init)

    callbacks = _callbacks(cfg, out, export) + list(extra_callbacks or [])
    trainer = _trainer(cfg, out, callbacks)
    pin = torch.cuda.is_available() and cfg["accelerator"] != "cpu"
    datamodule = StampDataModule(
        arrays, int(cfg["batch_size"]), cfg["steps_per_epoch"], int(cfg["seed"]), pin_memory=pin
    )
    last = out / "checkpoints" / LAST_CKPT
    resuming = bool(cfg["resume"]) and last.exists()
    initial = None
    if cfg["validate_first"] and not resuming:
        trainer.validate(module, datamodule=datamodule, verbose=False)
        initial = module.last_val_loss
    # Checkpoints are read with weights_only=True (AtomicCheckpointIO): a replaced last.ckpt
    # cannot run code; exported models never go through pickle at all.
    ckpt = {"ckpt_path": last, "weights_only": True} if resuming else {}
    trainer.fit(module, datamodule=datamodule, **ckpt)
    if module.hparams.export_weights == "last":
        module.keep_for_export()  # the final weights, validated or not
    # A final checkpoint, so that resuming a finished run with more epochs starts from here.
    trainer.save_checkpoint(last, weights_only=False)
    if trainer.is_global_zero:
        export(module, trainer)
    return TrainResult(
        out, module, int(trainer.global_step), module.best_val_loss, module.best_step, initial
    )


def _export(module, arrays, cfg, out, kind, vae_source, trainer, init=None) -> None:
    """Write the weights to export so far (the current ones if never validated) to ``out``."""
    vae = build_vae(module.hparams.arch)
    state = module.export_state or {
        k: v.cpu() for k, v in module.measured_net().state_dict().items()
    }
    vae.load_state_dict(state)
    info = arrays.info
    training = {
        "data": info.path,
        "fingerprint": info.fingerprint,
        "kind": info.kind,
        "centring": info.centring,
        "noise": info.noise,
        "stored_noise": info.stored_noise,
        "n_train": len(arrays.train["target"]),
        "n_val": len(arrays.val["target"]),
        "global_step": int(trainer.global_step),
        "epoch": int(trainer.current_epoch),
        "best_step": module.best_step,
        "exported_step": module.export_step,
        "best_val_loss": _finite_or_none(module.best_val_loss),
        "settings": {k: _jsonable(v) for k, v in cfg.items() if k not in ("fingerprint", "resume")},
        "lineage": _extended_lineage(module, trainer, init),
    }
    if hasattr(module, "response_targets"):
        # where the KSB steering stands, so that a continuation (init_from) starts from it
        training["response_steering"] = {
            "snr_edges": [float(e) for e in module.hparams.response_snr_edges],
            "targets": [round(float(t), 6) for t in module.response_targets.tolist()],
        }
    config = model_config(
        vae,
        kind=kind,
        band_ids=info.band_ids,
        pixel_scales_arcsec=info.pixel_scales_arcsec,
        norm_constants=module.hparams.norm_constants,
        sky_levels_electrons=info.sky_levels_electrons,
        loss=module.hparams.loss,
        beta=module.beta if module.beta is not None else DEFAULT_BETA[module.hparams.loss],
        training=training,
        vae_source=vae_source,
        dtype=cfg["weights_dtype"],
    )
    export_model(vae, out, config)


def _extended_lineage(module, trainer, init: InitSource | None) -> dict:
    """The lineage of the model being exported: its source's, plus this run (steps, wall
    seconds, CPU-hours = seconds x torch threads x processes on CPUs). A run on an accelerator
    counts in ``accelerator_hours`` (wall hours x devices) instead: the two are not one unit."""
    before = module.lineage
    seconds = module.elapsed_s()
    on_cpu = trainer.strategy.root_device.type == "cpu"
    cores = torch.get_num_threads() * trainer.world_size if on_cpu else None
    cpu_hours = seconds * cores / 3600 if on_cpu else 0.0
    accelerator_hours = 0.0 if on_cpu else seconds * trainer.world_size / 3600
    run = {
        "init_from": None if init is None else init.name,
        "steps": int(trainer.global_step),
        "wall_s": round(seconds, 1),
        "device": trainer.strategy.root_device.type,
        "threads_x_processes": cores,
        "cpu_hours": round(cpu_hours, 4) if on_cpu else None,
        "accelerator_hours": None if on_cpu else round(accelerator_hours, 4),
    }
    runs = [*before["runs"], run]
    cpu, accelerator = lineage_hours(runs)
    return {
        "steps": int(before["steps"]) + int(trainer.global_step),
        "cpu_hours": cpu,
        "accelerator_hours": accelerator,
        "runs": runs,
    }


def lineage_hours(runs: list[dict]) -> tuple[float | None, float]:
    """(CPU-hours, accelerator hours) of a lineage's runs. CPU-hours are None when a CPU run's
    are unknown; an accelerator run written before they were counted gives its wall time on one
    device (``device`` absent: a CPU run from before devices were recorded)."""
    on_cpu = [r for r in runs if r.get("device", "cpu") == "cpu"]
    known = all(r.get("cpu_hours") is not None for r in on_cpu)
    cpu = round(sum(float(r["cpu_hours"]) for r in on_cpu), 4) if known else None
    accelerator = sum(
        float(r["accelerator_hours"]) if r.get("accelerator_hours") is not None
        else float(r.get("wall_s") or 0.0) / 3600
        for r in runs if r.get("device", "cpu") != "cpu"
    )  # fmt: skip
    return cpu, round(accelerator, 4)


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
