"""Convolutional VAEs on (N, C, H, W) stamps in normalised space.

Two architectures (``ARCHITECTURES``):

- ``paper``: the network of Arcelin et al. (2021), ``docs`` ``paper_setup.md``. Encoder: BatchNorm
  on the input; per width f: Conv 3x3 (f) + PReLU, Conv 3x3 stride 2 (f) + PReLU; flatten; Dense +
  PReLU; mu and a softplus standard deviation. Decoder (mirror): Dense + PReLU, Dense to the
  bottleneck + PReLU; per width (reversed): ConvTranspose 3x3 stride 2 + PReLU, ConvTranspose 3x3
  + PReLU; Conv 3x3 to C channels, sigmoid.
- ``fast``: our design for a 2-core CPU. Its cost sits at low resolution: a stride-2 stem (no
  convolution runs at full resolution in the encoder), one 3x3 conv per resolution, upsampling by
  non-overlapping 2x2 transposed convolutions (a matrix multiply per pixel, cheap), narrow
  channels at high resolution, per-channel PReLU. :func:`forward_flops` counts the cost.

Both take the stamp size, channel count, widths (one per resolution halving), latent size and
dense size as parameters. The stamp side must be divisible by ``2 ** len(widths)``.

The decoder returns logits; :meth:`VAE.forward` and :meth:`Decoder.forward` apply the output
head's activation (``sigmoid``: the paper's normalised space; ``asinh``: none, see
:mod:`vaedeblend.models.normalisation`), while the BCE loss uses the logits for numerical
stability.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from vaedeblend.models.normalisation import HEADS

# Added to the softplus so that log(sigma) in the KL term stays finite.
SIGMA_FLOOR = 1e-6
ARCHITECTURES = ("paper", "fast")


@dataclass
class ArchConfig:
    """Hyperparameters of a VAE; ``to_dict`` / ``from_dict`` go through ``config.json``.

    Attributes:
        arch: ``paper`` or ``fast``.
        channels: number of bands C.
        stamp_size: stamp side H = W, pixels.
        widths: channels per resolution level (one halving each).
        latent_dim: size of the latent Gaussian.
        dense_dim: width of the dense layer between the convolutions and the latent.
        prelu: ``element`` (one slope per activation, as Keras' PReLU in the paper's code),
            ``channel`` (one slope per conv channel, one for each dense layer).
        out_width: ``fast`` only: channels of the last (full-resolution) upsampling.
        norm: ``fast`` only: ``none`` or ``batch`` (BatchNorm after the encoder's convolutions).
        head: the output: ``sigmoid`` (the paper's, values in (0, 1) of the tanh-asinh
            normalisation) or ``asinh`` (a linear output in the noise-scaled asinh space, see
            :mod:`vaedeblend.models.normalisation`). Configs without it are ``sigmoid``.
        encoder_widths: the encoder's channels per resolution level, when they differ from the
            decoder's ``widths`` (a deblender's encoder may be wider than its VAE's); None: the
            same. As many levels as ``widths``.
        encoder_dense_dim: the encoder's dense width, when it differs from ``dense_dim``; None:
            the same.
    """

    arch: str = "paper"
    channels: int = 10
    stamp_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128, 256)
    latent_dim: int = 32
    dense_dim: int = 256
    prelu: str = "element"
    out_width: int = 16
    norm: str = "none"
    head: str = "sigmoid"
    encoder_widths: tuple[int, ...] | None = None
    encoder_dense_dim: int | None = None

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        if self.encoder_widths is not None:
            self.encoder_widths = tuple(int(w) for w in self.encoder_widths)
            if len(self.encoder_widths) != len(self.widths):
                raise ValueError(
                    f"encoder_widths has {len(self.encoder_widths)} levels, widths "
                    f"{len(self.widths)}: the encoder must end at the decoder's bottleneck"
                )
        for name in ("widths", "encoder_widths"):
            counts = getattr(self, name) or ()
            if any(w < 1 for w in counts):
                raise ValueError(f"{name} must be positive channel counts, not {list(counts)}")
        if self.encoder_dense_dim is not None and int(self.encoder_dense_dim) < 1:
            raise ValueError(f"encoder_dense_dim must be >= 1, not {self.encoder_dense_dim}")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; known: {sorted(ARCHITECTURES)}")
        if self.prelu not in ("element", "channel"):
            raise ValueError(f"prelu must be 'element' or 'channel', not {self.prelu!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, not {self.head!r}")
        if self.norm not in ("none", "batch"):
            raise ValueError(f"norm must be 'none' or 'batch', not {self.norm!r}")
        factor = 2 ** len(self.widths)
        if self.stamp_size % factor:
            raise ValueError(
                f"stamp size {self.stamp_size} is not divisible by 2**len(widths) = {factor}"
            )

    @property
    def bottleneck_size(self) -> int:
        """Side of the smallest feature map, pixels."""
        return self.stamp_size // 2 ** len(self.widths)

    @property
    def encoder(self) -> ArchConfig:
        """The encoder's own shape: ``widths`` and ``dense_dim`` replaced by the encoder's."""
        return replace(
            self,
            widths=self.encoder_widths or self.widths,
            dense_dim=self.encoder_dense_dim or self.dense_dim,
            encoder_widths=None,
            encoder_dense_dim=None,
        )

    @property
    def decoder_side(self) -> ArchConfig:
        """This architecture with the encoder the decoder's mirror (the VAE's encoder)."""
        return replace(self, encoder_widths=None, encoder_dense_dim=None)

    def to_dict(self) -> dict:
        """The dict for ``config.json``; encoder keys only when the encoder differs (so the
        configs of symmetric networks stay as they were before the keys existed)."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        if self.encoder_widths is None:
            d.pop("encoder_widths")
        else:
            d["encoder_widths"] = list(self.encoder_widths)
        if self.encoder_dense_dim is None:
            d.pop("encoder_dense_dim")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ArchConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def preset(arch: str, channels: int = 10, stamp_size: int = 64, **overrides) -> ArchConfig:
    """The default hyperparameters of ``arch`` (``paper`` or ``fast``), with ``overrides``."""
    base = {
        "paper": dict(widths=(32, 64, 128, 256), prelu="element"),
        "fast": dict(widths=(24, 48, 96, 192), prelu="channel", out_width=16),
    }
    if arch not in base:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(base)}")
    kwargs = {**base[arch], **{k: v for k, v in overrides.items() if v is not None}}
    return ArchConfig(arch=arch, channels=channels, stamp_size=stamp_size, **kwargs)


