"""``vaedeblend train vae`` and ``vaedeblend train deblender``.

The main CLI calls :func:`add_train_arguments` (alias :func:`add_arguments`) with its
subparsers; each command sets ``func`` to its handler, which returns an exit code. Options left
out are not passed on, so the defaults of :mod:`vaedeblend.models.training` apply (and a resumed
run keeps its own settings).
"""

from __future__ import annotations

import argparse

from vaedeblend.argtypes import non_negative_int, positive_float, positive_int
from vaedeblend.training_choices import HEADS, LOSSES, SCHEDULERS
from vaedeblend.training_config import DEFAULTS as D
from vaedeblend.training_config import Arch, NoiseDraw, WeightsDtype

# argparse destinations that are not training settings.
_NOT_SETTINGS = {"command", "train_command", "func", "data", "out", "vae", "no_progress"}


def _devices(text: str):
    """``2`` -> 2; ``auto``, ``0,1`` or ``-1`` kept for Lightning to read."""
    try:
        return int(text)
    except ValueError:
        return text


def _max_time(text: str):
    """Seconds (``3600``) or Lightning's ``DD:HH:MM:SS``."""
    try:
        return float(text)
    except ValueError:
        return text


def _increasing_numbers(text: str) -> tuple:
    try:
        edges = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None
    if list(edges) != sorted(set(edges)):
        raise argparse.ArgumentTypeError(f"edges must be increasing: {text!r}")
    return edges


def _snr_edges(text: str) -> tuple:
    edges = _increasing_numbers(text)
    if edges[0] <= 0:
        raise argparse.ArgumentTypeError(f"S/N edges must be increasing and > 0: {text!r}")
    return edges


def _blendedness_edges(text: str) -> tuple:
    edges = _increasing_numbers(text)
    if not 0 < edges[0] <= edges[-1] < 1:
        raise argparse.ArgumentTypeError(f"blendedness edges must lie in (0, 1): {text!r}")
    return edges


