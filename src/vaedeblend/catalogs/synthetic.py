"""A COSMOS-like synthetic galaxy catalog drawn from published relations (offline default).

Every galaxy is drawn independently; the whole catalog is a deterministic function of
``(seed, n, mag_limit_f814w, mag_bright_f814w)`` through ``numpy.random.default_rng(seed)``.
Training and test sets are made from different seeds.

Relations (see ``docs/catalogs.md`` for the comparison with the COSMOS example):

1. **Number counts** ``dN/dm ∝ 10^(0.31 m)`` in F814W between ``mag_bright_f814w`` and
   ``mag_limit_f814w``: LSST Science Book (LSST Science Collaboration 2009, arXiv:0912.0201,
   eq. 3.7, ``N(<i) = 46 x 10^(0.31 (i - 25)) arcmin^-2``); the bright COSMOS example agrees
   (``docs/catalogs.md``). We take i ≈ F814W (the two filters nearly coincide).
2. **Redshift given magnitude**: ``p(z|m) ∝ z^2 exp(-z / z0(m))`` (a Gamma(3) law). The LSST
   Science Book (eq. 3.8) gives the *cumulative* sample ``i < i_lim`` as that law with
   ``z0 = 0.0417 i_lim - 0.744``. For counts ``∝ exp(k m)`` (``k = 0.31 ln 10``) a linear
   differential ``z0(m) = a m + b`` has cumulative mean ``3 [a (i_lim - 1/k) + b]``, so the
   differential law that reproduces the book's mean is ``z0(m) = 0.0417 m - 0.744 + 0.0417 / k``.
3. **Disc size**: median major-axis exponential scale length
   ``ln(r_d / arcsec) = -1.145 - 0.269 (i - 23)``, the CFHTLenS size prior (Miller et al. 2013,
   MNRAS 429, 2858, Sec. 6.3; fitted there on HST disc galaxies), with two changes, both
   measured and documented in ``docs/catalogs.md``:
   (a) an offset of -0.17 in ln (sizes x 0.84): the 51 disc-like (Sersic n < 1.5) galaxies of the
   COSMOS F814W < 22.5 example lie 0.17 ± 0.08 below the relation, at the same slope (-0.29 fitted);
   this one number was set on the data the tests compare with; ``cosmos_offset=False`` removes it.
   (b) a log-normal scatter of 0.45 in ln r (instead of Miller's broader ``r exp(-(r/a)^(4/3))``
   law, whose 0.73 ln-scatter is far wider than the 0.46 seen in COSMOS): van der Wel et al. (2014,
   ApJ 788, 28) find 0.16-0.19 dex (0.37-0.44 in ln) intrinsic scatter at fixed mass for
   late types; mixing redshifts at fixed apparent magnitude widens it, so we take 0.45.
   The disc half-light radius is ``hlr = 1.678 r_d sqrt(q)``: 1.678 for an exponential, and
   ``sqrt(q)`` because GalSim's hlr of a sheared profile is the area-equivalent radius.
4. **Bulge size**: ``hlr_bulge = 0.22 r_d sqrt(q_bulge)`` (log-normal scatter 0.3 in ln): bulge
   effective radius over disc scale length ``<r_e/h> = 0.22 ± 0.09`` (MacArthur, Courteau &
   Holtzman 2003, ApJ 582, 689; Graham & Worley 2008, MNRAS 388, 1708 find similar ratios).
   Bulge-dominated galaxies are more compact than discs of the same luminosity (Shen et al. 2003,
   MNRAS 343, 978): their bulge hlr is ``0.6 x 1.678 r_d sqrt(q_bulge)``, 0.6 being our round
   choice (not fitted).
5. **Ellipticity** ``|e| = (1 - q) / (1 + q)``: the CFHTLenS priors (Miller et al. 2013, disc
   and bulge galaxies): disc ``p(e) ∝ e [1 - exp((e - 0.804) / 0.2539)] /
   [(1 + e) sqrt(e^2 + 0.0256^2)]`` (zero above 0.804);
   bulge ``p(e) ∝ e exp(-2.368 e - 6.691 e^2)``.
6. **Morphology** (our choice, close to the 96-galaxy COSMOS example, where 64 % are single-Sersic
   fits with median n = 1.4, 15 % bulge+disc with B/T < 0.5 and 22 % with B/T > 0.5):
   60 % pure exponential discs (n = 1), 20 % disc-dominated composites (B/T uniform in
   0.05-0.5), 20 % bulge-dominated (B/T uniform in 0.5-1). Bulges are de Vaucouleurs (n = 4).
7. **SEDs**: CWW templates (Coleman, Wu & Weedman 1980, extended by Bolzonella et al. 2000) at the
   galaxy's redshift, as in Arcelin et al. (2021): bulge ``CWW_E_ext``; disc ``CWW_Sbc_ext``,
   ``CWW_Scd_ext`` or ``CWW_Im_ext`` with probabilities depending on the morphology (our choice:
   later types for pure discs). Bulge and disc have their own SED (a colour gradient).
8. Position angle uniform in [0, 180) deg; bulge and disc share it.

Clipping (why): stamps are 64 LSST pixels (12.8"); every component's hlr is clipped to
0.05"-3.0" (larger galaxies do not fit; smaller are unresolved by every instrument here: the
floor holds the bulges of faint galaxies, 37 % of all bulges at F814W < 25.2), axis ratios to
0.1-1, redshifts to 0.01-6 (the range of the colour tables in ``vaedeblend.galaxy``).
"""

