"""A learned prior on the VAE's latent space: a normalising flow fitted to the encoder's latent
means of isolated galaxies.

The VAE is trained towards N(0, I) but its aggregate posterior is not that: the latents of real
galaxies fill a smaller, curved region. Refinement (:mod:`vaedeblend.refinement.joint`) uses
this flow's log-density so that optimising latents against a noisy blend stays among latents
that decode to galaxies. The flow is zuko's neural spline flow on standardised latents
(``(z - mean) / std`` per dimension, the Jacobian of that scaling included in
:meth:`LatentPrior.log_prob`).

A prior directory holds ``model.safetensors`` (the flow's weights) and ``config.json``: its
settings, the standardisation, the held-out log-density it reached and the fingerprint of the
decoder whose latent space it describes; :func:`load_prior` refuses a prior fitted on another
decoder.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vaedeblend.argtypes import check_positive
from vaedeblend.files import publish
from vaedeblend.refinement.decoder_error import DecoderError, load_decoder_error

FORMAT = "vaedeblend-latent-prior"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class PriorSettings:
    """How the flow is built and fitted.

    Attributes:
        transforms: spline coupling/autoregressive transforms of the flow.
        hidden: widths of each transform's hidden layers.
        steps: Adam steps of the fit.
        batch_size: latents per step.
        lr: Adam's learning rate (cosine-annealed to 0 over ``steps``).
        val_fraction: share of the latents held out to measure the fit.
        seed: the flow's initialisation, the split and the batches.
    """

    transforms: int = 3
    hidden: tuple[int, ...] = (128, 128)
    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("transforms", "steps", "batch_size"):
            check_positive(name, getattr(self, name))
        if not self.hidden or any(int(h) <= 0 for h in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


class LatentPrior(torch.nn.Module):
    """log p(z) of latents (..., latent_dim), and samples from it.

    Args:
        latent_dim: the VAE's latent dimension.
        mean, std: (latent_dim,) standardisation of the latents the flow was fitted on.
        settings: the flow's shape (transforms, hidden widths).
    """

    def __init__(self, latent_dim: int, mean, std, settings: PriorSettings = PriorSettings()):
        super().__init__()
        import zuko

        self.latent_dim = check_positive("latent_dim", latent_dim)
        self.settings = settings
        # the decoder's measured error and the refined estimate's calibration on blends (set
        # by load_prior when the prior directory has them; the posteriors use the second first)
        self.decoder_error: DecoderError | None = None
        self.refined_error: DecoderError | None = None
        # every calibration on blends, (config summary, residuals), one per refinement
        # setting it was measured with; refined_error's first
        self.calibrations: list[tuple[dict, DecoderError]] = []
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.asarray(std), dtype=torch.float32))
        if self.mean.shape != (latent_dim,) or self.std.shape != (latent_dim,):
            raise ValueError(f"mean and std must be ({latent_dim},)")
        if not torch.all(self.std > 0):
            raise ValueError("latent standard deviations must be > 0")
        self.flow = zuko.flows.NSF(
            features=latent_dim, transforms=settings.transforms,
            hidden_features=tuple(int(h) for h in settings.hidden),
        )  # fmt: skip

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density (nats) of latents (..., latent_dim) -> (...)."""
        u = (z.float() - self.mean) / self.std
        return self.flow().log_prob(u) - torch.log(self.std).sum()

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """(n, latent_dim) latents drawn from the prior, reproducibly for a ``seed``."""
        check_positive("n", n)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            u = self.flow().sample((n,))
        return u * self.std + self.mean


def fit_prior(latents: np.ndarray, settings: PriorSettings = PriorSettings()):
    """A :class:`LatentPrior` fitted by maximum likelihood to ``latents`` (N, latent_dim),
    and a dict of held-out mean log-densities (nats per galaxy): the flow's, a full-covariance
    Gaussian's fitted to the same training latents, and the VAE's own N(0, I)'s."""
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim != 2 or len(z) < 10:
        raise ValueError(f"latents must be (N >= 10, latent_dim), got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("latents contain NaN or infinite values")
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(z))
    n_val = max(1, int(round(settings.val_fraction * len(z))))
    val, train = z[order[:n_val]], z[order[n_val:]]
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    torch.manual_seed(settings.seed)
    prior = LatentPrior(z.shape[1], mean, std, settings)
    train_t = torch.as_tensor(train, dtype=torch.float32)
    opt = torch.optim.Adam(prior.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.steps)
    g = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.steps):
        batch = train_t[torch.randint(len(train_t), (settings.batch_size,), generator=g)]
        loss = -prior.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    prior.eval()
    with torch.no_grad():
        flow_val = float(prior.log_prob(torch.as_tensor(val, dtype=torch.float32)).mean())
    report = {
        "n_train": len(train),
        "n_val": len(val),
        "val_log_prob_flow": flow_val,
        "val_log_prob_gaussian": _gaussian_log_prob(train, val),
        "val_log_prob_standard_normal": float(_standard_normal_log_prob(val).mean()),
    }
    return prior, report


