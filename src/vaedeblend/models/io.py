"""Exported models: a directory with ``model.safetensors`` and ``config.json``. Never pickles.

``config.json`` keys: ``format``, ``format_version``, ``kind`` (``vae`` or ``deblender``),
``package_version``, ``band_ids`` (channel order), ``pixel_scales_arcsec``, ``stamp_size``
(pixels), ``norm_constants_electrons`` (the output head's per-band constants: I_b for
``sigmoid``, a_b for ``asinh``), ``normalisation`` (the formula), ``output_head`` (absent in
models written before heads existed: ``sigmoid``),
``sky_levels_electrons``, ``architecture`` (:class:`ArchConfig` dict), ``loss``, ``beta``,
``training`` (data fingerprint, centring, steps, best validation loss, settings), ``weights``
(file name and storage dtype) and, for a deblender, ``vae`` (where its frozen decoder and
constants came from). A deblender directory is self-contained: it holds the whole network,
frozen decoder included, and the VAE's constants.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vaedeblend._version import __version__
from vaedeblend.files import publish
from vaedeblend.models.networks import VAE, ArchConfig, build_vae
from vaedeblend.models.normalisation import Intensity

FORMAT = "vaedeblend-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
KINDS = ("vae", "deblender")
NORMALISATION = "y = tanh(asinh(x * 2.5 / I_b)); x = sinh(atanh(y)) * I_b / 2.5"


class ModelFormatError(ValueError):
    """A model directory that is missing files or does not match its own config."""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def model_config(
    vae: VAE,
    *,
    kind: str,
    band_ids: list[str],
    pixel_scales_arcsec,
    norm_constants,
    sky_levels_electrons,
    loss: str,
    beta: float,
    training: dict,
    vae_source: dict | None = None,
    dtype: str = "float32",
) -> dict:
    """The ``config.json`` dict for ``vae`` (see the module docstring for the keys)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "package_version": __version__,
        "band_ids": list(band_ids),
        "pixel_scales_arcsec": [float(s) for s in pixel_scales_arcsec],
        "stamp_size": vae.cfg.stamp_size,
        "norm_constants_electrons": [float(c) for c in norm_constants],
        "normalisation": Intensity(vae.cfg.head, norm_constants).formula(),
        "output_head": vae.cfg.head,
        "sky_levels_electrons": [float(s) for s in sky_levels_electrons],
        "architecture": vae.cfg.to_dict(),
        "loss": loss,
        "beta": float(beta),
        "training": training,
        "weights": {"file": WEIGHTS_FILE, "dtype": dtype},
    }
    if vae_source is not None:
        cfg["vae"] = vae_source
    check_config(cfg, "<new model>")
    return cfg


def export_model(vae: VAE, out_dir: str | os.PathLike, config: dict) -> Path:
    """Write ``vae``'s weights and ``config`` (from :func:`model_config`) to ``out_dir``.

    Weights are stored as float32, or float16 when ``config["weights"]["dtype"]`` says so
    (integer buffers stay as they are). Both files are written atomically.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = {"float32": torch.float32, "float16": torch.float16}[config["weights"]["dtype"]]
    tensors = {}
    for name, t in vae.state_dict().items():
        t = t.detach().cpu()
        tensors[name] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
    # safetensors writes to a path; write next to the target, then rename atomically.
    tmp = out / f".{WEIGHTS_FILE}.{os.getpid()}.tmp"
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "kind": config["kind"]})
    publish(tmp, out / WEIGHTS_FILE)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _atomic_write_bytes(out / CONFIG_FILE, text.encode())
    return out


def read_config(path: str | os.PathLike) -> dict:
    """The checked ``config.json`` of the model directory ``path``."""
    path = Path(path)
    cfg_path = path / CONFIG_FILE
    if not path.is_dir():
        raise ModelFormatError(f"model path {path} is not a directory")
    if not cfg_path.exists():
        raise ModelFormatError(f"{path} is not a vaedeblend model: no {CONFIG_FILE}")
    cfg = json.loads(cfg_path.read_text())
    check_config(cfg, str(path))
    return cfg


def check_config(cfg: dict, where: str) -> None:
    """Raise :class:`ModelFormatError` naming every inconsistency of a model config."""
    if cfg.get("format") != FORMAT:
        raise ModelFormatError(f"{where}: not a {FORMAT} config (format={cfg.get('format')!r})")
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFormatError(
            f"{where}: format version {cfg['format_version']} is newer than this package "
            f"reads ({FORMAT_VERSION}); upgrade vaedeblend"
        )
    arch = ArchConfig.from_dict(cfg["architecture"])
    n = arch.channels
    problems = []
    for key in ("band_ids", "pixel_scales_arcsec", "norm_constants_electrons"):
        if len(cfg[key]) != n:
            problems.append(f"{key} has {len(cfg[key])} entries for {n} channels")
    if len(set(cfg["band_ids"])) != len(cfg["band_ids"]):
        problems.append(f"band_ids repeat a band: {cfg['band_ids']}")
    if cfg["stamp_size"] != arch.stamp_size:
        problems.append(f"stamp_size {cfg['stamp_size']} != architecture's {arch.stamp_size}")
    if cfg["kind"] not in KINDS:
        problems.append(f"kind {cfg['kind']!r} is not one of {KINDS}")
    if not np.all(np.asarray(cfg["norm_constants_electrons"]) > 0):
        problems.append("normalisation constants must be > 0")
    if problems:
        raise ModelFormatError(f"{where}: " + "; ".join(problems))


def load_vae(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[VAE, dict]:
    """(network in eval mode, config) from a model directory; weights checked name by name
    and shape by shape against the architecture in the config."""
    path = Path(path)
    cfg = read_config(path)
    weights = path / cfg["weights"]["file"]
    if not weights.exists():
        raise ModelFormatError(f"{path}: weights file {weights.name} is missing")
    vae = build_vae(cfg["architecture"])
    state = load_file(str(weights))
    _check_state(vae, state, path)
    expected = vae.state_dict()
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    vae.load_state_dict(state, strict=True)
    return vae.to(device).eval(), cfg


def _check_state(vae: VAE, state: dict, path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [
        f"{k}: file {found[k]} vs architecture {expected[k]}"
        for k in sorted(set(expected) & set(found))
        if found[k] != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong))
    if problems:
        raise ModelFormatError(
            f"{path}: weights do not match the architecture in {CONFIG_FILE}: "
            + " | ".join(problems)
        )
