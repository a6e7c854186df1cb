"""vaedeblend: deblending galaxies in LSST + Euclid images with variational autoencoders."""

from vaedeblend._version import __version__

__all__ = ["__version__", "load_model", "load_pretrained"]


def load_model(path, device: str = "cpu", batch_size: int = 256):
    """Load an exported VAE or deblender directory; see :func:`vaedeblend.models.load_model`."""
    from vaedeblend.models.api import load_model as _load

    return _load(path, device=device, batch_size=batch_size)


def load_pretrained(name: str, part: str = "deblender", device: str = "cpu", batch_size: int = 256):
    """Load a model shipped with the package (``lsst`` or ``lsst+euclid``); nothing is
    downloaded. See :mod:`vaedeblend.pretrained`."""
    from vaedeblend.pretrained import load_pretrained as _load

    return _load(name, part=part, device=device, batch_size=batch_size)