def _channel_counts(text: str) -> list[int]:
    """``48,96,192,384`` -> [48, 96, 192, 384]: channels per resolution level, each >= 1."""
    try:
        widths = [positive_int(part) for part in text.split(",")]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"not comma-separated channel counts >= 1: {text!r}"
        ) from None
    return widths


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset written by `vaedeblend simulate`")
    p.add_argument("--out", required=True, help="run directory: exported model + checkpoints")
    p.add_argument(
        "--loss",
        choices=list(LOSSES),
        help="bce (paper), gaussian (electrons), chi2 or mse (asinh head); "
        f"default: {D.loss} "
        "(deblender and --init-from: the model's)",
    )
    p.add_argument("--beta", type=float, help="KL weight (default: 1 gaussian, else 0.01)")
    p.add_argument(
        "--shape-weight",
        type=float,
        help="weight of the ellipticity penalty added to the loss: squared difference of the "
        "output's and target's windowed-moment ellipticities, per band (default 0: none)",
    )
    p.add_argument(
        "--response-weight",
        type=float,
        help="weight of the shape-response penalty added to the loss: (slope - 1)^2 of the "
        "batch's output ellipticities against the target's, i.e. m (default 0: none)",
    )
    p.add_argument(
        "--response-groups",
        type=positive_int,
        help="with --response-weight: split each batch into this many S/N groups and ask "
        "each for slope 1, so faint galaxies count as much as bright ones (default 1)",
    )
    p.add_argument(
        "--response-memory",
        type=positive_int,
        help="with --response-weight: estimate each S/N bin's slope from running sums over "
        "about this many batches (the gradient from the current batch), so bins already at "
        "slope 1 pull nothing (default: this batch only)",
    )
    p.add_argument(
        "--response-snr-edges",
        type=_snr_edges,
        help="with --response-memory: the S/N bins' edges, comma-separated, in multi-band "
        "matched-filter S/N (default 35,90,350: LSST r-band S/N about 20, 50, 200)",
    )
    p.add_argument(
        "--response-ksb-gain",
        type=positive_float,
        help="with --response-memory: at every validation, move each S/N bin's wanted slope "
        "by -GAIN x its KSB m on the validation stamps (the m evaluate reports), instead of "
        "asking every bin for windowed slope 1 (default: off)",
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        help="validate and export an exponential moving average of the weights with this "
        "decay per step, e.g. 0.998 (~500 steps): smooths the oscillation a strong response "
        "penalty drives the weights into (default 0: the weights themselves)",
    )
    p.add_argument(
        "--flux-weight",
        type=float,
        help="weight of the flux-bias penalty: per bin of the target's blendedness, the "
        "squared running mean of ln(F_out / F_true), so that blended targets are not "
        "deblended too bright on average (default 0: none)",
    )
    p.add_argument(
        "--flux-memory",
        type=positive_int,
        help=f"with --flux-weight: batches its running bias averages over "
        f"(default {D.flux_memory})",
    )
    p.add_argument(
        "--flux-edges",
        dest="flux_blendedness_edges",
        type=_blendedness_edges,
        help="with --flux-weight: edges of its bins of the target's blendedness B_tot, "
        "comma-separated (default "
        + ",".join(f"{e:g}" for e in D.flux_blendedness_edges)
        + "; add 0.55 to keep targets beyond the paper's range out of its last bins)",
    )
    p.add_argument(
        "--flux-snr-edges",
        type=_snr_edges,
        help="with --flux-weight: split each blendedness bin at these multi-band S/N values, "
        "comma-separated, so that bright and faint targets are each asked for an unbiased flux "
        "(a VAE's isolated galaxies are all unblended: e.g. 90,350,900, about r-band S/N 50, "
        "200, 500) (default: not split)",
    )
    p.add_argument(
        "--teacher-weight",
        type=float,
        help="deblenders: weight of a pull of the latent means towards those the VAE's own "
        "encoder gives the same noisy stamp with the target's neighbours subtracted, in units "
        "of that encoder's posterior widths (default 0: none)",
    )
    p.add_argument(
        "--export-weights",
        choices=["best", "last"],
        help="export the weights of the lowest validation loss (best) or the latest "
        "validated ones (last: for --response-ksb-gain runs, whose validation loss asks every "
        "bin for slope 1 and so would undo the steering) (default best)",
    )
    p.add_argument("--epochs", type=positive_int, help=f"maximum epochs (default {D.epochs})")
    p.add_argument(
        "--steps-per-epoch",
        type=positive_int,
        help=f"optimiser steps per epoch (default {D.steps_per_epoch})",
    )
    p.add_argument("--max-steps", type=positive_int, help="stop after this many steps in total")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        help=f"stamps per step and process (default {D.batch_size})",
    )
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {D.lr:g})")
    p.add_argument(
        "--scheduler",
        choices=list(SCHEDULERS),
        help=f"LR schedule (default {D.scheduler}; warmup_cosine: linear warm-up, then a "
        "cosine over the lineage's steps)",
    )
    p.add_argument(
        "--warmup-steps", type=positive_int, help=f"warm-up steps (default {D.warmup_steps})"
    )
    p.add_argument(
        "--schedule-steps",
        type=positive_int,
        help="lineage step where the cosine ends (default: the end of this run's --max-steps)",
    )
    p.add_argument(
        "--init-from",
        help="continue a model: a model directory or a shipped name (lsst, lsst+euclid, hsc); "
        "its steps and CPU-hours carry on in the new model's record",
    )
    p.add_argument(
        "--intensity-scale",
        type=float,
        help="VAE, sigmoid head: multiply the normalisation constants I_b (the data's, or with "
        "--init-from the model's) by this factor, so that bright cores stay below the "
        "sigmoid's ceiling (default 1)",
    )
    p.add_argument(
        "--val-fraction", type=float, help=f"validation fraction (default {D.val_fraction})"
    )
    p.add_argument(
        "--patience",
        type=non_negative_int,
        help=f"early-stopping patience, epochs (0: off; default {D.patience})",
    )
    p.add_argument("--accelerator", help=f"auto, cpu, gpu (default {D.accelerator})")
    p.add_argument("--devices", type=_devices, help=f"devices per node (default {D.devices})")
    p.add_argument("--num-nodes", type=positive_int, help=f"nodes (default {D.num_nodes})")
    p.add_argument("--strategy", help=f"Lightning strategy: auto, ddp, ... (default {D.strategy})")
    p.add_argument(
        "--precision", help=f"Lightning precision, e.g. 32-true, bf16-mixed (default {D.precision})"
    )
    p.add_argument("--seed", type=int, help=f"seed of the split, noise and init (default {D.seed})")
    p.add_argument("--resume", action="store_true", default=None, help="resume from --out")
    p.add_argument("--max-time", type=_max_time, help="seconds or DD:HH:MM:SS")
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        help=f"steps between checkpoints (default {D.checkpoint_every})",
    )
    p.add_argument(
        "--noise-draw",
        choices=list(NoiseDraw.__args__),
        help=f"Poisson, or Gaussian approximation (default {D.noise_draw})",
    )
    p.add_argument(
        "--weights-dtype",
        choices=list(WeightsDtype.__args__),
        help=f"exported weights (default {D.weights_dtype})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_train_arguments(subparsers) -> None:
    """Add ``train`` with its ``vae`` and ``deblender`` commands to ``subparsers``."""
    train = subparsers.add_parser("train", help="train a VAE or a deblender")
    sub = train.add_subparsers(dest="train_command", required=True)
    vae = sub.add_parser("vae", help="train a denoising VAE on isolated galaxies")
    _add_common(vae)
    vae.add_argument("--arch", choices=list(Arch.__args__), help=f"network (default {D.arch})")
    vae.add_argument(
        "--head",
        choices=list(HEADS),
        help="output head: sigmoid (paper) or asinh (linear, noise-scaled; default for chi2 "
        "and mse)",
    )
    vae.add_argument(
        "--encoder-only",
        action="store_true",
        default=None,
        help="with --init-from: train the encoder only, the decoder frozen as it is, so that "
        "the deblenders and latent prior fitted on that decoder stay valid",
    )
    vae.set_defaults(func=run_train_vae)
    deb = sub.add_parser("deblender", help="train a deblender from a VAE on blends")
    deb.add_argument("--vae", required=True, help="directory of the trained VAE")
    _add_common(deb)
    deb.add_argument(
        "--encoder-widths",
        type=_channel_counts,
        help="channels per resolution level of an encoder wider than the VAE's, comma-separated "
        "(as many levels as the VAE's); the encoder it starts from is grown to them computing "
        "the same function, the new channels starting at zero weight (default: the widths of "
        "the VAE's encoder, or of --init-from's)",
    )
    deb.add_argument(
        "--encoder-dense-dim",
        type=positive_int,
        help="the encoder's dense width, grown likewise (default: that of the encoder it starts "
        "from)",
    )
    deb.set_defaults(func=run_train_deblender)


add_arguments = add_train_arguments


def _settings(args: argparse.Namespace) -> dict:
    settings = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS and v is not None}
    if args.no_progress:
        settings["progress"] = False
    return settings


def _report(result) -> int:
    print(
        f"model written to {result.out} (step {result.global_step}, best validation loss "
        f"{result.best_val_loss:.6g} at step {result.best_step}; weights exported from step "
        f"{result.module.export_step})"
    )
    return 0


def run_train_vae(args: argparse.Namespace) -> int:
    """Handler of ``vaedeblend train vae``."""
    from vaedeblend.models.training import train_vae

    return _report(train_vae(args.data, args.out, **_settings(args)))


def run_train_deblender(args: argparse.Namespace) -> int:
    """Handler of ``vaedeblend train deblender``."""
    from vaedeblend.models.training import train_deblender

    return _report(train_deblender(args.vae, args.data, args.out, **_settings(args)))
