"""Galaxy catalog sources: validation, the synthetic relations, COSMOS, CatSim and real images.

Tests reading ``../shared/data`` use the ``shared_data`` fixture (skipped when the folder is
absent, failing under CI=true).
"""

from __future__ import annotations

import shutil

import galsim
import numpy as np
import pytest
from astropy.table import Table
from scipy import stats

from vaedeblend.bands import Band, PSFSpec, load_bandpass
from vaedeblend.catalogs import GalaxyCatalog, load_catalog, validate_table
from vaedeblend.catalogs import synthetic as syn
from vaedeblend.catalogs.compare import QUANTITIES, compare, cosmos_reference, synthetic_reference
from vaedeblend.galaxy import REFERENCE_BANDPASS
from vaedeblend.instruments import make_setup, survey_bands

# An F814W channel: zero point and exposure do not matter for magnitudes (they cancel).
F814W = Band(
    "hst_f814w",
    0.03,
    25.94,
    22.0,
    1.0,
    PSFSpec("gaussian", 0.1),
    "galsim:" + (REFERENCE_BANDPASS.split(":")[1]),
)


@pytest.fixture(scope="module")
def lsst():
    return make_setup("paper", "lsst").bands


@pytest.fixture(scope="module")
def big_synthetic():
    """200,000 galaxies: medians per 0.5-mag bin hold >2,000 galaxies (errors < 3 %)."""
    return syn.draw_synthetic_table(200000, seed=7)


# --------------------------------------------------------------------------- validate_table


def test_validate_table_names_missing_columns():
    with pytest.raises(ValueError, match=r"catsim catalog is missing column\(s\) 'a_d', 'b_d'"):
        validate_table({"a_b": np.ones(3)}, ["a_b", "a_d", "b_d"], "catsim")


def test_validate_table_counts_bad_rows():
    table = {"a_d": np.array([1.0, np.nan, np.nan, np.nan, 2.0]), "z": np.array([0, 1, -1, 2, -3])}
    with pytest.raises(ValueError) as error:
        validate_table(table, ["a_d", "z"], "catsim", nonnegative=["z"])
    message = str(error.value)
    assert "catsim catalog column 'a_d': 3 rows are NaN" in message
    assert "column 'z': 2 rows are < 0" in message


def test_validate_table_vector_columns_and_custom_checks():
    table = {"fit": np.ones((4, 8)), "f": np.array([1.0, 0.0, 0.0, 2.0])}
    table["fit"][2, 5] = np.inf
    with pytest.raises(ValueError) as error:
        validate_table(table, ["fit", "f"], "cosmos", checks=[("zero flux", lambda t: t["f"] == 0)])
    assert "column 'fit': 1 row is infinite" in str(error.value)
    assert "2 rows are non-physical: zero flux" in str(error.value)
    validate_table(table, ["f"], "cosmos", nonnegative=["f"])  # a clean column passes


def test_load_catalog_rejects_unknown_source_and_missing_path():
    with pytest.raises(ValueError, match="unknown catalog source 'hubble'"):
        load_catalog("hubble")
    with pytest.raises(ValueError, match="needs a path"):
        load_catalog("catsim")


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed_and_cut_at_the_limit():
    a = load_catalog("synthetic", seed=3, n=2000, mag_limit_f814w=24.0)
    b = load_catalog("synthetic", seed=3, n=2000, mag_limit_f814w=24.0)
    c = load_catalog("synthetic", seed=4, n=2000, mag_limit_f814w=24.0)
    assert isinstance(a, GalaxyCatalog) and len(a) == 2000 and a.name == "synthetic"
    for key in a.table:
        np.testing.assert_array_equal(a.table[key], b.table[key])
    assert not np.allclose(a.mag_f814w, c.mag_f814w)
    assert a.mag_f814w.max() < 24.0 and a.mag_f814w.min() >= syn.MAG_BRIGHT_F814W
    assert a.galaxy(-1).source_row == 1999
    with pytest.raises(IndexError):
        a.galaxy(2000)


