"""The named choices of training, as plain constants: output heads, losses and their heads and
default KL weights, learning-rate schedules. Kept free of torch and Lightning so that the command
line can offer them without importing either (a ``--help`` or a ``simulate`` must not pay for
PyTorch Lightning's import)."""

from __future__ import annotations

HEADS = ("sigmoid", "asinh")
LOSSES = ("bce", "gaussian", "chi2", "mse")
DEFAULT_BETA = {"bce": 0.01, "gaussian": 1.0, "chi2": 0.01, "mse": 0.01}
# The output heads each loss works with (the last one is the loss's default).
LOSS_HEADS = {
    "bce": ("sigmoid",),
    "gaussian": ("sigmoid", "asinh"),
    "chi2": ("asinh",),
    "mse": ("asinh",),
}
SCHEDULERS = ("warmup_cosine", "plateau", "cosine", "none")
