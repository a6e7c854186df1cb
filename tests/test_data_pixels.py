"""The central galaxy's pixels from the data (``RefineSettings.pixels_from_data``,
:func:`vaedeblend.refinement.data_pixels.combine_with_data`): bright pixels follow the data,
faint ones keep the model, neighbours keep their light, fluxes are kept."""

from __future__ import annotations

import galsim
import numpy as np
import pytest
import torch

from vaedeblend import load_pretrained
from vaedeblend.refinement import RefineSettings, refined
from vaedeblend.refinement.data_pixels import combine_with_data

SKY = 2000.0  # electrons per pixel, about LSST r's per-visit-stack level in these tests' units
SCALE = 0.2  # arcsec per pixel


def _galaxy(flux: float, e1: float = 0.0, x_arcsec: float = 0.0) -> np.ndarray:
    """(64, 64) electrons: an exponential disc (half-light radius 0.6") sheared by ``e1``,
    convolved with a 0.7" Moffat PSF, ``x_arcsec`` right of the stamp centre."""
    disc = galsim.Exponential(half_light_radius=0.6, flux=flux).shear(g1=e1, g2=0.0)
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    image = galsim.Convolve(disc, psf).shift(x_arcsec, 0.0)
    return image.drawImage(nx=64, ny=64, scale=SCALE).array.astype(np.float64)


def _combine(data, central, total, model_error=0.1) -> np.ndarray:
    as_tensor = lambda a: torch.as_tensor(np.asarray(a, np.float64)[None, None])  # noqa: E731
    sky = torch.tensor(SKY, dtype=torch.float64)
    out = combine_with_data(as_tensor(data), as_tensor(central), as_tensor(total), sky,
                            model_error)  # fmt: skip
    return out[0, 0].numpy()


def _e1(image: np.ndarray) -> float:
    return galsim.hsm.FindAdaptiveMom(galsim.Image(image, scale=SCALE)).observed_shape.e1