def test_synthetic_galaxy_components_add_up_to_the_catalog_magnitude():
    catalog = load_catalog("synthetic", seed=11, n=300)
    t = catalog.table
    for row in (
        int(np.argmax(0 < t["bulge_fraction"])),
        int(np.argmax(t["bulge_fraction"] == 0)),
        int(np.argmax(t["bulge_fraction"] > 0.5)),
    ):
        galaxy = catalog.galaxy(row)
        # Magnitudes through F814W from the components' SEDs: the split by B/T is exact.
        assert galaxy.magnitudes([F814W])[0] == pytest.approx(t["mag_f814w"][row], abs=1e-4)
        assert galaxy.bulge_fraction == t["bulge_fraction"][row]
        for component in galaxy.components:
            assert component.profile.flux == pytest.approx(1.0)
        templates = {c.template for c in galaxy.components}
        assert templates <= set(syn.DISC_TEMPLATES) | {syn.BULGE_TEMPLATE}
        assert galaxy.extra["hlr_total_arcsec"] == pytest.approx(t["hlr"][row])


def test_synthetic_composite_hlr_matches_galsim():
    """The bisection half-light radius of a bulge + disc equals GalSim's measured one to 0.2 %
    (pixel-centre binning of ``calculateHLR`` gives ~0.05 % at 0.002" pixels)."""
    bulge, disc, bt = 0.15, 0.8, 0.35
    profile = bt * galsim.DeVaucouleurs(half_light_radius=bulge) + (1 - bt) * galsim.Exponential(
        half_light_radius=disc
    )
    image = profile.drawImage(nx=800, ny=800, scale=0.002, method="no_pixel")
    measured = image.calculateHLR(flux=1.0)  # the true total: the stamp truncates the wings
    assert syn.composite_hlr(bt, bulge, disc) == pytest.approx(measured, rel=2e-3)


def test_synthetic_counts_slope_follows_lsst_science_book(big_synthetic):
    """dN/dm ∝ 10^(0.31 m) (LSST Science Book eq. 3.7): fitted slope within 0.01 dex/mag (the
    statistical error of the fit on 200,000 galaxies is ~0.002)."""
    counts, edges = np.histogram(big_synthetic["mag_f814w"], bins=np.arange(17.0, 25.21, 0.4))
    slope = np.polyfit(0.5 * (edges[1:] + edges[:-1]), np.log10(counts), 1)[0]
    assert slope == pytest.approx(syn.COUNTS_SLOPE_DEX_PER_MAG, abs=0.01)


def test_synthetic_redshifts_follow_the_lsst_science_book(big_synthetic):
    """Cumulative mean z of i < 25.2 is 3 z0 with z0 = 0.0417 x 25.2 - 0.744 (eq. 3.8) to 2 %, and
    per magnitude bin the median is that of Gamma(3, z0(m)) (2.674 z0) to 3 %."""
    z, mag = big_synthetic["redshift"], big_synthetic["mag_f814w"]
    assert z.mean() == pytest.approx(3 * (0.0417 * 25.2 - 0.744), rel=0.02)
    for lo in (19.0, 21.0, 23.0, 24.5):
        in_bin = (mag > lo) & (mag < lo + 0.5)
        expected = stats.gamma.median(3.0) * syn.redshift_scale(lo + 0.25)
        assert np.median(z[in_bin]) == pytest.approx(expected, rel=0.03)


def test_synthetic_sizes_follow_miller_relation(big_synthetic):
    """Median major-axis disc scale length hlr_disc / (1.678 sqrt(q)) per magnitude bin equals
    exp(-1.145 - 0.17 - 0.269 (m - 23)) to 3 % (bins hold >2,000 galaxies: error ~1.5 %)."""
    t = big_synthetic
    r_d = t["hlr_disc"] / (syn.EXP_HLR_PER_SCALE_LENGTH * np.sqrt(t["q_disc"]))
    for lo in (19.0, 21.0, 23.0, 24.5):
        in_bin = (t["mag_f814w"] > lo) & (t["mag_f814w"] < lo + 0.5)
        expected = np.exp(-1.145 - 0.17 - 0.269 * (lo + 0.25 - 23.0))
        assert np.median(r_d[in_bin]) == pytest.approx(expected, rel=0.03)
    ln_scatter = np.std(np.log(r_d[(t["mag_f814w"] > 22) & (t["mag_f814w"] < 22.5)]))
    assert ln_scatter == pytest.approx(syn.SIZE_LN_SCATTER, abs=0.02)