from __future__ import annotations

import galsim
import numpy as np
from scipy.special import gammainc

from vaedeblend.cache import array_digest, disk_cached
from vaedeblend.catalogs.base import GalaxyCatalog, validate_table
from vaedeblend.galaxy import Component, Galaxy

COUNTS_SLOPE_DEX_PER_MAG = 0.31  # LSST Science Book eq. 3.7
Z0_SLOPE, Z0_INTERCEPT = 0.0417, -0.744  # LSST Science Book eq. 3.8
SIZE_LN_INTERCEPT, SIZE_SLOPE, SIZE_PIVOT_MAG = -1.145, -0.269, 23.0  # Miller et al. 2013
SIZE_LN_COSMOS_OFFSET = -0.17  # set on the COSMOS example's disc-like galaxies (docstring)
SIZE_LN_SCATTER = 0.45  # van der Wel et al. 2014, upper end (docstring)
EXP_HLR_PER_SCALE_LENGTH = 1.678  # hlr / scale length of an exponential profile
BULGE_HLR_PER_DISC_SCALE = 0.22  # MacArthur et al. 2003
BULGE_SIZE_LN_SCATTER = 0.3
SPHEROID_SIZE_FACTOR = 0.6  # early types smaller than discs at fixed magnitude (Shen et al. 2003)
DISC_E_MAX, DISC_E_A, DISC_E_0 = 0.804, 0.2539, 0.0256  # Miller et al. 2013 disc prior
BULGE_E_B, BULGE_E_C = 2.368, 6.691  # Miller et al. 2013 bulge prior

MORPHOLOGIES = ("disc", "composite", "spheroid")
MORPHOLOGY_FRACTIONS = (0.6, 0.2, 0.2)
BULGE_FRACTION_RANGES = {"disc": (0.0, 0.0), "composite": (0.05, 0.5), "spheroid": (0.5, 1.0)}
DISC_TEMPLATES = ("CWW_Sbc_ext", "CWW_Scd_ext", "CWW_Im_ext")
DISC_TEMPLATE_PROBS = {
    "disc": (0.25, 0.45, 0.30),
    "composite": (0.6, 0.4, 0.0),
    "spheroid": (1.0, 0.0, 0.0),
}
BULGE_TEMPLATE = "CWW_E_ext"

HLR_RANGE_ARCSEC = (0.05, 3.0)
Q_RANGE = (0.1, 1.0)
Z_RANGE = (0.01, 6.0)
MAG_BRIGHT_F814W = 17.0
SERSIC_B = {1.0: 1.678347, 4.0: 7.669249}  # b_n: half the light inside r_e for Sersic index n


