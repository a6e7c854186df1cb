"""Networks, losses, normalisation, training and exported models.

Light imports only here; the Lightning-based training (``train_vae``, ``train_deblender``) is
imported on first use, so that loading a model does not pull in PyTorch Lightning.
"""

from vaedeblend.models.api import BandMismatchError, Model, load_model
from vaedeblend.models.io import ModelFormatError, export_model, load_vae
from vaedeblend.models.losses import bce_loss, gaussian_loss, kl_normal, noise_variance
from vaedeblend.models.networks import (
    ARCHITECTURES,
    VAE,
    ArchConfig,
    build_vae,
    count_parameters,
    forward_flops,
    preset,
    training_flops,
)
from vaedeblend.models.normalisation import denormalise, norm_constants, normalise

_LAZY = {"train_vae", "train_deblender", "TrainResult", "TRAIN_DEFAULTS"}


def __getattr__(name):
    if name in _LAZY:
        from vaedeblend.models import training

        return getattr(training, name)
    raise AttributeError(f"module 'vaedeblend.models' has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "VAE",
    "ArchConfig",
    "BandMismatchError",
    "Model",
    "ModelFormatError",
    "bce_loss",
    "build_vae",
    "count_parameters",
    "denormalise",
    "export_model",
    "forward_flops",
    "gaussian_loss",
    "kl_normal",
    "load_model",
    "load_vae",
    "noise_variance",
    "norm_constants",
    "normalise",
    "preset",
    "training_flops",
    *sorted(_LAZY),
]
