"""Ellipticity bias (the paper's m, by regression) and shear bias (from sheared sets).

Two different quantities, reported under different names (see docs/contracts.md):

* ``ellipticity_bias``: linear regression of the ellipticity measured on the deblender's output
  against that measured on the noiseless target, over a test set; m = slope - 1, c = intercept.
* ``shear_bias``: the response of the mean measured ellipticity to an applied shear, from the same
  galaxies and noise sheared by (0, 0), (+g, 0), (-g, 0), (0, +g), (0, -g).

Ellipticities are reduced-shear g (dimensionless), as arrays (N, 2) with columns (g1, g2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LinearBias:
    """m and c of one component, with 1-sigma standard errors; n points used."""

    m: float
    m_err: float
    c: float
    c_err: float
    n: int


@dataclass(frozen=True)
class BiasResult:
    """Per-component biases and their average.

    ``components`` holds (component 1, component 2); ``m``/``c`` are their mean, with errors
    sqrt(err1^2 + err2^2) / 2 (components treated as independent). ``n_excluded`` counts rows
    dropped because a measurement failed (NaN) or |g| > 1.
    """

    components: tuple[LinearBias, LinearBias]
    m: float
    m_err: float
    c: float
    c_err: float
    n_used: int
    n_excluded: int

    def to_dict(self) -> dict:
        """Flat JSON-ready dict: m1, m1_err, c1, c1_err, m2, ..., m, m_err, c, c_err, n_*."""
        out: dict = {}
        for i, comp in enumerate(self.components, start=1):
            out.update({f"m{i}": comp.m, f"m{i}_err": comp.m_err})
            out.update({f"c{i}": comp.c, f"c{i}_err": comp.c_err})
        out.update(m=self.m, m_err=self.m_err, c=self.c, c_err=self.c_err)
        out.update(n_used=self.n_used, n_excluded=self.n_excluded)
        return out


def linear_fit(x: np.ndarray, y: np.ndarray) -> LinearBias:
    """Ordinary least squares y = (1 + m) x + c with the usual standard errors.

    The errors use the scatter of the residuals (s^2 = RSS / (n - 2)), so they hold for any
    noise level without being told it. NaN for fewer than 3 points or no spread in x.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.size
    nan = float("nan")
    if n < 3:
        return LinearBias(nan, nan, nan, nan, n)
    xm, ym = x.mean(), y.mean()
    sxx = np.sum((x - xm) ** 2)
    if sxx <= 0:
        return LinearBias(nan, nan, nan, nan, n)
    slope = np.sum((x - xm) * (y - ym)) / sxx
    intercept = ym - slope * xm
    s2 = np.sum((y - intercept - slope * x) ** 2) / (n - 2)
    slope_err = np.sqrt(s2 / sxx)
    intercept_err = np.sqrt(s2 * (1.0 / n + xm * xm / sxx))
    return LinearBias(
        float(slope - 1.0), float(slope_err), float(intercept), float(intercept_err), n
    )


def _valid_rows(*gs: np.ndarray) -> np.ndarray:
    """Rows finite in every (N, 2) array and with |g| <= 1 in each."""
    ok = np.ones(gs[0].shape[0], dtype=bool)
    for g in gs:
        ok &= np.all(np.isfinite(g), axis=1) & (np.sum(g * g, axis=1) <= 1.0)
    return ok


def _average(components: tuple[LinearBias, LinearBias], n_used: int, n_excl: int) -> BiasResult:
    a, b = components
    return BiasResult(
        components=components,
        m=0.5 * (a.m + b.m),
        m_err=0.5 * float(np.hypot(a.m_err, b.m_err)),
        c=0.5 * (a.c + b.c),
        c_err=0.5 * float(np.hypot(a.c_err, b.c_err)),
        n_used=n_used,
        n_excluded=n_excl,
    )


def ellipticity_bias(g_true: np.ndarray, g_measured: np.ndarray) -> BiasResult:
    """The paper's ellipticity bias: regress measured g_i on true g_i, per component.

    Args:
        g_true: (N, 2) ellipticity of the noiseless target (e.g. KSB on the target image).
        g_measured: (N, 2) ellipticity measured on the deblender's output.

    Rows with a failed measurement (NaN) or |g| > 1 on either side are excluded and counted.
    """
    gt = np.asarray(g_true, dtype=np.float64)
    gm = np.asarray(g_measured, dtype=np.float64)
    ok = _valid_rows(gt, gm)
    comps = tuple(linear_fit(gt[ok, i], gm[ok, i]) for i in range(2))
    return _average(comps, int(ok.sum()), int((~ok).sum()))


@dataclass(frozen=True)
class ShearBias:
    """Shear bias from sheared sets: m_i, c_i with 1-sigma errors.

    ``error_method`` is ``analytic`` (standard error of the per-galaxy paired estimates) or
    ``bootstrap`` (resampling galaxies, all sets together). ``shear`` is the applied |g|.
    """

    m1: float
    m1_err: float
    m2: float
    m2_err: float
    c1: float
    c1_err: float
    c2: float
    c2_err: float
    m: float
    m_err: float
    c: float
    c_err: float
    shear: float
    n_used: int
    n_dropped: int
    error_method: str

    def to_dict(self) -> dict:
        """JSON-ready dict of all fields."""
        return asdict(self)


