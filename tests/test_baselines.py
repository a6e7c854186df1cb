"""Baseline deblenders (sep, photutils, scarlet2, none) behind the Deblender contract, their
command and their output file (issue 13)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from vaedeblend import cli
from vaedeblend.baselines import MissingDependencyError, make_baseline, run_baseline
from vaedeblend.dataset import open_dataset
from vaedeblend.models.api import DeblendContext, Deblender

BANDS = ["lsst_g", "lsst_r", "lsst_i"]
SIZE = 32
SKY = np.array([200.0, 300.0, 400.0])
PSF_SIGMA = 1.0  # pixels: FWHM 2.35 pixels


def _gaussian(x0, y0, sigma, size=SIZE):
    y, x = np.mgrid[:size, :size]
    g = np.exp(-0.5 * ((x - x0) ** 2 + (y - y0) ** 2) / sigma**2)
    return g / g.sum()


def two_galaxy_blend(seed=0):
    """(blend (1, C, S, S), central galaxy (C, S, S), context): a bright central galaxy at the
    stamp centre and a neighbour 9 pixels away, 3.8 PSF FWHM, so that segmentation can split
    them; Poisson noise."""
    c = (SIZE - 1) / 2
    central = np.array([3e4, 5e4, 6e4])[:, None, None] * _gaussian(c, c, 1.8)
    neighbour = np.array([4e4, 3e4, 2e4])[:, None, None] * _gaussian(c + 9, c, 1.8)
    rng = np.random.default_rng(seed)
    truth = central + neighbour
    blend = rng.poisson(truth + SKY[:, None, None]) - SKY[:, None, None]
    psf = np.repeat(_gaussian(7, 7, PSF_SIGMA, size=15)[None], 3, axis=0)
    context = DeblendContext(tuple(BANDS), np.full(3, 0.2), SKY, psf)
    return blend[None].astype(np.float32), central, context


@pytest.mark.parametrize(
    ("method", "tolerance"),
    [
        # Measured here: within 2.2 % for all three. The segment loses the wings beyond its
        # 1.5-sigma isophote (about 1 % of a Gaussian at this S/N) and keeps the noise of its
        # pixels (0.5-1 % of the flux); 5 % leaves room for other noise draws, while a method
        # that kept the neighbour (+30 to +80 %) or lost half the galaxy fails.
        ("sep", 0.05),
        ("photutils", 0.05),
        ("scarlet2", 0.05),
    ],
)
def test_each_baseline_recovers_the_central_flux(method, tolerance):
    blend, central, context = two_galaxy_blend()
    deblender = make_baseline(method, BANDS)
    assert isinstance(deblender, Deblender)
    out = deblender.deblend(blend, context=context)
    assert out.shape == blend.shape and out.dtype == np.float32
    flux = out[0].sum(axis=(1, 2))
    np.testing.assert_allclose(flux, central.sum(axis=(1, 2)), rtol=tolerance)
    # and it is not the whole blend: the neighbour's light (30-80 % of the central's) is gone
    assert np.all(flux < 0.9 * blend[0].sum(axis=(1, 2)))


def test_none_returns_the_blend():
    blend, _, context = two_galaxy_blend()
    np.testing.assert_array_equal(make_baseline("none", BANDS).deblend(blend), blend)


def test_unknown_and_missing_dependencies_are_named(monkeypatch):
    with pytest.raises(ValueError, match="unknown baseline 'magic'"):
        make_baseline("magic", BANDS)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sep" else real(name, *a)
    )
    with pytest.raises(MissingDependencyError, match=r'pip install "vaedeblend\[baselines\]"'):
        make_baseline("sep", BANDS)


def test_the_command_writes_what_evaluate_reads(tmp_path):
    data = tmp_path / "test.h5"
    sim = ["simulate", "--instruments", "lsst", "--stamp-size", "32", "--workers", "0"]
    sim += ["--quiet", "--kind", "blended", "--n", "6", "--seed", "3", "--out", str(data)]
    assert cli.main(sim) == 0
    out = tmp_path / "sep.h5"
    assert cli.main(["baseline", "sep", "--data", str(data), "--out", str(out)]) == 0
    with h5py.File(out, "r") as f, open_dataset(data) as ds:
        assert f["deblended"].shape == (6, 6, 32, 32)
        assert f.attrs["fingerprint"] == ds.meta["fingerprint"]
        assert json.loads(f.attrs["band_ids"]) == ds.band_ids
        assert json.loads(f.attrs["summary"])["seconds_per_blend"] > 0
    report = tmp_path / "eval"
    args = ["evaluate", "--deblended", str(out), "--data", str(data), "--out", str(report)]
    assert cli.main(args) == 0
    assert (report / "metrics.json").exists()
    # --true-centres picks the source at the target's true position: same file layout
    summary = run_baseline("sep", data, tmp_path / "t.h5", true_centres=True, limit=2)
    assert summary["n"] == 2 and summary["true_centres"]


def test_scarlet2_fits_the_first_grid_of_a_multi_resolution_stamp():
    pytest.importorskip("scarlet2")
    blend, central, context = two_galaxy_blend()
    # a fourth channel on a finer grid (a VIS-like 0.1"/px), holding the blend's r band
    blend4 = np.concatenate([blend, blend[:, 1:2]], axis=1)
    context4 = DeblendContext(
        (*BANDS, "euclid_vis"), np.array([0.2, 0.2, 0.2, 0.1]), np.append(SKY, 300.0),
        np.concatenate([context.psf_images, context.psf_images[1:2]]),
    )  # fmt: skip
    out = make_baseline("scarlet2", context4.band_ids, first_grid_only=True).deblend(
        blend4, context=context4
    )
    assert np.all(out[0, 3] == 0)  # the finer grid is not fitted
    # the first grid is fitted as on its own: the same 5 % as the single-grid test above
    np.testing.assert_allclose(out[0, :3].sum(axis=(1, 2)), central.sum(axis=(1, 2)), rtol=0.05)


def multi_resolution_blend(seed=1):
    """The two-galaxy blend of ``two_galaxy_blend`` seen on two grids centred on the same sky
    position: g, r, i at 0.2" per pixel and a VIS-like band at 0.1" (32 x 32 pixels each, so
    the fine grid covers half the sky width and shows the neighbour only in part)."""
    c = (SIZE - 1) / 2
    central = np.zeros((4, SIZE, SIZE))
    neighbour = np.zeros((4, SIZE, SIZE))
    central[:3] = np.array([3e4, 5e4, 6e4])[:, None, None] * _gaussian(c, c, 1.8)
    neighbour[:3] = np.array([4e4, 3e4, 2e4])[:, None, None] * _gaussian(c + 9, c, 1.8)
    central[3] = 5.5e4 * _gaussian(c, c, 3.6)  # the same galaxies in 0.1" pixels
    y, x = np.mgrid[:SIZE, :SIZE]  # the neighbour's centre is off the fine stamp: no renorm
    neighbour[3] = 2.5e4 * np.exp(-0.5 * ((x - c - 18) ** 2 + (y - c) ** 2) / 3.6**2)
    neighbour[3] /= 2 * np.pi * 3.6**2
    sky = np.append(SKY, 300.0)
    rng = np.random.default_rng(seed)
    blend = rng.poisson(central + neighbour + sky[:, None, None]) - sky[:, None, None]
    psf = np.stack([_gaussian(7, 7, PSF_SIGMA, size=15)] * 3 + [_gaussian(7, 7, 2 * PSF_SIGMA, 15)])
    context = DeblendContext((*BANDS, "euclid_vis"), np.array([0.2, 0.2, 0.2, 0.1]), sky, psf)
    return blend[None].astype(np.float32), central, context


@pytest.mark.slow
def test_scarlet2_fits_a_multi_resolution_stamp_jointly():
    """Both grids fitted together through their own WCS, PSF and resampling (scarlet2's
    multi-resolution). Measured here: the coarse-grid channels 4-5 % high (10 % allowed, as the
    single-grid fit's 5 % plus the resampling), the fine-grid channel 29 % low, and 28 % low
    with the central galaxy alone, so not the neighbour's doing (not understood; a candidate:
    the morphology box sized on the coarse grid). It is fitted, unlike first_grid_only's
    zeros, but not well: the check there is that it holds more than half the flux."""
    pytest.importorskip("scarlet2")
    blend, central, context = multi_resolution_blend()
    out = make_baseline("scarlet2", context.band_ids).deblend(blend, context=context)
    ratio = out[0].sum(axis=(1, 2)) / central.sum(axis=(1, 2))
    np.testing.assert_allclose(ratio[:3], 1.0, atol=0.10)
    assert 0.5 < ratio[3] < 1.1