def test_synthetic_bulge_sizes_and_morphology_fractions(big_synthetic):
    """Composite bulges: hlr_b / (r_d sqrt(q_b)) has median 0.22 (MacArthur et al. 2003), checked
    on bright galaxies where the 0.05" floor does not bite; morphology fractions to 1 %."""
    t = big_synthetic
    composite = (t["morphology"] == 1) & (t["mag_f814w"] < 20.0)
    r_d = t["hlr_disc"] / (syn.EXP_HLR_PER_SCALE_LENGTH * np.sqrt(t["q_disc"]))
    ratio = t["hlr_bulge"][composite] / (r_d[composite] * np.sqrt(t["q_bulge"][composite]))
    assert np.median(ratio) == pytest.approx(syn.BULGE_HLR_PER_DISC_SCALE, rel=0.05)
    fractions = np.bincount(t["morphology"]) / len(t["morphology"])
    np.testing.assert_allclose(fractions, syn.MORPHOLOGY_FRACTIONS, atol=0.01)
    lo, hi = syn.HLR_RANGE_ARCSEC
    assert t["hlr_disc"].min() >= lo and t["hlr_disc"].max() <= hi


@pytest.mark.parametrize(
    ("key", "pdf"), [("q_disc", syn.disc_ellipticity_pdf), ("q_bulge", syn.bulge_ellipticity_pdf)]
)
def test_synthetic_ellipticities_follow_miller_priors(big_synthetic, key, pdf):
    """|e| = (1-q)/(1+q) of 20,000 draws against the CDF of the Miller et al. (2013) prior:
    KS p > 0.01 (the q >= 0.1 clip touches < 0.1 % of bulges)."""
    e = (1 - big_synthetic[key][:20000]) / (1 + big_synthetic[key][:20000])
    grid = np.linspace(0, 1, 4001)
    density = pdf(grid)
    cdf = np.concatenate([[0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    assert stats.kstest(e, lambda x: np.interp(x, grid, cdf / cdf[-1])).pvalue > 0.01


# --------------------------------------------------------------------------- vs COSMOS


@pytest.fixture(scope="module")
def cosmos_dir(shared_data):
    return shared_data / "cosmos_23.5_example"


def test_synthetic_matches_cosmos_example(cosmos_dir):
    """Synthetic against the 96 COSMOS galaxies of the example (parametric fits).

    The example is called "23.5" but holds only F814W < 22.5 (its faintest is 22.49), so the
    synthetic draw is cut at the example's own limit. Two-sample KS per quantity with p > 0.01
    (with 96 objects KS detects only differences of D > ~0.17; four tests at 1 % give a 4 %
    family-wise false alarm), and medians within 3 bootstrap sigma of COSMOS's.
    """
    reference = cosmos_reference(cosmos_dir)
    limit = np.ceil(reference["mag_f814w"].max() * 10) / 10
    assert limit == pytest.approx(22.5)
    result = compare(reference, synthetic_reference(limit))
    for key in QUANTITIES:
        r = result[key]
        assert r["p_value"] > 0.01, (key, r)
        assert abs(r["median_synthetic"] - r["median_reference"]) < 3 * r["median_reference_error"]


# --------------------------------------------------------------------------- cosmos


@pytest.fixture(scope="module")
def cosmos(cosmos_dir):
    return load_catalog("cosmos", str(cosmos_dir))


def test_cosmos_loads_from_directory_or_file(cosmos, cosmos_dir):
    assert len(cosmos) == 96 and cosmos.name == "cosmos"
    by_file = load_catalog(
        "cosmos", str(cosmos_dir / "real_galaxy_catalog_23.5_example.fits"), mag_limit_f814w=21.0
    )
    assert 0 < len(by_file) < 96 and by_file.mag_f814w.max() < 21.0


def test_cosmos_f814w_ab_magnitude_is_the_catalog_magnitude(cosmos, lsst):
    """AB magnitude through GalSim's F814W of the built galaxy = mag_auto to 1e-3 (0.05 would be
    acceptable; the rescaling makes it exact, 1e-14 reached), for single-Sersic and bulge + disc
    rows; LSST colours equal those of GalSim's own chromatic object (one common rescaling, 1e-6)."""
    reference = load_bandpass(REFERENCE_BANDPASS)
    two_parts = np.flatnonzero(cosmos.params["use_bulgefit"])[:3]
    one_part = np.flatnonzero(~cosmos.params["use_bulgefit"])[:3]
    for row in [*two_parts, *one_part]:
        galaxy = cosmos.galaxy(row)
        assert len(galaxy.components) == (2 if row in two_parts else 1)
        assert galaxy.magnitudes([F814W])[0] == pytest.approx(cosmos.mag_f814w[row], abs=1e-3)
        ours = galaxy.magnitudes(lsst)
        parts = cosmos.chromatic_parts(row)
        theirs = np.array(
            [
                -2.5 * np.log10(sum(p.sed.calculateFlux(b.bandpass) for p in parts))
                + b.bandpass.zeropoint
                for b in lsst
            ]
        )
        np.testing.assert_allclose(np.diff(ours), np.diff(theirs), atol=1e-6)
        # GalSim's raw SEDs are count rates for HST's area with zeropoint 25.94: per cm^2 they
        # are 0.108 mag brighter in AB through GalSim's F814W throughput (see cosmos.py).
        raw = (
            -2.5
            * np.log10(
                sum(p.sed.calculateFlux(reference) for p in parts)
                / galsim.COSMOSCatalog.hst_eff_area
            )
            + reference.zeropoint
        )
        assert raw - cosmos.mag_f814w[row] == pytest.approx(-0.108, abs=0.005)


def test_cosmos_galaxy_parameters_come_from_the_fits(cosmos):
    records = cosmos._galsim.param_cat[cosmos._galsim.orig_index]
    single = int(np.flatnonzero(~cosmos.params["use_bulgefit"])[0])
    galaxy = cosmos.galaxy(single)
    assert galaxy.hlr_arcsec == pytest.approx(records["hlr"][single, 0])
    assert galaxy.q == pytest.approx(records["sersicfit"][single, 3])
    assert galaxy.sersic_n == pytest.approx(np.clip(records["sersicfit"][single, 2], 0.3, 6))
    assert galaxy.redshift == pytest.approx(records["zphot"][single])
    assert galaxy.components[0].profile.flux == pytest.approx(1.0)
    double = int(np.flatnonzero(cosmos.params["use_bulgefit"])[0])
    galaxy = cosmos.galaxy(double)
    flux = records["flux"][double]
    assert galaxy.bulge_fraction == pytest.approx(flux[1] / (flux[1] + flux[2]))
    bulge_mag = galaxy.components[0].magnitude(F814W)  # GalSim builds bulge + disc, in that order
    assert bulge_mag == pytest.approx(
        cosmos.mag_f814w[double] - 2.5 * np.log10(galaxy.bulge_fraction), abs=1e-3
    )


def test_cosmos_validation_counts_bad_rows(cosmos_dir, tmp_path):
    for f in cosmos_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    fits_file = tmp_path / "real_galaxy_catalog_23.5_example_fits.fits"
    table = Table.read(fits_file)
    table["zphot"][[0, 2]] = np.nan
    table.write(fits_file, overwrite=True)
    with pytest.raises(ValueError, match="cosmos catalog column 'zphot': 2 rows are NaN"):
        load_catalog("cosmos", str(tmp_path))


# --------------------------------------------------------------------------- catsim


@pytest.fixture(scope="module")
def catsim_file(shared_data):
    return shared_data / "catsim_sample" / "sample_input_catalog.fits"


@pytest.fixture(scope="module")
def catsim(catsim_file):
    return load_catalog("catsim", str(catsim_file), mag_limit_f814w=99.0)


def test_catsim_reproduces_lsst_magnitudes(catsim, lsst):
    """r is the normalisation: reproduced to 0.02 mag through the renderer's path for every row
    (2e-5 reached). Colours: CWW templates and their mixes leave a median RMS colour residual of
    0.15 mag (0.07 at z < 1); we require < 0.2 and < 0.1, and u, the worst band, < 0.4 median."""
    r = [b.band_id for b in lsst].index("lsst_r")
    for row in range(0, len(catsim), 7):
        magnitudes = catsim.galaxy(row).magnitudes(lsst)
        assert magnitudes[r] == pytest.approx(catsim.table["r_ab"][row], abs=0.02)
        # Mixed SEDs are integrated, the fit used tabulated colours: they agree to 4e-4.
        np.testing.assert_allclose(magnitudes, catsim.fit.model_mags[row], atol=2e-3)
    assert np.median(catsim.fit.rms_colour_residual) < 0.2
    low_z = np.asarray(catsim.table["redshift"]) < 1
    assert np.median(catsim.fit.rms_colour_residual[low_z]) < 0.1
    assert np.median(np.abs(catsim.fit.residuals), axis=0).max() < 0.4


def test_catsim_shapes_and_flux_split(catsim):
    t = catsim.table
    row = int(np.flatnonzero(np.asarray(t["fluxnorm_bulge"]) > 0)[0])
    galaxy = catsim.galaxy(row)
    bt = t["fluxnorm_bulge"][row] / (t["fluxnorm_bulge"][row] + t["fluxnorm_disk"][row])
    assert galaxy.bulge_fraction == pytest.approx(bt)
    assert len(galaxy.components) == 2
    disc, bulge = galaxy.components
    f_disc, f_bulge = (10 ** (-0.4 * c.magnitude(F814W)) for c in (disc, bulge))
    assert f_bulge / (f_disc + f_bulge) == pytest.approx(bt, rel=1e-6)
    dominant = "b" if bt >= 0.5 else "d"
    a, b = t[f"a_{dominant}"][row], t[f"b_{dominant}"][row]
    assert galaxy.hlr_arcsec == pytest.approx(np.sqrt(a * b))
    assert galaxy.q == pytest.approx(b / a)
    # The disc's half-light ellipse has semi-axes a_d and b_d: GalSim's shear preserves area, so a
    # round profile of hlr sqrt(a b) is stretched by 1/sqrt(q) and sqrt(q) along its axes.
    stretch = np.linalg.svd(disc.profile.jac, compute_uv=False)
    semi_axes = disc.profile.original.half_light_radius * stretch
    np.testing.assert_allclose(semi_axes, [t["a_d"][row], t["b_d"][row]], rtol=1e-6)


def test_catsim_magnitude_cut_uses_fitted_f814w(catsim_file):
    cut = load_catalog("catsim", str(catsim_file))  # default F814W < 25.2
    assert 0 < len(cut) < 100 and cut.mag_f814w.max() < 25.2


def test_catsim_validation_counts_bad_rows(catsim_file, tmp_path):
    table = Table.read(catsim_file)
    table["a_d"][[1, 2, 3]] = np.nan
    table["fluxnorm_disk"][4] = 0.0
    table["fluxnorm_bulge"][4] = 0.0
    bad = tmp_path / "bad.fits"
    table.write(bad)
    with pytest.raises(ValueError) as error:
        load_catalog("catsim", str(bad))
    assert "catsim catalog column 'a_d': 3 rows are NaN" in str(error.value)
    assert "1 row is non-physical: fluxnorm_bulge + fluxnorm_disk is 0" in str(error.value)
    table.remove_column("b_d")
    table.write(bad, overwrite=True)
    with pytest.raises(ValueError, match="missing column\\(s\\) 'b_d'"):
        load_catalog("catsim", str(bad))


# --------------------------------------------------------------------------- real


@pytest.fixture(scope="module")
def real(shared_data):
    return load_catalog("real", str(shared_data / "cosmos_real_26_dev"))


def test_real_catalog_magnitudes_and_sed_fit(real):
    """F814W AB = catalog MAG (the image's band, 1e-3); HSC colours fitted to a median RMS of
    0.07 mag (required < 0.15); the HSC-i normalisation differs from HST F814W by a median 0.13
    mag (apertures differ), which we keep below 0.3."""
    hsc = survey_bands("hsc")
    assert len(real) == 50
    for row in (0, 17, 42):
        galaxy = real.galaxy(row)
        assert galaxy.magnitudes([F814W])[0] == pytest.approx(real.mag_f814w[row], abs=1e-3)
        expected = real.fit.model_mags[row] + real.f814w_offset[row]
        np.testing.assert_allclose(galaxy.magnitudes(hsc), expected, atol=2e-3)
    assert np.median(real.fit.rms_colour_residual) < 0.15
    assert abs(np.median(real.f814w_offset)) < 0.3


def test_real_galaxy_profile_draws(real, lsst):
    galaxy = real.galaxy(3)
    assert np.isnan(galaxy.sersic_n) and np.isnan(galaxy.bulge_fraction)
    assert 0 < galaxy.q <= 1 and galaxy.hlr_arcsec > 0
    profile = galaxy.components[0].profile
    psf = galsim.Kolmogorov(fwhm=0.65)
    image = galsim.Convolve(profile, psf).drawImage(nx=64, ny=64, scale=0.2)
    # Unit flux: almost all of it lands in a 12.8" stamp (HST noise in the stamp adds a little).
    assert image.array.sum() == pytest.approx(1.0, abs=0.05)