def _shear_estimates(sets: Mapping[str, np.ndarray], shear: float) -> np.ndarray:
    """Per-galaxy estimates (N, 4): response-1 for components 1, 2 and offsets c1, c2."""
    m1 = (sets["p1"][:, 0] - sets["m1"][:, 0]) / (2 * shear) - 1.0
    m2 = (sets["p2"][:, 1] - sets["m2"][:, 1]) / (2 * shear) - 1.0
    if "00" in sets:
        c1, c2 = sets["00"][:, 0], sets["00"][:, 1]
    else:
        # Without an unsheared set, the mean of the +g and -g sets cancels the linear response
        # to the applied shear and leaves the offset.
        c1 = 0.5 * (sets["p1"][:, 0] + sets["m1"][:, 0])
        c2 = 0.5 * (sets["p2"][:, 1] + sets["m2"][:, 1])
    return np.stack([m1, m2, c1, c2], axis=1)


def shear_bias(
    e_00: np.ndarray | None,
    e_p1: np.ndarray,
    e_m1: np.ndarray,
    e_p2: np.ndarray,
    e_m2: np.ndarray,
    shear: float = 0.01,
    n_bootstrap: int = 0,
    rng: np.random.Generator | None = None,
) -> ShearBias:
    """Shear bias m_i = (<e_i>(+g) - <e_i>(-g)) / (2 g) - 1 and c_i from sheared sets.

    Args:
        e_00, e_p1, e_m1, e_p2, e_m2: (N, 2) ellipticities measured on the same N galaxies
            (same noise) sheared by (0, 0), (+g, 0), (-g, 0), (0, +g), (0, -g). Row k must be
            galaxy k in every set. ``e_00`` may be None: c then comes from the mean of the
            +g and -g sets (see ``_shear_estimates``).
        shear: the applied g (dimensionless).
        n_bootstrap: 0 for analytic errors (standard error of the per-galaxy paired estimates,
            valid because the galaxies are independent); otherwise that many bootstrap
            resamplings of the galaxies, all sets resampled together.

    A galaxy whose measurement failed (NaN, |g| > 1) in any set is dropped from all sets
    (keeping the pairing that cancels shape noise) and counted in ``n_dropped``.
    """
    sets = {"p1": e_p1, "m1": e_m1, "p2": e_p2, "m2": e_m2}
    if e_00 is not None:
        sets["00"] = e_00
    sets = {k: np.asarray(v, dtype=np.float64) for k, v in sets.items()}
    sizes = {v.shape for v in sets.values()}
    if len(sizes) != 1 or next(iter(sizes))[1:] != (2,):
        raise ValueError(f"all sets must be (N, 2) with the same N, got {sorted(sizes)}")
    ok = _valid_rows(*sets.values())
    est = _shear_estimates({k: v[ok] for k, v in sets.items()}, shear)
    n = est.shape[0]
    mean = est.mean(axis=0) if n else np.full(4, np.nan)
    if n_bootstrap > 0 and n > 1:
        rng = rng if rng is not None else np.random.default_rng(0)
        idx = rng.integers(0, n, size=(n_bootstrap, n))
        err = est[idx].mean(axis=1).std(axis=0, ddof=1)
        method = "bootstrap"
    else:
        err = est.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(4, np.nan)
        method = "analytic"
    m1, m2, c1, c2 = (float(v) for v in mean)
    e1, e2, ec1, ec2 = (float(v) for v in err)
    return ShearBias(
        m1, e1, m2, e2, c1, ec1, c2, ec2,
        m=0.5 * (m1 + m2), m_err=0.5 * float(np.hypot(e1, e2)),
        c=0.5 * (c1 + c2), c_err=0.5 * float(np.hypot(ec1, ec2)),
        shear=shear, n_used=n, n_dropped=int((~ok).sum()), error_method=method,
    )  # fmt: skip


def shear_bias_from_images(
    images: Mapping[tuple[float, float], np.ndarray],
    psf_image: np.ndarray,
    pixel_scale_arcsec: float,
    method: str = "ksb",
    n_bootstrap: int = 0,
) -> tuple[ShearBias, dict[str, int]]:
    """Measure shapes on sheared sets of stamps and return the shear bias.

    Args:
        images: {(g1, g2): (N, H, W) electrons} for the five shears (0, 0), (+g, 0), (-g, 0),
            (0, +g), (0, -g) (the (0, 0) set optional); same galaxies and noise, same order.
        psf_image, pixel_scale_arcsec, method: as ``vaedeblend.measure.measure_shapes``.

    Returns:
        the ShearBias and the number of failed measurements per set (key ``"g1,g2"``).
    """
    from vaedeblend.measure import measure_shapes

    shears = [k for k in images if k != (0.0, 0.0)]
    g = max(abs(v) for k in shears for v in k)
    wanted = {"p1": (g, 0.0), "m1": (-g, 0.0), "p2": (0.0, g), "m2": (0.0, -g)}
    missing = [str(v) for v in wanted.values() if v not in images]
    if missing:
        raise ValueError(f"missing sheared sets {missing}; have {sorted(images)}")
    measured, failures = {}, {}
    for key, img in images.items():
        res = measure_shapes(img, psf_image, pixel_scale_arcsec, method=method)
        measured[key] = np.stack([res.g1, res.g2], axis=1)
        failures[f"{key[0]:g},{key[1]:g}"] = res.n_failed
    sets = {name: measured[k] for name, k in wanted.items()}
    result = shear_bias(
        measured.get((0.0, 0.0)), sets["p1"], sets["m1"], sets["p2"], sets["m2"],
        shear=g, n_bootstrap=n_bootstrap,
    )  # fmt: skip
    return result, failures
