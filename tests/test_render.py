"""The renderer against GalSim's own chromatic drawing, and the physics of the stamps."""

import galsim
import numpy as np
import pytest

from vaedeblend.galaxy import Component, Galaxy
from vaedeblend.instruments import make_setup
from vaedeblend.measure import blendedness
from vaedeblend.simulation.noise import add_noise
from vaedeblend.simulation.render import Placement, StampRenderer


def bulge_disk(mag=22.0, redshift=0.7, disk_hlr=0.6, q=0.4):
    """A galaxy with a red bulge and a blue disk: its colour changes with radius."""
    disk = galsim.Exponential(half_light_radius=disk_hlr).shear(q=q, beta=20 * galsim.degrees)
    bulge = galsim.DeVaucouleurs(half_light_radius=0.25)
    return Galaxy(
        [
            Component(disk, mag + 0.3, "CWW_Scd_ext", redshift),
            Component(bulge, mag + 1.2, "CWW_E_ext", redshift),
        ],
        redshift=redshift,
        hlr_arcsec=disk_hlr,
        q=q,
        beta_deg=20,
        sersic_n=1,
        bulge_fraction=0.3,
    )


@pytest.fixture(scope="module")
def setup():
    return make_setup("paper", "lsst+euclid")


def test_fast_drawing_matches_galsim_chromatic_drawing(setup):
    galaxy = bulge_disk()
    placement = Placement(0.23, -0.11, 35.0)
    fast = StampRenderer(setup).draw(galaxy, placement)
    chromatic = galaxy.chromatic().rotate(35.0 * galsim.degrees)
    for ch, band in enumerate(setup.bands):
        scale = band.pixel_scale_arcsec
        reference = (
            galsim.Convolve(chromatic, band.psf.build())
            .drawImage(
                band.bandpass, nx=64, ny=64, scale=scale, offset=(0.23 / scale, -0.11 / scale)
            )
            .array
        )
        # GalSim draws photons/cm^2/s; our electrons use the band's AB zero point. The two differ
        # by one number per band, the same for both components: fix it with the disk's SED.
        sed = galaxy.components[0].galsim_sed()
        electrons_per_unit = band.mag_to_electrons(sed.calculateMagnitude(band.bandpass)) / (
            sed.calculateFlux(band.bandpass)
        )
        difference = np.abs(fast[ch] - reference * electrons_per_unit).sum()
        # the requirement: the fast path agrees to better than 1e-3 of the flux per band
        assert difference < 1e-3 * fast[ch].sum(), band.band_id


def test_flux_in_stamp_matches_catalog_within_psf_truncation(setup):
    galaxy = bulge_disk(disk_hlr=0.4)
    renderer = StampRenderer(setup)
    image = renderer.draw(galaxy, Placement())
    expected = renderer.electrons(galaxy).sum(axis=0)
    # light outside the stamp: the VIS stamp is only 6.4" wide and the 0.4" disk plus Moffat
    # wings lose ~1 %; LSST (12.8") and NISP (19.2") lose less. 2 % bounds both.
    np.testing.assert_allclose(image.sum(axis=(1, 2)), expected, rtol=0.02)
    assert np.all(image.sum(axis=(1, 2)) <= expected * 1.0005)


def test_vis_is_sharper_than_lsst_r(setup):
    """Same galaxy: the VIS stamp concentrates more of its light within 0.3 arcsec."""
    renderer = StampRenderer(setup)
    image = renderer.draw(bulge_disk(disk_hlr=0.3), Placement())

    def fraction_within(ch, radius_arcsec=0.3):
        scale = setup.bands[ch].pixel_scale_arcsec
        y, x = np.indices(image[ch].shape) - 31.5
        inside = np.hypot(x, y) * scale < radius_arcsec
        return image[ch][inside].sum() / image[ch].sum()

    vis, r = setup.index("euclid_vis"), setup.index("lsst_r")
    assert fraction_within(vis) > 1.5 * fraction_within(r)


def test_noise_variance_is_sky_plus_signal(setup):
    renderer = StampRenderer(setup)
    image = renderer.draw(bulge_disk(mag=19.0), Placement())
    sky = np.array([b.sky_level_electrons for b in setup.bands])
    draws = np.stack([add_noise(image, sky, seed, "poisson") for seed in range(200)])
    variance = draws.var(axis=0)
    expected = image + sky[:, None, None]
    # the ratio of a 200-draw sample variance to the truth has relative error sqrt(2/199) = 0.10
    # per pixel; averaged over the 64 brightest pixels of each band it must be within 5 %.
    for ch in range(setup.n_channels):
        bright = np.argsort(image[ch].ravel())[-64:]
        ratio = variance[ch].ravel()[bright] / expected[ch].ravel()[bright]
        assert abs(ratio.mean() - 1) < 0.05, setup.band_ids[ch]
    # and the mean is the noiseless image (sky subtracted): within 4 sigma of the mean of 200
    err = np.sqrt(expected / 200)
    assert np.all(np.abs(draws.mean(axis=0) - image) < 5 * err)


def test_blendedness_zero_alone_and_rises_as_neighbour_approaches(setup):
    renderer = StampRenderer(setup)
    ref = setup.index("lsst_r")
    target = renderer.draw(bulge_disk(), Placement())[ref]
    assert blendedness(target, np.zeros_like(target)) == 0.0
    values = [
        blendedness(target, renderer.draw(bulge_disk(), Placement(d, 0.0))[ref])
        for d in (3.0, 2.0, 1.2, 0.6)
    ]
    assert np.all(np.diff(values) > 0), values
    assert 0 < values[0] < values[-1] < 1