def sample_magnitudes(rng, n: int, bright: float, faint: float) -> np.ndarray:
    """F814W AB magnitudes with dN/dm ∝ 10^(0.31 m) between ``bright`` and ``faint``."""
    alpha = COUNTS_SLOPE_DEX_PER_MAG
    u = rng.uniform(size=n)
    return bright + np.log10(1.0 + u * (10.0 ** (alpha * (faint - bright)) - 1.0)) / alpha


def redshift_scale(mag: np.ndarray) -> np.ndarray:
    """Differential z0(m) of p(z|m) ∝ z^2 exp(-z/z0) that reproduces the LSST Science Book's
    cumulative z0 = 0.0417 i_lim - 0.744 (see module docstring). Floored at 0.02."""
    k = COUNTS_SLOPE_DEX_PER_MAG * np.log(10.0)
    return np.maximum(Z0_SLOPE * np.asarray(mag) + Z0_INTERCEPT + Z0_SLOPE / k, 0.02)


def sample_redshifts(rng, mag: np.ndarray) -> np.ndarray:
    """Redshifts from the Gamma(3, z0(m)) law, clipped to 0.01-6."""
    return np.clip(rng.gamma(3.0, redshift_scale(mag)), *Z_RANGE)


def median_disc_scale_length(mag: np.ndarray, cosmos_offset: bool = True) -> np.ndarray:
    """Median major-axis exponential scale length (arcsec) at F814W ≈ i magnitude ``mag``.

    Miller et al. (2013) relation, times exp(-0.17) when ``cosmos_offset`` (see module docstring).
    """
    offset = SIZE_LN_COSMOS_OFFSET if cosmos_offset else 0.0
    return np.exp(SIZE_LN_INTERCEPT + offset + SIZE_SLOPE * (np.asarray(mag) - SIZE_PIVOT_MAG))


def sample_disc_scale_lengths(rng, mag: np.ndarray) -> np.ndarray:
    """Major-axis disc scale lengths (arcsec): log-normal around the median relation."""
    scatter = SIZE_LN_SCATTER * rng.standard_normal(len(mag))
    return median_disc_scale_length(mag) * np.exp(scatter)


def disc_ellipticity_pdf(e: np.ndarray) -> np.ndarray:
    """Unnormalised Miller et al. (2013) disc prior on |e|; zero above e_max = 0.804."""
    e = np.asarray(e, dtype=float)
    pdf = e * (1 - np.exp((e - DISC_E_MAX) / DISC_E_A)) / ((1 + e) * np.sqrt(e**2 + DISC_E_0**2))
    return np.where((e >= 0) & (e < DISC_E_MAX), pdf, 0.0)


def bulge_ellipticity_pdf(e: np.ndarray) -> np.ndarray:
    """Unnormalised Miller et al. (2013) bulge prior on |e|."""
    e = np.asarray(e, dtype=float)
    return np.where((e >= 0) & (e < 1), e * np.exp(-BULGE_E_B * e - BULGE_E_C * e**2), 0.0)