def _gaussian_log_prob(train: np.ndarray, val: np.ndarray) -> float:
    """Mean log-density of ``val`` under the full-covariance Gaussian fitted to ``train``."""
    from scipy.stats import multivariate_normal

    cov = np.cov(train, rowvar=False) + 1e-9 * np.eye(train.shape[1])
    gaussian = multivariate_normal(train.mean(axis=0), cov, allow_singular=True)
    return float(gaussian.logpdf(val).mean())


def _standard_normal_log_prob(z: np.ndarray) -> np.ndarray:
    return -0.5 * (z**2).sum(axis=1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


def save_prior(
    prior: LatentPrior,
    out: str | os.PathLike,
    *,
    decoder_fingerprint: str,
    fitted_on: dict,
    report: dict,
    decoder_error: dict | None = None,
    refined_error: dict | None = None,
    more_calibrations: list[dict] | None = None,
) -> Path:
    """Write ``out/model.safetensors`` and ``out/config.json`` (each via a temporary file and
    a rename); returns ``out``. ``decoder_error``, ``refined_error``: the summaries of the
    decoder's measured error and of the calibration on blends written beside it
    (:func:`~.decoder_error.save_decoder_error`), if any; ``more_calibrations``: those of
    calibrations measured with other refinement settings, each in its own file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "latent_dim": prior.latent_dim,
        "flow": "zuko.flows.NSF on (z - mean) / std",
        "settings": {**asdict(prior.settings), "hidden": list(prior.settings.hidden)},
        "decoder_fingerprint": decoder_fingerprint,
        "fitted_on": fitted_on,
        "report": report,
        **({"decoder_error": decoder_error} if decoder_error else {}),
        **({"refined_error": refined_error} if refined_error else {}),
        **({"more_calibrations": more_calibrations} if more_calibrations else {}),
    }
    tmp = out / f".{WEIGHTS_FILE}.{os.getpid()}.tmp"
    save_file({k: v.contiguous() for k, v in prior.state_dict().items()}, str(tmp))
    publish(tmp, out / WEIGHTS_FILE)
    tmp = out / f".{CONFIG_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, out / CONFIG_FILE)
    return out


def load_prior(path: str | os.PathLike, decoder_fingerprint: str | None = None) -> LatentPrior:
    """The prior in directory ``path``; with ``decoder_fingerprint`` (from
    :meth:`vaedeblend.models.api.Model.decoder_fingerprint`), refuses a prior fitted on
    another decoder."""
    path = Path(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a latent prior directory: {err}") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG_FILE} is not a {FORMAT} file")
    if decoder_fingerprint is not None and config["decoder_fingerprint"] != decoder_fingerprint:
        raise ValueError(
            f"the latent prior in {path} was fitted on another decoder than this model's; "
            "fit it again (vaedeblend prior)"
        )
    s = dict(config["settings"])
    s["hidden"] = tuple(s["hidden"])
    dim = int(config["latent_dim"])
    prior = LatentPrior(dim, np.zeros(dim), np.ones(dim), PriorSettings(**s))
    try:
        state = load_file(str(path / WEIGHTS_FILE))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"cannot read {path / WEIGHTS_FILE}: {err}") from None
    prior.load_state_dict(state, strict=True)
    prior.eval()
    prior.config = config
    # priors fitted before the decoder's error was measured give statistical intervals only
    summary = config.get("decoder_error")
    prior.decoder_error = load_decoder_error(path, summary) if summary else None
    summary = config.get("refined_error")
    prior.refined_error = load_decoder_error(path, summary) if summary else None
    # calibrations of other refinement settings: (summary, residuals), the main one first
    prior.calibrations = [(summary, prior.refined_error)] if summary else []
    for more in config.get("more_calibrations", []):
        prior.calibrations.append((more, load_decoder_error(path, more)))
    return prior