class ElementPReLU(nn.Module):
    """PReLU with one slope per element of a (C, H, W) or (F,) feature, as Keras' default."""

    def __init__(self, shape: tuple[int, ...], init: float = 0.25):
        super().__init__()
        self.weight = nn.Parameter(torch.full(shape, float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, self.weight * x)


def prelu(kind: str, channels: int, size: int | None) -> nn.Module:
    """A PReLU for ``channels`` conv channels at ``size`` x ``size`` pixels, or for a dense
    layer of ``channels`` features when ``size`` is None."""
    if kind == "element":
        shape = (channels,) if size is None else (channels, size, size)
        return ElementPReLU(shape)
    # Per-channel slopes for convolutions; a single slope for dense layers (nn.PReLU()):
    # this is the variant whose count the paper setup quotes (5,066,741 for 10 bands).
    return nn.PReLU(1 if size is None else channels)


class Encoder(nn.Module):
    """(N, C, H, W) normalised stamps -> (mu, sigma), each (N, latent_dim)."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        own = cfg.encoder  # its widths, where they differ from the decoder's
        self.input_norm = nn.BatchNorm2d(own.channels)
        self.features = _paper_encoder(own) if own.arch == "paper" else _fast_encoder(own)
        flat = own.widths[-1] * own.bottleneck_size**2
        self.dense = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, own.dense_dim), prelu(own.prelu, own.dense_dim, None)
        )
        self.mu = nn.Linear(own.dense_dim, own.latent_dim)
        self.sigma = nn.Linear(own.dense_dim, own.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dense(self.features(self.input_norm(x)))
        return self.mu(h), F.softplus(self.sigma(h)) + SIGMA_FLOOR


class Decoder(nn.Module):
    """(N, latent_dim) latent vectors -> (N, C, H, W) normalised stamps in (0, 1)."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        side, top = cfg.bottleneck_size, cfg.widths[-1]
        flat = top * side**2
        # With per-element slopes the reshaped dense output keeps one slope per element.
        self.dense = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.dense_dim),
            prelu(cfg.prelu, cfg.dense_dim, None),
            nn.Linear(cfg.dense_dim, flat),
            prelu(cfg.prelu, flat, None),
            nn.Unflatten(1, (top, side, side)),
        )
        self.features = _paper_decoder(cfg) if cfg.arch == "paper" else _fast_decoder(cfg)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid output (N, C, H, W)."""
        return self.features(self.dense(z))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The output in the head's space: sigmoid of the logits, or the linear asinh value."""
        return activation(self.cfg.head, self.logits(z))


