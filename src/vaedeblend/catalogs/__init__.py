"""Galaxy catalog sources: each turns a row into a :class:`vaedeblend.galaxy.Galaxy`.

Sources (``load_catalog(source, path)``):

- ``synthetic`` (default, embedded, offline): COSMOS-like galaxies from published relations.
- ``cosmos``: GalSim's COSMOS real-galaxy catalog format, parametric fits, chromatic.
- ``catsim``: an LSST CatSim table (``OneDegSq.fits`` layout), SEDs fitted to u..y.
- ``real``: real HST F814W images (GalSim ``RealGalaxyCatalog``), SEDs fitted to HSC g..y.

Every catalog validates its table at load time (:func:`validate_table`), so a bad input stops
before any drawing starts. See ``docs/catalogs.md``.
"""

from __future__ import annotations

from vaedeblend.catalogs.base import GalaxyCatalog, validate_table

SOURCES = ("synthetic", "cosmos", "catsim", "real")

__all__ = ["SOURCES", "GalaxyCatalog", "load_catalog", "validate_table"]


def load_catalog(
    source: str = "synthetic",
    path: str | None = None,
    *,
    seed: int = 0,
    n: int = 100000,
    mag_limit_f814w: float = 25.2,
) -> GalaxyCatalog:
    """Open a galaxy catalog.

    Args:
        source: ``synthetic``, ``cosmos``, ``catsim`` or ``real``.
        path: for ``cosmos`` and ``real``, the directory holding the GalSim catalog or the
            catalog file itself; for ``catsim``, the FITS table. Unused for ``synthetic``.
        seed: seed of the synthetic catalog (training and test sets use different seeds).
        n: number of synthetic galaxies.
        mag_limit_f814w: keep galaxies brighter than this F814W AB magnitude (for ``catsim``,
            whose magnitudes are LSST only, the cut applies to the F814W magnitude of the fitted
            SED).
    """
    key = source.lower()
    if key == "synthetic":
        from vaedeblend.catalogs.synthetic import SyntheticCatalog

        return SyntheticCatalog(n=n, seed=seed, mag_limit_f814w=mag_limit_f814w)
    if key not in SOURCES:
        raise ValueError(f"unknown catalog source {source!r}; known: {', '.join(SOURCES)}")
    if path is None:
        raise ValueError(f"catalog source {source!r} needs a path (file or directory)")
    try:
        return _open_file_catalog(key, path, mag_limit_f814w)
    except ValueError:
        raise  # our own checks: they name the file and the problem already
    except Exception as err:  # noqa: BLE001 - any reader failure means "not this catalog"
        first = " ".join(str(err).split())[:160]
        raise ValueError(
            f"{path} is not a readable {source} catalog ({type(err).__name__}: {first})"
        ) from err


def _open_file_catalog(key: str, path, mag_limit_f814w: float) -> GalaxyCatalog:
    if key == "cosmos":
        from vaedeblend.catalogs.cosmos import CosmosCatalog

        return CosmosCatalog(path, mag_limit_f814w=mag_limit_f814w)
    if key == "catsim":
        from vaedeblend.catalogs.catsim import CatSimCatalog

        return CatSimCatalog(path, mag_limit_f814w=mag_limit_f814w)
    from vaedeblend.catalogs.real import RealCatalog

    return RealCatalog(path, mag_limit_f814w=mag_limit_f814w)
