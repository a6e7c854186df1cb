"""Models shipped inside the package, loaded offline by name.

Each name is a directory here holding ``deblender/`` and ``vae/`` model directories
(safetensors + config.json), trained by ``benchmarks/train_pretrained.sh`` on this project's own
simulations; ``benchmarks/RESULTS.md`` records the commands, seeds, sizes and losses.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
PRETRAINED = {
    "lsst": "LSST u,g,r,i,z,y deblender, paper preset, detected centring",
    "lsst+euclid": "LSST u..y + Euclid VIS,Y,J,H deblender, paper preset, detected centring",
    "hsc": "HSC g,r,i,z,y deblender, survey preset (HSC wide depth), 32x32, detected centring",
}


def pretrained_dir(name: str, part: str = "deblender") -> Path:
    """Directory of the shipped model ``name`` (``part``: ``deblender`` or ``vae``)."""
    if name not in PRETRAINED:
        raise KeyError(f"no pretrained model {name!r}; shipped: {', '.join(PRETRAINED)}")
    path = HERE / name.replace("+", "_") / part
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"pretrained model {name!r} ({part}) is not in this installation ({path}); "
            "train it with benchmarks/train_pretrained.sh"
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
