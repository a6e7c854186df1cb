"""vaedeblend.fieldmode.quality: structure left in an image beyond its noise."""

import numpy as np
import pytest

from vaedeblend.fieldmode.quality import GAUSSIAN_FRAC_ABOVE_3SIGMA, image_structure

SIGMA = 2.0
N_SIDE = 200


def _noise(seed=0):
    return np.random.default_rng(seed).normal(0.0, SIGMA, (N_SIDE, N_SIDE))


def _blob(amplitude=50.0, width2=20.0):
    y, x = np.mgrid[:N_SIDE, :N_SIDE]
    return amplitude * np.exp(-((x - 100.0) ** 2 + (y - 80.0) ** 2) / width2)


def test_pure_noise_has_no_structure():
    s = image_structure(_noise(), SIGMA)
    n = N_SIDE**2
    # mean of chi^2_1 over n pixels has standard deviation sqrt(2 / n) = 0.007: 4 of them
    assert abs(s.excess_chi2_per_pixel) < 4 * np.sqrt(2 / n)
    # binomial standard deviation of the 3-sigma tail fraction: 4 of them
    p = GAUSSIAN_FRAC_ABOVE_3SIGMA
    assert abs(s.frac_above_3sigma - p) < 4 * np.sqrt(p * (1 - p) / n)
    assert s.n_sources == 0  # 5 sigma over 5 connected pixels: pure noise never gets there


def test_a_source_adds_its_chi2_and_is_found_and_subtracting_it_removes_both():
    noise, blob = _noise(1), _blob()
    s = image_structure(noise + blob, SIGMA)
    expected = np.mean(blob**2) / SIGMA**2  # the cross term averages to 0
    # the cross term 2 * sum(noise * blob) / (n sigma^2) has standard deviation
    # 2 sqrt(sum blob^2) / (n sigma): 4 of them, plus the pure-noise scatter
    n = N_SIDE**2
    tol = 4 * (2 * np.sqrt(np.sum(blob**2)) / (n * SIGMA) + np.sqrt(2 / n))
    assert abs(s.excess_chi2_per_pixel - expected) < tol
    assert s.n_sources == 1
    residual = image_structure(noise + blob - blob, SIGMA)
    assert residual.n_sources == 0 and abs(residual.excess_chi2_per_pixel) < 4 * np.sqrt(2 / n)


def test_masked_pixels_are_left_out_and_bad_input_is_refused():
    image = _noise(2) + _blob()
    image[:, :60] = np.nan  # masked, far from the blob
    s = image_structure(image, SIGMA)
    assert np.isfinite(s.excess_chi2_per_pixel) and s.n_sources == 1
    with pytest.raises(ValueError, match="2-D"):
        image_structure(image[None], SIGMA)
    with pytest.raises(ValueError, match="positive"):
        image_structure(image, 0.0)
    with pytest.raises(ValueError, match="finite"):
        image_structure(np.full((8, 8), np.nan), SIGMA)
