"""Reading a field: one image per band, with optional variance or weight maps, masks and PSFs.

A field is a list of :class:`BandImage`, one per band, each a 2-D image (H, W) on its own pixel
grid (LSST and Euclid grids differ), tied together by their celestial WCS. Images stay in the
units they were given (possibly read-only memory maps of FITS files) and are converted to
electrons, with bad pixels masked, only when a region is read (:meth:`BandImage.read`), so that
a field larger than memory is never loaded whole.

FITS conventions (what ``vaedeblend simulate --kind field`` writes, and what is read):

- one file per band with a 2-D image, or a cube (C, H, W) with one plane per band;
- band ids from the ``BAND`` keyword (cubes: ``BAND1`` ... ``BANDn`` or ``BANDS = 'a,b,...'``),
  or given by the caller;
- ``SKYLEVEL`` (electrons per pixel: the subtracted sky, whose Poisson variance is the noise),
  ``ZP_AB`` + ``EXPTIME`` (AB magnitude of 1 electron per second; seconds), ``PIXSCALE``
  (arcsec per pixel) and ``BUNIT`` are used when present; the planes of a cube take theirs from
  ``SKYLEV1``.., ``ZP_AB1``.., ``EXPTIM1``.. (ZP_AB and EXPTIME may also be shared);
- extensions named ``VARIANCE``, ``WEIGHT`` (inverse variance), ``MASK`` (non-zero = bad) and
  ``PSF`` in the image's own file are used when no separate file is given.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

COMPANIONS = ("VARIANCE", "WEIGHT", "MASK", "PSF")
ADU_UNITS = ("adu", "count", "counts", "dn", "data number")
# BUNIT spellings taken as electrons without a gain; anything else (nJy, electron/s, ADU/s, ...)
# needs --gain, since the Poisson terms and magnitudes assume electrons.
ELECTRON_UNITS = ("", "electron", "electrons", "e-", "e")


class FieldInputError(ValueError):
    """Input images, maps or settings that cannot be used as given (the message says why)."""


@dataclass
class BandImage:
    """One band of a field.

    Attributes:
        band: band id (``lsst_r``).
        data: (H, W) image in input units (electrons / ``gain``); may be a read-only memmap.
        gain: electrons per input unit.
        wcs: celestial WCS of the image (0-based pixels in use), or None.
        pixel_scale_arcsec: pixel side, arcsec (None when unknown).
        variance: (H, W) or scalar noise variance, input units squared, or None.
        weight: (H, W) inverse variance, input units^-2, or None (variance wins when both).
        mask: (H, W), non-zero = bad pixel, or None.
        psf: (P, P) PSF image at this band's pixel scale (any normalisation), or None.
        sky_level: subtracted sky, electrons per pixel (its Poisson variance is the noise), or
            None.
        zeropoint_mag: AB magnitude of a source giving 1 electron in the image, or None.
        source: file name (or ``array``), for messages.
    """

    band: str
    data: np.ndarray
    gain: float = 1.0
    wcs: WCS | None = None
    pixel_scale_arcsec: float | None = None
    variance: np.ndarray | float | None = None
    weight: np.ndarray | None = None
    mask: np.ndarray | None = None
    psf: np.ndarray | None = None
    sky_level: float | None = None
    zeropoint_mag: float | None = None
    source: str = "array"

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) pixels."""
        return tuple(self.data.shape)

    @property
    def has_variance_map(self) -> bool:
        """True when the caller gave a per-pixel variance or weight map (then it is taken to
        hold all the noise, sources included)."""
        return self.variance is not None or self.weight is not None

    def read(self, ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """A region in electrons: (image float32, variance electrons^2 or None, bad mask).

        Non-finite pixels, masked pixels, and pixels with a non-positive or non-finite
        variance are bad; bad pixels are set to 0 in the image (sky-subtracted: 0 is the
        background), so that they never leak into any model.
        """
        image = np.array(self.data[ys, xs], dtype=np.float32) * np.float32(self.gain)
        bad = ~np.isfinite(image)
        if self.mask is not None:
            bad |= np.asarray(self.mask[ys, xs]) != 0
        variance = self._read_variance(ys, xs, image.shape)
        if variance is not None:
            bad |= ~(np.isfinite(variance) & (variance > 0))
            variance = np.where(bad, 0.0, variance).astype(np.float32)
        image[bad] = 0.0
        return image, variance, bad

    def _read_variance(self, ys, xs, shape) -> np.ndarray | None:
        g2 = self.gain * self.gain
        if self.variance is not None:
            if np.ndim(self.variance) == 0:
                return np.full(shape, float(self.variance) * g2, dtype=np.float32)
            return np.array(self.variance[ys, xs], dtype=np.float32) * np.float32(g2)
        if self.weight is not None:
            w = np.array(self.weight[ys, xs], dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                return (g2 / w).astype(np.float32)
        return None


@dataclass
class FieldImages:
    """All bands of a field, in the caller's band order."""

    bands: list[BandImage]

    @property
    def band_ids(self) -> list[str]:
        """Band ids in channel order."""
        return [b.band for b in self.bands]

    def index(self, band: str) -> int:
        """Channel index of ``band``."""
        return self.band_ids.index(band)


def apply_image_zeropoint(
    field: FieldImages, image_zeropoint_mag: float, preset: str | None = None
) -> None:
    """Calibrate images whose unit is a source of AB magnitude ``image_zeropoint_mag`` (27 for
    HSC coadds, 31.4 for nJy): per band, the gain becomes the electrons such a source gives over
    the exposure of the depth the model was trained for (:func:`~vaedeblend.instruments.
    band_at_depth` with ``preset``), and the electron zero point follows, so that magnitudes are
    right. The images must be at about that depth: the model expects its training noise."""
    from vaedeblend.instruments import band_at_depth

    for image in field.bands:
        try:
            band = band_at_depth(image.band, preset)
        except ValueError as err:
            raise FieldInputError(f"cannot calibrate {image.source}: {err}") from err
        image.gain = band.mag_to_electrons(image_zeropoint_mag)
        image.zeropoint_mag = image_zeropoint_mag + 2.5 * float(np.log10(image.gain))


# ------------------------------------------------------------------------------------------
# From arrays
# ------------------------------------------------------------------------------------------


def _per_band(value, n: int, name: str, allow_scalar: bool = False) -> list:
    """``value`` as a list of ``n`` per-band entries (None, a sequence, or a (C, ...) array)."""
    if value is None:
        return [None] * n
    if allow_scalar and np.ndim(value) == 0:
        return [value] * n
    if isinstance(value, dict):
        raise FieldInputError(f"{name}: give a sequence in band order, not a dict")
    if len(value) != n:
        raise FieldInputError(f"{name}: {len(value)} entries for {n} bands")
    return list(value)


def from_arrays(
    images,
    bands: Sequence[str],
    *,
    wcs=None,
    pixel_scale_arcsec=None,
    variance=None,
    weight=None,
    mask=None,
    psf=None,
    sky_level=None,
    zeropoint_mag=None,
    gain=1.0,
) -> FieldImages:
    """A field from arrays: ``images`` (C, H, W) or a list of C (H_b, W_b) arrays.

    Every other argument is None, one value for all bands (scalars only), or one entry per
    band: ``wcs`` (astropy WCS), ``pixel_scale_arcsec``, ``variance`` (input units squared),
    ``weight``, ``mask`` (non-zero = bad), ``psf`` (P, P), ``sky_level`` (electrons per pixel),
    ``zeropoint_mag`` (AB mag of 1 electron), ``gain`` (electrons per input unit).
    """
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = images[None]
    n = len(images)
    bands = list(bands) if bands is not None else []
    if len(bands) != n:
        raise FieldInputError(f"{n} images but {len(bands)} band ids {bands}: give one per image")
    cols = {
        "wcs": _per_band(wcs if not isinstance(wcs, WCS) else [wcs] * n, n, "wcs"),
        "pixel_scale_arcsec": _per_band(pixel_scale_arcsec, n, "pixel_scale", True),
        "variance": _per_band(variance, n, "variance", True),
        "weight": _per_band(weight, n, "weight"),
        "mask": _per_band(mask, n, "mask"),
        "psf": _per_band(psf, n, "psf"),
        "sky_level": _per_band(sky_level, n, "sky_level", True),
        "zeropoint_mag": _per_band(zeropoint_mag, n, "zeropoint_mag", True),
        "gain": _per_band(gain, n, "gain", True),
    }
    out = []
    for i, band in enumerate(bands):
        kw = {k: v[i] for k, v in cols.items()}
        kw["gain"] = 1.0 if kw["gain"] is None else float(kw["gain"])
        data = np.asarray(images[i])
        if data.ndim != 2:
            raise FieldInputError(f"image of band {band} has shape {data.shape}, expected (H, W)")
        img = BandImage(band=band, data=data, source=f"array {i}", **kw)
        if img.pixel_scale_arcsec is None and img.wcs is not None:
            img.pixel_scale_arcsec = wcs_pixel_scale(img.wcs)
        out.append(img)
    field = FieldImages(out)
    check_shapes(field)
    return field


# ------------------------------------------------------------------------------------------
# From FITS files
# ------------------------------------------------------------------------------------------


def open_fits(path: str | os.PathLike) -> fits.HDUList:
    """Open a FITS file memory-mapped; a missing, corrupt or truncated file is a
    :class:`FieldInputError` (or FileNotFoundError) naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*truncated.*")
            hdul = fits.open(path, memmap=True)
            for hdu in hdul:  # touching every HDU's data finds truncation now, not mid-run
                if hdu.data is not None and hasattr(hdu.data, "shape"):
                    _ = hdu.data.shape
    except (OSError, ValueError, TypeError, UserWarning) as err:
        raise FieldInputError(f"cannot read FITS file {path}: {err}") from err
    return hdul


def _image_hdu(hdul: fits.HDUList, path) -> fits.ImageHDU:
    for hdu in hdul:
        if hdu.name in COMPANIONS or hdu.data is None:
            continue
        if isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
            continue
        if hdu.data.ndim in (2, 3):
            return hdu
    raise FieldInputError(f"{path}: no 2-D image or 3-D (band, y, x) cube in any HDU")


def _planes(data: np.ndarray) -> list[np.ndarray]:
    return [data] if data.ndim == 2 else [data[i] for i in range(data.shape[0])]


def _header_bands(header, n: int) -> list[str | None]:
    if n == 1 and "BAND" in header:
        return [str(header["BAND"]).strip()]
    if "BANDS" in header:
        names = [s.strip() for s in str(header["BANDS"]).split(",")]
        if len(names) == n:
            return names
    return [
        str(header[f"BAND{i + 1}"]).strip() if f"BAND{i + 1}" in header else None for i in range(n)
    ]


def wcs_pixel_scale(wcs: WCS) -> float:
    """Mean pixel side of a celestial WCS, arcsec."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def _header_wcs(header) -> WCS | None:
    if not str(header.get("CTYPE1", "")).startswith(("RA", "GLON", "ELON")):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header).celestial


def _gain(header, gain: float | None, path) -> float:
    """Electrons per input unit: the caller's ``gain``, else 1 for images in electrons."""
    if gain is not None:
        return float(gain)
    unit = str(header.get("BUNIT", "")).strip().lower()
    if unit in ADU_UNITS:
        raise FieldInputError(
            f"{path}: BUNIT = {header['BUNIT']!r}; images must be in electrons: give the gain "
            "(electrons per ADU) with --gain"
        )
    if unit not in ELECTRON_UNITS:
        raise FieldInputError(
            f"{path}: BUNIT = {header['BUNIT']!r} is not electrons: give the gain (electrons "
            "per image unit, for a total exposure) with --gain"
        )
    return 1.0


def _plane_value(header, key: str, plane_key: str, k: int, n: int) -> float | None:
    """Keyword ``key`` of a 2-D image; for plane k of a cube ``plane_key<k+1>`` (FITS keywords
    have 8 characters at most), else ``key`` when it is shared by all planes."""
    if n > 1 and f"{plane_key}{k + 1}" in header:
        return float(header[f"{plane_key}{k + 1}"])
    return float(header[key]) if key in header else None


def _zeropoint(header, k: int, n: int) -> float | None:
    """AB magnitude of 1 electron in the image, from ZP_AB (1 electron per second) + EXPTIME
    (cube planes: ZP_AB1.., EXPTIM1..)."""
    zp = _plane_value(header, "ZP_AB", "ZP_AB", k, n)
    exptime = _plane_value(header, "EXPTIME", "EXPTIM", k, n)
    if zp is None or exptime is None:
        return None
    return zp + 2.5 * np.log10(exptime)


def _companion(hdul, name: str, path_list, i: int):
    """Data of a companion map: the i-th separate file if given, else the extension ``name``."""
    if path_list is not None and path_list[i] is not None:
        other = open_fits(path_list[i])
        # a separate map file may name its HDU after what it holds (VARIANCE, MASK, ...)
        if name in other and other[name].data is not None:
            return other[name].data, f"{path_list[i]}[{name}]"
        return _image_hdu(other, path_list[i]).data, str(path_list[i])
    if name in hdul:
        return hdul[name].data, f"{hdul.filename()}[{name}]"
    return None, None


def _split_companion(data, n_planes: int, label: str, band_shape) -> list:
    """One companion array per plane; a cube companion must have one plane per image plane."""
    if data is None:
        return [None] * n_planes
    if n_planes == 1:
        planes = [data if data.ndim == 2 else None]
    else:
        planes = _planes(data) if data.ndim == 3 and data.shape[0] == n_planes else None
    if planes is None or planes[0] is None:
        raise FieldInputError(f"{label}: shape {data.shape} does not match the image")
    for p in planes:
        if band_shape is not None and tuple(p.shape) != tuple(band_shape):
            raise FieldInputError(
                f"{label}: shape {tuple(p.shape)} differs from the image's {tuple(band_shape)}"
            )
    return planes


def read_fits(
    paths: Sequence[str | os.PathLike],
    *,
    bands: Sequence[str] | None = None,
    variance: Sequence | None = None,
    weight: Sequence | None = None,
    mask: Sequence | None = None,
    psf: Sequence | None = None,
    gain: float | None = None,
    pixel_scale_arcsec: float | None = None,
) -> FieldImages:
    """Read a field from FITS files (memory-mapped), one per band or cubes.

    Args:
        paths: image files, in any band order.
        bands: band ids of all image planes in file order (overrides the headers).
        variance, weight, mask, psf: one file per image file (or None), matching its planes.
        gain: electrons per input unit for every band (default: images are in electrons).
        pixel_scale_arcsec: used for files with neither a WCS nor a ``PIXSCALE`` keyword.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise FieldInputError("no image given")
    for name, value in (("variance", variance), ("weight", weight), ("mask", mask), ("psf", psf)):
        if value is not None and len(value) != len(paths):
            raise FieldInputError(
                f"{len(value)} {name} file(s) for {len(paths)} image file(s): give one per image"
            )
    out: list[BandImage] = []
    for i, path in enumerate(paths):
        out.extend(_read_one(path, i, variance, weight, mask, psf, gain, pixel_scale_arcsec))
    _assign_bands(out, bands)
    field = FieldImages(out)
    check_shapes(field)
    return field


def _read_one(path, i, variance, weight, mask, psf, gain, pixel_scale) -> list[BandImage]:
    hdul = open_fits(path)
    hdu = _image_hdu(hdul, path)
    header, planes = hdu.header, _planes(hdu.data)
    shape = planes[0].shape
    maps = {}
    for name, given in (("VARIANCE", variance), ("WEIGHT", weight), ("MASK", mask)):
        data, label = _companion(hdul, name, given, i)
        maps[name] = _split_companion(data, len(planes), f"{name.lower()} map {label}", shape)
    psf_data, _ = _companion(hdul, "PSF", psf, i)
    psfs = [None] * len(planes)
    if psf_data is not None:
        psfs = [psf_data] * len(planes) if psf_data.ndim == 2 else _planes(psf_data)
        if len(psfs) != len(planes):
            raise FieldInputError(f"{path}: {len(psfs)} PSF planes for {len(planes)} bands")
    wcs = _header_wcs(header)
    scale = wcs_pixel_scale(wcs) if wcs is not None else header.get("PIXSCALE", pixel_scale)
    names = _header_bands(header, len(planes))
    images = []
    for k, plane in enumerate(planes):
        images.append(
            BandImage(
                band=names[k] or "",
                data=plane,
                gain=_gain(header, gain, path),
                wcs=wcs,
                pixel_scale_arcsec=None if scale is None else float(scale),
                variance=maps["VARIANCE"][k],
                weight=maps["WEIGHT"][k],
                mask=maps["MASK"][k],
                psf=None if psfs[k] is None else np.asarray(psfs[k], dtype=np.float64),
                sky_level=_sky_level(header, k, len(planes)),
                zeropoint_mag=_zeropoint(header, k, len(planes)),
                source=str(path) if len(planes) == 1 else f"{path}[plane {k}]",
            )
        )
    return images


def _sky_level(header, k: int, n: int) -> float | None:
    """Subtracted sky (electrons per pixel): SKYLEVEL, or SKYLEV1.. for the planes of a cube
    (a single SKYLEVEL is not taken to hold for every plane of a cube)."""
    if n == 1:
        return float(header["SKYLEVEL"]) if "SKYLEVEL" in header else None
    key = f"SKYLEV{k + 1}"
    return float(header[key]) if key in header else None


def _assign_bands(images: list[BandImage], bands: Sequence[str] | None) -> None:
    if bands is not None:
        bands = list(bands)
        if len(bands) != len(images):
            raise FieldInputError(
                f"{len(bands)} band ids {bands} for {len(images)} image planes "
                f"({', '.join(im.source for im in images)})"
            )
        for im, b in zip(images, bands, strict=True):
            if im.band and im.band != b:
                warnings.warn(
                    f"{im.source}: header BAND = {im.band!r}, using the given {b!r}", stacklevel=3
                )
            im.band = b
    unnamed = [im.source for im in images if not im.band]
    if unnamed:
        raise FieldInputError(
            f"no band id for {', '.join(unnamed)}: add a BAND keyword or give --bands"
        )
    seen = [im.band for im in images]
    repeated = sorted({b for b in seen if seen.count(b) > 1})
    if repeated:
        raise FieldInputError(f"bands given more than once: {repeated}")


def check_shapes(field: FieldImages) -> None:
    """Every map has its image's shape; images are 2-D and not empty."""
    for im in field.bands:
        if len(im.shape) != 2 or 0 in im.shape:
            raise FieldInputError(f"{im.source} ({im.band}): image shape {im.shape} is not 2-D")
        for name in ("variance", "weight", "mask"):
            value = getattr(im, name)
            if value is None or np.ndim(value) == 0:
                continue
            if tuple(np.shape(value)) != im.shape:
                raise FieldInputError(
                    f"{name} map of band {im.band} has shape {tuple(np.shape(value))}, "
                    f"the image {im.shape}"
                )
