"""Models shipped inside the package, loaded offline by name.

Each instrument choice is a directory here holding ``deblender/`` and ``vae/`` model
directories (safetensors + config.json), trained by ``benchmarks/train_pretrained.sh`` on this
project's own simulations, and its latent prior (``prior/``). The deblender is the one for
detected centring (what field mode meets); deblenders trained for another centring of the target
(the paper's other table rows, ``benchmarks/train_centrings.sh``) sit beside it as
``deblender_<centring>/`` and are named ``<instruments>-<centring>`` (``lsst-centred``): they
share the VAE's decoder and prior. ``benchmarks/RESULTS.md`` records the commands, seeds, sizes
and losses.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
PRETRAINED = {
    "lsst": "LSST u,g,r,i,z,y deblender, paper preset, detected centring",
    "lsst+euclid": "LSST u..y + Euclid VIS,Y,J,H deblender, paper preset, detected centring",
    "hsc": "HSC g,r,i,z,y deblender, survey preset (HSC wide depth), 32x32, detected centring",
    "lsst-centred": "LSST u,g,r,i,z,y deblender, paper preset, centred targets (paper table)",
    "lsst-uniform": "LSST u,g,r,i,z,y deblender, paper preset, +/-0.1 arcsec offsets (paper table)",
    "lsst+euclid-centred": "LSST u..y + Euclid VIS,Y,J,H deblender, paper preset, centred targets",
}


def pretrained_dir(name: str, part: str = "deblender") -> Path:
    """Directory of the shipped model ``name`` (``part``: ``deblender`` or ``vae``); a
    per-centring name (``lsst-centred``) has its own deblender and its instruments' VAE."""
    if name not in PRETRAINED:
        raise KeyError(f"no pretrained model {name!r}; shipped: {', '.join(PRETRAINED)}")
    instruments, _, centring = name.partition("-")
    if centring and part == "deblender":
        part = f"deblender_{centring}"
    path = HERE / instruments.replace("+", "_") / part
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"pretrained model {name!r} ({part}) is not in this installation ({path}); "
            "train it with benchmarks/"
            + ("train_centrings.sh" if centring else "train_pretrained.sh")
        )
    return path


def is_shipped(name: str) -> bool:
    """Whether the deblender ``name`` is present in this installation."""
    try:
        pretrained_dir(name)
    except FileNotFoundError:
        return False
    return True


def load_pretrained(name: str, part: str = "deblender", device: str = "cpu", batch_size: int = 256):
    """Load a shipped model by name (``lsst``, ``lsst+euclid``, ``hsc``); no download."""
    from vaedeblend.models.api import load_model

    return load_model(pretrained_dir(name, part), device=device, batch_size=batch_size)


def resolve_model(model, device: str = "cpu", batch_size: int = 256):
    """A loaded model from: an object that already is one (any
    :class:`~vaedeblend.models.api.Deblender`, returned as is), a model directory, or a shipped
    name (``lsst``, ``lsst+euclid``, ``hsc``). The one place names are resolved."""
    import os

    if not isinstance(model, str | os.PathLike):
        return model
    if Path(model).exists():
        from vaedeblend.models.api import load_model

        return load_model(model, device=device, batch_size=batch_size)
    if str(model) in PRETRAINED:
        return load_pretrained(str(model), device=device, batch_size=batch_size)
    raise FileNotFoundError(
        f"model {str(model)!r} is neither a directory nor a shipped name ({', '.join(PRETRAINED)})"
    )