def _noisy(image: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return image + rng.standard_normal(image.shape) * np.sqrt(SKY + image)


def test_a_bright_galaxy_takes_its_shape_from_the_data():
    """A bright galaxy (S/N about 800) sheared by g1 0.2 (observed e1 0.24) that the model draws
    round: the data outweigh the 10 % model error over the core, so the output's observed e1
    moves most of the way to the truth's. Measured: output e1 0.018-0.023 below the truth's
    (the model: 0.24) over 5 noise draws. Limit: within a quarter of the model's error, every
    draw; the flux is the model's to float rounding."""
    truth, model = _galaxy(1e6, e1=0.2), _galaxy(1e6)
    target_e1, model_error = _e1(truth), abs(_e1(model) - _e1(truth))
    for seed in range(5):
        out = _combine(_noisy(truth, seed), model, model)
        assert abs(_e1(out) - target_e1) < 0.25 * model_error, (_e1(out), target_e1)
        assert out.sum() == pytest.approx(model.sum(), rel=1e-9)


def test_a_faint_galaxy_keeps_its_model():
    """At S/N about 4 the model's variance (10 % of a peak of 32 electrons, squared) is a
    five-hundredth of the sky's: the output is the model to within a hundredth of the noise's
    sigma per pixel (measured: 0.0065), not a noisy copy of the data."""
    truth = _galaxy(2000.0, e1=0.2)
    model = _galaxy(2000.0)
    out = _combine(_noisy(truth, 0), model, model)
    assert np.max(np.abs(out - model)) < 0.01 * np.sqrt(SKY)


def test_a_neighbours_light_stays_with_the_neighbour():
    """Central and neighbour both bright, 2" apart, each model exact: the share of each pixel
    follows the models, so the output's light near the neighbour is the central's own
    (noiseless data: the output is the central galaxy to float rounding)."""
    central, neighbour = _galaxy(1e6), _galaxy(1e6, x_arcsec=2.0)
    out = _combine(central + neighbour, central, central + neighbour)
    np.testing.assert_allclose(out, central, atol=1e-6 * central.max())


def test_a_band_with_no_model_flux_keeps_its_model_and_errors_are_refused():
    empty = np.zeros((64, 64))
    out = _combine(_noisy(empty, 1), empty, empty)
    np.testing.assert_array_equal(out, empty)
    with pytest.raises(ValueError, match="model_error must be > 0"):
        _combine(empty, empty, empty, model_error=0.0)
    with pytest.raises(ValueError, match="pixels_from_data must be > 0"):
        RefineSettings(pixels_from_data=-0.1)


@pytest.fixture(scope="module")
def lsst():
    torch.set_num_threads(1)
    model = load_pretrained("lsst")
    return model, refined(model)


def test_refinement_with_pixels_from_data_keeps_the_flux_and_adds_the_data_detail(lsst):
    """Galaxies the decoder draws, each with a bright compact nucleus added (5 % of its light in
    a 0.1" Gaussian, PSF-convolved): the fixed central galaxy's model lacks the nucleus, which
    ``pixels_from_data`` takes from the data. Each band keeps the flux the refinement measured
    (float32 rounding), and the output is nearer the truth: measured, the summed absolute
    residual drops by 24-64 % per stamp. Limit: it drops in every stamp."""
    model, refiner = lsst
    with torch.no_grad():
        galaxies = model.decode_differentiable(refiner.prior.sample(4, seed=8)).float().numpy()
    nucleus = galsim.Convolve(galsim.Gaussian(sigma=0.1), galsim.Moffat(beta=3.5, fwhm=0.7))
    core = nucleus.drawImage(nx=64, ny=64, scale=SCALE).array
    truth = galaxies + 0.05 * galaxies.sum(axis=(2, 3))[..., None, None] * core
    sky = np.asarray(model.config["sky_levels_electrons"]) * 1e-2
    noise = np.random.default_rng(8).standard_normal(truth.shape) * np.sqrt(sky)[:, None, None]
    blends = (truth + noise).astype(np.float32)
    base = dict(central_prior="fixed", flux_from_data=0.05, detect_on_residual=False)
    plain = refined(model, settings=RefineSettings(**base)).refine(blends, sky)
    mixed = refined(model, settings=RefineSettings(**base, pixels_from_data=0.1)).refine(
        blends, sky
    )
    np.testing.assert_allclose(
        mixed.central.sum(axis=(2, 3)), plain.central.sum(axis=(2, 3)), rtol=1e-4
    )
    residual = {
        name: np.abs(r.central - truth).sum(axis=(1, 2, 3))
        for name, r in (("plain", plain), ("mixed", mixed))
    }
    assert np.all(residual["mixed"] < residual["plain"]), residual


def test_pixels_from_data_on_the_command_line(tmp_path, capsys):
    """``evaluate --refine`` runs the stamp-mode setting by default (the central galaxy fixed,
    its flux and bright pixels from the data), with posteriors from the shipped prior's
    calibration for it; without --refine the flag is refused in one line (exit 2), and
    posteriors of a setting no calibration was measured with are refused in one line naming
    the settings the prior holds, with nothing written."""
    from vaedeblend import cli

    data = tmp_path / "blends.h5"
    rc = cli.main(["simulate", "--instruments", "lsst", "--kind", "blended", "--n", "4",
                   "--seed", "6", "--workers", "0", "--quiet", "--out", str(data)])  # fmt: skip
    assert rc == 0
    base = ["evaluate", "--model", "lsst", "--data", str(data)]
    out = tmp_path / "eval"
    assert cli.main([*base, "--out", str(out), "--refine", "--posterior"]) == 0
    assert len(np.load(out / "posterior.npz")["flux_q50_lsst_r"]) == 4
    capsys.readouterr()
    assert cli.main([*base, "--out", str(tmp_path / "no"), "--pixels-from-data", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pixels-from-data goes with --refine" in err[0]
    rc = cli.main([*base, "--out", str(tmp_path / "post"), "--refine", "--pixels-from-data",
                   "0.2", "--posterior"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no calibration for these refinement settings" in err[0]
    assert "fixed/0.05/0.1" in err[0]  # the default's, among those it holds
    assert not (tmp_path / "no").exists() and not (tmp_path / "post").exists()


def test_refine_defaults_are_the_recommended_settings():
    """Unless a flag says otherwise, ``evaluate --refine`` runs ``STAMP_REFINEMENT`` and
    ``deblend --refine`` ``FIELD_REFINEMENT``; a flag given replaces only its own setting,
    and 0 switches the data's flux or pixels off."""
    from vaedeblend.cli import build_parser
    from vaedeblend.cli_evaluate import refine_settings
    from vaedeblend.refinement import FIELD_REFINEMENT, STAMP_REFINEMENT

    parser = build_parser()
    stamp = parser.parse_args(["evaluate", "--model", "lsst", "--data", "x.h5", "--out", "o",
                               "--refine"])  # fmt: skip
    assert refine_settings(stamp) == RefineSettings(**STAMP_REFINEMENT)
    assert refine_settings(stamp, FIELD_REFINEMENT) == RefineSettings(**FIELD_REFINEMENT)
    off = parser.parse_args(["evaluate", "--model", "lsst", "--data", "x.h5", "--out", "o",
                             "--refine", "--pixels-from-data", "0"])  # fmt: skip
    assert refine_settings(off) == RefineSettings(central_prior="fixed", flux_from_data=0.05)
    assert refine_settings(parser.parse_args(["evaluate", "--model", "lsst", "--data", "x.h5",
                                              "--out", "o"])) is None  # fmt: skip
