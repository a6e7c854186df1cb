"""vaedeblend: deblending galaxies in LSST + Euclid images with variational autoencoders."""

__version__ = "0.1.0"