def sample_from_pdf(rng, pdf, n: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Inverse-CDF sampling of a 1-d density tabulated on 4001 points (error < 1e-3 in |e|)."""
    grid = np.linspace(lo, hi, 4001)
    density = pdf(grid)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    return np.interp(rng.uniform(size=n) * cdf[-1], cdf, grid)


def axis_ratio(e: np.ndarray) -> np.ndarray:
    """q = b/a from |e| = (1 - q)/(1 + q), clipped to 0.1-1."""
    return np.clip((1 - e) / (1 + e), *Q_RANGE)


def sersic_enclosed_fraction(r: np.ndarray, hlr: np.ndarray, n: float) -> np.ndarray:
    """Fraction of a circular Sersic profile's light inside radius ``r`` (same units as hlr)."""
    return gammainc(2 * n, SERSIC_B[n] * (np.asarray(r) / np.asarray(hlr)) ** (1.0 / n))


def composite_hlr(bulge_fraction, hlr_bulge, hlr_disc, iterations: int = 60) -> np.ndarray:
    """Half-light radius (arcsec) of a bulge (n=4) + disc (n=1) sum, both circularised.

    Bisection on the enclosed flux; exact for pure discs or pure bulges. Sheared components
    keep their area, so this is the area-equivalent radius GalSim reports for round profiles.
    """
    bt = np.asarray(bulge_fraction, dtype=float)
    lo = np.minimum(hlr_bulge, hlr_disc)
    hi = np.maximum(hlr_bulge, hlr_disc)
    for _ in range(iterations):  # the answer lies between the two component radii
        mid = 0.5 * (lo + hi)
        frac = bt * sersic_enclosed_fraction(mid, hlr_bulge, 4.0) + (1 - bt) * (
            sersic_enclosed_fraction(mid, hlr_disc, 1.0)
        )
        below = frac < 0.5
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _cached_composite_hlr(bulge_fraction, hlr_bulge, hlr_disc) -> np.ndarray:
    """:func:`composite_hlr`, from the disk cache when these inputs were seen before (its
    bisection takes about 2 s for 100,000 rows, in every new process)."""
    key = ("composite_hlr", 60, array_digest(bulge_fraction, hlr_bulge, hlr_disc))
    return disk_cached(key, lambda: composite_hlr(bulge_fraction, hlr_bulge, hlr_disc))


def _choice(rng, options, probs_per_row) -> np.ndarray:
    """Index into ``options`` drawn per row with row-dependent probabilities."""
    cumulative = np.cumsum(probs_per_row, axis=1)
    u = rng.uniform(size=(len(cumulative), 1))
    return np.minimum((u > cumulative).sum(axis=1), len(options) - 1)


def draw_synthetic_table(
    n: int,
    seed: int = 0,
    mag_limit_f814w: float = 25.2,
    mag_bright_f814w: float = MAG_BRIGHT_F814W,
) -> dict[str, np.ndarray]:
    """All galaxy parameters as a dict of arrays (one row per galaxy); see the module docstring.

    Columns: ``mag_f814w`` (AB), ``redshift``, ``morphology`` (index into ``MORPHOLOGIES``),
    ``bulge_fraction`` (F814W flux fraction), ``hlr_disc``, ``hlr_bulge``, ``hlr`` (whole galaxy;
    arcsec), ``q_disc``, ``q_bulge``, ``beta_deg``, ``disc_template`` (index into
    ``DISC_TEMPLATES``).
    """
    if not mag_bright_f814w < mag_limit_f814w:
        raise ValueError(f"mag_bright_f814w={mag_bright_f814w} must be < {mag_limit_f814w=}")
    rng = np.random.default_rng(seed)
    mag = sample_magnitudes(rng, n, mag_bright_f814w, mag_limit_f814w)
    redshift = sample_redshifts(rng, mag)
    morphology = rng.choice(len(MORPHOLOGIES), size=n, p=MORPHOLOGY_FRACTIONS)
    bounds = np.array([BULGE_FRACTION_RANGES[m] for m in MORPHOLOGIES])[morphology]
    bulge_fraction = rng.uniform(bounds[:, 0], bounds[:, 1])
    q_disc = axis_ratio(sample_from_pdf(rng, disc_ellipticity_pdf, n))
    q_bulge = axis_ratio(sample_from_pdf(rng, bulge_ellipticity_pdf, n))
    # Lensfit scale lengths are major-axis lengths; GalSim's hlr of a sheared profile is the
    # area-equivalent (circularised) radius, hence the sqrt(q).
    scale_length = sample_disc_scale_lengths(rng, mag)
    hlr_disc = EXP_HLR_PER_SCALE_LENGTH * scale_length * np.sqrt(q_disc)
    ratio = BULGE_HLR_PER_DISC_SCALE * np.exp(BULGE_SIZE_LN_SCATTER * rng.standard_normal(n))
    spheroid = morphology == MORPHOLOGIES.index("spheroid")
    ratio = np.where(spheroid, SPHEROID_SIZE_FACTOR * EXP_HLR_PER_SCALE_LENGTH, ratio)
    hlr_bulge = np.clip(ratio * scale_length * np.sqrt(q_bulge), *HLR_RANGE_ARCSEC)
    hlr_disc = np.clip(hlr_disc, *HLR_RANGE_ARCSEC)
    probs = np.array([DISC_TEMPLATE_PROBS[m] for m in MORPHOLOGIES])[morphology]
    table = {
        "mag_f814w": mag,
        "redshift": redshift,
        "morphology": morphology,
        "bulge_fraction": bulge_fraction,
        "hlr_disc": hlr_disc,
        "hlr_bulge": hlr_bulge,
        "hlr": _cached_composite_hlr(bulge_fraction, hlr_bulge, hlr_disc),
        "q_disc": q_disc,
        "q_bulge": q_bulge,
        "beta_deg": rng.uniform(0.0, 180.0, size=n),
        "disc_template": _choice(rng, DISC_TEMPLATES, probs),
    }
    return table


class SyntheticCatalog(GalaxyCatalog):
    """COSMOS-like bulge + disc galaxies from published relations, cut at F814W < mag limit.

    Args:
        n: number of galaxies.
        seed: seed of ``numpy.random.default_rng``; the catalog is a deterministic function of
            the arguments.
        mag_limit_f814w: faint limit, F814W AB mag (COSMOS 25.2 sample: 25.2).
        mag_bright_f814w: bright limit, F814W AB mag.
    """

    name = "synthetic"

    def __init__(
        self,
        n: int = 100000,
        seed: int = 0,
        mag_limit_f814w: float = 25.2,
        mag_bright_f814w: float = MAG_BRIGHT_F814W,
    ):
        if n < 1:
            raise ValueError(f"a synthetic catalog needs n >= 1 galaxies, got {n}")
        self.seed = int(seed)
        self.mag_limit_f814w = float(mag_limit_f814w)
        self.mag_bright_f814w = float(mag_bright_f814w)
        self.table = draw_synthetic_table(n, seed, mag_limit_f814w, mag_bright_f814w)
        validate_table(
            self.table,
            list(self.table),
            self.name,
            positive=("hlr_disc", "hlr_bulge", "hlr", "q_disc", "q_bulge", "redshift"),
            nonnegative=("bulge_fraction",),
        )
        self.mag_f814w = self.table["mag_f814w"]

    def describe(self) -> dict:
        return {
            **super().describe(),
            "seed": self.seed,
            "mag_limit_f814w": self.mag_limit_f814w,
            "mag_bright_f814w": self.mag_bright_f814w,
        }

    def _make_galaxy(self, row: int) -> Galaxy:
        t = {k: v[row] for k, v in self.table.items()}
        beta = float(t["beta_deg"]) * galsim.degrees
        z, mag, bt = float(t["redshift"]), float(t["mag_f814w"]), float(t["bulge_fraction"])
        components = []
        if bt < 1.0:  # disc
            disc = galsim.Exponential(half_light_radius=float(t["hlr_disc"]))
            disc = disc.shear(q=float(t["q_disc"]), beta=beta)
            template = DISC_TEMPLATES[int(t["disc_template"])]
            components.append(Component(disc, float(mag - 2.5 * np.log10(1 - bt)), template, z))
        if bt > 0.0:  # bulge
            bulge = galsim.DeVaucouleurs(half_light_radius=float(t["hlr_bulge"]))
            bulge = bulge.shear(q=float(t["q_bulge"]), beta=beta)
            components.append(Component(bulge, float(mag - 2.5 * np.log10(bt)), BULGE_TEMPLATE, z))
        bulge_dominated = bt >= 0.5
        part = "bulge" if bulge_dominated else "disc"
        return Galaxy(
            components=components,
            redshift=z,
            hlr_arcsec=float(t[f"hlr_{part}"]),
            q=float(t[f"q_{part}"]),
            beta_deg=float(t["beta_deg"]),
            sersic_n=4.0 if bulge_dominated else 1.0,
            bulge_fraction=bt,
            source_row=row,
            extra={
                "hlr_total_arcsec": float(t["hlr"]),
                "morphology": MORPHOLOGIES[int(t["morphology"])],
            },
        )