def activation(head: str, logits: torch.Tensor) -> torch.Tensor:
    """The output head's activation: ``sigmoid``, or none for ``asinh``."""
    return torch.sigmoid(logits) if head == "sigmoid" else logits


class VAE(nn.Module):
    """Encoder + decoder. ``forward`` returns (output in the head's space, mu, sigma)."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode_sample(
        self, x: torch.Tensor, sample: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, mu, sigma): z drawn from q(z|x) when ``sample``, else z = mu."""
        mu, sigma = self.encoder(x)
        z = mu + sigma * torch.randn_like(mu) if sample else mu
        return z, mu, sigma

    def forward_logits(
        self, x: torch.Tensor, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (N, C, H, W), mu, sigma) for normalised input x (N, C, H, W)."""
        z, mu, sigma = self.encode_sample(x, sample)
        return self.decoder.logits(z), mu, sigma

    def forward(self, x: torch.Tensor, sample: bool = False):
        logits, mu, sigma = self.forward_logits(x, sample)
        return activation(self.cfg.head, logits), mu, sigma


def build_vae(cfg: ArchConfig | dict) -> VAE:
    """A freshly initialised VAE for ``cfg`` (an :class:`ArchConfig` or its dict)."""
    if isinstance(cfg, dict):
        cfg = ArchConfig.from_dict(cfg)
    return VAE(cfg)


def _paper_encoder(cfg: ArchConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in, size = cfg.channels, cfg.stamp_size
    for f in cfg.widths:
        layers += [nn.Conv2d(c_in, f, 3, padding=1), prelu(cfg.prelu, f, size)]
        size //= 2
        layers += [nn.Conv2d(f, f, 3, stride=2, padding=1), prelu(cfg.prelu, f, size)]
        c_in = f
    return nn.Sequential(*layers)


def _paper_decoder(cfg: ArchConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in, size = cfg.widths[-1], cfg.bottleneck_size
    for f in reversed(cfg.widths):
        size *= 2
        up = nn.ConvTranspose2d(c_in, f, 3, stride=2, padding=1, output_padding=1)
        layers += [up, prelu(cfg.prelu, f, size)]
        layers += [nn.ConvTranspose2d(f, f, 3, padding=1), prelu(cfg.prelu, f, size)]
        c_in = f
    layers.append(nn.Conv2d(c_in, cfg.channels, 3, padding=1))
    return nn.Sequential(*layers)


def _conv_block(cfg: ArchConfig, c_in: int, c_out: int, size: int, stride: int) -> list:
    bias = cfg.norm == "none"
    layers = [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)]
    if cfg.norm == "batch":
        layers.append(nn.BatchNorm2d(c_out))
    return layers + [prelu(cfg.prelu, c_out, size)]


def _fast_encoder(cfg: ArchConfig) -> nn.Sequential:
    # Stride-2 stem: the first conv already works at half resolution (4x fewer FLOPs and
    # activations than a full-resolution conv); then one 3x3 conv per level before halving.
    size = cfg.stamp_size // 2
    layers = _conv_block(cfg, cfg.channels, cfg.widths[0], size, 2)
    for f_in, f_out in zip(cfg.widths[:-1], cfg.widths[1:], strict=True):
        layers += _conv_block(cfg, f_in, f_in, size, 1)
        size //= 2
        layers += _conv_block(cfg, f_in, f_out, size, 2)
    return nn.Sequential(*layers)


def _fast_decoder(cfg: ArchConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    size = cfg.bottleneck_size
    widths = list(reversed(cfg.widths))
    for f_in, f_out in zip(widths[:-1], widths[1:], strict=True):
        size *= 2
        # 2x2 stride-2 transposed conv: each input pixel maps to its own 2x2 output block, so
        # it costs one small matrix multiply per pixel; the 3x3 conv after it mixes neighbours.
        layers += [nn.ConvTranspose2d(f_in, f_out, 2, stride=2), prelu(cfg.prelu, f_out, size)]
        layers += [nn.Conv2d(f_out, f_out, 3, padding=1), prelu(cfg.prelu, f_out, size)]
    size *= 2
    layers += [
        nn.ConvTranspose2d(widths[-1], cfg.out_width, 2, stride=2),
        prelu(cfg.prelu, cfg.out_width, size),
        nn.Conv2d(cfg.out_width, cfg.channels, 3, padding=1),
    ]
    return nn.Sequential(*layers)


def check_growth(old: ArchConfig, new: ArchConfig) -> None:
    """Raise ValueError unless ``new``'s encoder is ``old``'s with equal or wider levels."""
    old_enc, new_enc = old.encoder, new.encoder
    same = replace(new_enc, widths=old_enc.widths, dense_dim=old_enc.dense_dim)
    narrower = [a > b for a, b in zip(old_enc.widths, new_enc.widths, strict=True)]
    if same != old_enc or any(narrower) or new_enc.dense_dim < old_enc.dense_dim:
        raise ValueError(
            f"an encoder grows only in width: from {list(old_enc.widths)} / dense "
            f"{old_enc.dense_dim} to {list(new_enc.widths)} / {new_enc.dense_dim} is not"
        )


def widen_encoder(state: dict, old: ArchConfig, new: ArchConfig, seed: int) -> dict:
    """``state`` (a network's state dict) with its ``encoder.*`` tensors grown from ``old``'s
    encoder to ``new``'s wider one, computing the same function: each old weight keeps its
    place, the new channels' incoming weights are freshly initialised (seeded) and their
    outgoing weights are zero, so the wider encoder starts where the narrow one ended and
    training grows the new channels from there. Decoder tensors are returned unchanged.

    Raises:
        ValueError: if ``new`` is not ``old`` with equal or wider encoder levels.
    """
    check_growth(old, new)
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        fresh = Encoder(new).state_dict()
    grown = dict(state)
    for name, init in fresh.items():
        before = state[f"encoder.{name}"]
        if not init.is_floating_point() or init.dim() == 0:
            grown[f"encoder.{name}"] = before.clone()
            continue
        tensor = init.clone().to(before.dtype)
        kept = tuple(slice(0, n) for n in before.shape)
        if tensor.dim() >= 2:
            # the old outputs' weights on the new inputs: zero, so old outputs do not change
            tensor[: before.shape[0]] = 0
        tensor[kept] = before
        grown[f"encoder.{name}"] = tensor
    return grown


def count_parameters(model: nn.Module) -> int:
    """Trainable weights plus BatchNorm running mean and variance (as Keras counts them)."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n += m.running_mean.numel() + m.running_var.numel()
    return n


def forward_flops(model: VAE, batch: int = 1) -> int:
    """FLOPs (multiply and add counted separately) of one forward pass on ``batch`` stamps,
    counted by ``torch.utils.flop_counter`` (convolutions and matrix multiplies only)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.cfg
    x = torch.zeros(batch, cfg.channels, cfg.stamp_size, cfg.stamp_size)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def training_flops(model: VAE, batch: int = 1) -> int:
    """FLOPs of one forward + backward pass on ``batch`` stamps (convs and matmuls only)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.cfg
    x = torch.zeros(batch, cfg.channels, cfg.stamp_size, cfg.stamp_size)
    with FlopCounterMode(display=False) as counter:
        out, mu, sigma = model(x, sample=True)
        (out.sum() + mu.sum() + sigma.sum()).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


__all__ = [
    "ARCHITECTURES",
    "ArchConfig",
    "Decoder",
    "Encoder",
    "VAE",
    "activation",
    "build_vae",
    "check_growth",
    "count_parameters",
    "forward_flops",
    "preset",
    "training_flops",
    "widen_encoder",
]
