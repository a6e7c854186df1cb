"""Known-answer tests of vaedeblend.measure with real GalSim images (no mocks)."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from vaedeblend import measure as ms

SCALE = 0.2  # LSST pixel, arcsec
SHEARS = np.array([(0.1, 0.0), (0.0, -0.1), (0.06, 0.06), (-0.05, 0.02)])


def _draw(gal: galsim.GSObject, psf: galsim.GSObject, n: int = 64, scale: float = SCALE, **kw):
    return galsim.Convolve(gal, psf).drawImage(nx=n, ny=n, scale=scale, **kw).array


def _psf_image(psf: galsim.GSObject, scale: float = SCALE) -> np.ndarray:
    return psf.drawImage(nx=41, ny=41, scale=scale).array


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize(
    ("gal", "psf", "tol"),
    [
        # Gaussian galaxy and PSF: KSB's PSF correction is exact to first order in shear; the
        # remainder grows like |g|^3 (measured 1.0e-3 at |g| = 0.1, 1e-2 at |g| = 0.22).
        (galsim.Gaussian(half_light_radius=0.6), galsim.Gaussian(fwhm=0.65), 2e-3),
        # Sersic n = 2.5 through the paper's Kolmogorov PSF: KSB's Gaussian-weight
        # approximations leave ~3 % of g (measured 2.7e-3 at |g| = 0.1).
        (galsim.Sersic(n=2.5, half_light_radius=0.6), galsim.Kolmogorov(fwhm=0.65), 5e-3),
    ],
    ids=["gaussian", "sersic-kolmogorov"],
)
def test_ksb_recovers_known_shear(gal, psf, tol):
    imgs = np.stack([_draw(gal.shear(g1=a, g2=b), psf) for a, b in SHEARS]) * 1e4
    res = ms.measure_shapes(imgs, _psf_image(psf), SCALE, method="ksb")
    assert res.n_failed == 0
    np.testing.assert_allclose(res.g1, SHEARS[:, 0], atol=tol)
    np.testing.assert_allclose(res.g2, SHEARS[:, 1], atol=tol)


def test_adaptive_moments_match_analytic_gaussian():
    """Gaussian (x) Gaussian without pixel: observed covariance = galaxy + PSF covariance."""
    sg, sp = 0.5, 0.3
    psf = galsim.Gaussian(sigma=sp)
    imgs, expected = [], []
    for g1, g2 in SHEARS:
        imgs.append(_draw(galsim.Gaussian(sigma=sg).shear(g1=g1, g2=g2), psf, method="no_pixel"))
        a = np.array([[1 + g1, g2], [g2, 1 - g1]]) / np.sqrt(1 - g1 * g1 - g2 * g2)
        cov = sg**2 * a @ a.T + sp**2 * np.eye(2)
        tr = cov[0, 0] + cov[1, 1]
        sh = galsim.Shear(e1=(cov[0, 0] - cov[1, 1]) / tr, e2=2 * cov[0, 1] / tr)
        expected.append((sh.g1, sh.g2, np.linalg.det(cov) ** 0.25))
    res = ms.measure_shapes(np.stack(imgs), None, SCALE, method="adaptive")
    exp = np.array(expected)
    # HSM iterates the moments to a relative precision of 1e-6: 1e-5 is a safe margin.
    np.testing.assert_allclose(res.g1, exp[:, 0], atol=1e-5)
    np.testing.assert_allclose(res.g2, exp[:, 1], atol=1e-5)
    np.testing.assert_allclose(res.sigma_arcsec, exp[:, 2], rtol=1e-5)


def test_shape_failures_are_counted_not_dropped():
    psf = galsim.Gaussian(fwhm=0.65)
    good = _draw(galsim.Gaussian(sigma=0.5).shear(g1=0.1, g2=0.0), psf) * 1e4
    # A very elongated small galaxy: KSB's PSF correction over-shoots to |g| > 1.
    thin = _draw(galsim.Gaussian(sigma=0.3).shear(g1=0.9, g2=0.0), psf) * 1e4
    nan_img = good.copy()
    nan_img[3, 3] = np.nan
    imgs = np.stack([good, np.zeros_like(good), nan_img, thin, good])
    res = ms.measure_shapes(imgs, _psf_image(psf), SCALE, method="ksb")
    assert res.g1.shape == (5,)
    np.testing.assert_array_equal(res.failed, [False, True, True, True, False])
    assert res.n_failed == 3
    assert res.reasons == {"hsm_error": 1, "nonfinite_image": 1, "abs_g_gt_1": 1}
    assert np.isnan(res.g1[1:4]).all() and np.isnan(res.abs_g[1:4]).all()
    assert np.isfinite(res.g1[[0, 4]]).all()


def test_shape_argument_errors():
    imgs = np.zeros((2, 16, 16))
    with pytest.raises(ValueError, match="unknown shape method"):
        ms.measure_shapes(imgs, None, SCALE, method="regauss")
    with pytest.raises(ValueError, match="PSF"):
        ms.measure_shapes(imgs, None, SCALE, method="ksb")
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        ms.measure_shapes(imgs[0], None, SCALE, method="adaptive")


# ------------------------------------------------------------------ fluxes


def test_flux_sum_and_aperture():
    psf = galsim.Kolmogorov(fwhm=0.65)
    gal = galsim.Exponential(half_light_radius=0.4, flux=1e4)
    lsst = _draw(gal, psf, n=64, scale=0.2)[None]
    vis = _draw(gal, psf, n=128, scale=0.1)[None]
    # The 12.8" stamp holds all but a negligible part of a 0.4" exponential.
    np.testing.assert_allclose(ms.flux_sum(lsst), 1e4, rtol=2e-3)
    # The radius is in arcsec: the same 1" aperture on 0.2" and 0.1" pixels sees the same light
    # (exact-overlap apertures; the pixelisation of the profile differs by well under 1 %).
    f_lsst, flags = ms.aperture_flux(lsst, 0.2, radius_arcsec=1.0)
    f_vis, _ = ms.aperture_flux(vis, 0.1, radius_arcsec=1.0)
    np.testing.assert_allclose(f_lsst, f_vis, rtol=1e-2)
    assert flags[0] == 0 and 0.5e4 < f_lsst[0] < 0.95e4
    # A constant image of 1 e-/pixel: the exact-overlap aperture sum is the circle's area.
    f_const, _ = ms.aperture_flux(np.ones((1, 40, 40)), 0.2, radius_arcsec=1.0)
    np.testing.assert_allclose(f_const, np.pi * 5.0**2, rtol=1e-10)


def test_magnitudes():
    np.testing.assert_allclose(ms.flux_to_mag(np.array([100.0]), 28.0, 100.0), [28.0])
    np.testing.assert_allclose(ms.flux_to_mag(np.array([1000.0]), 28.0, 1.0), [20.5])
    assert np.isnan(ms.flux_to_mag(np.array([0.0]), 28.0, 1.0)).all()
    f_in = np.array([100.0, 100.0, 100.0, -5.0])
    f_out = np.array([100.0, 100.0 / 10**0.4, 0.0, 10.0])
    np.testing.assert_allclose(ms.mag_error(f_out, f_in)[:2], [0.0, 1.0], atol=1e-12)
    assert np.isnan(ms.mag_error(f_out, f_in)[2:]).all()


def test_snr_formula():
    # Constant s = sky per pixel: S/N = sqrt(npix s^2 / (2 s)) = sqrt(npix s / 2).
    s = np.full((2, 10, 10), 50.0)
    np.testing.assert_allclose(ms.snr(s, 50.0), np.sqrt(100 * 50.0 / 2))


# ------------------------------------------------------------------ blendedness


def _gal_image(dx: float = 0.0) -> np.ndarray:
    psf = galsim.Kolmogorov(fwhm=0.65)
    gal = galsim.Exponential(half_light_radius=0.5, flux=1e4).shift(dx, 0.0)
    return _draw(gal, psf)


def test_blendedness_isolated_is_zero_and_rises_with_proximity():
    target = _gal_image()
    assert ms.blendedness(target, np.zeros_like(target)) == 0.0
    distances = [4.0, 3.0, 2.0, 1.5, 1.0, 0.5]
    b = np.array([ms.blendedness(target, _gal_image(d)) for d in distances])
    assert b[0] < 0.01  # 4": the neighbour's light barely reaches the target
    assert np.all(np.diff(b) > 0), b
    # The same galaxy on top of the target: B = 1 - 1/2.
    np.testing.assert_allclose(ms.blendedness(target, target), 0.5)


def test_blendedness_closest():
    target = _gal_image()
    neighbours = np.stack([_gal_image(2.5), _gal_image(1.0), np.zeros_like(target)])
    each = ms.blendedness_each(target, neighbours)
    assert each.shape == (3,) and each[2] == 0.0 and each[1] > each[0] > 0
    d = np.array([2.5, 1.0, np.nan])  # NaN marks the zero padding
    np.testing.assert_allclose(ms.blendedness_closest(target, neighbours, d), each[1])
    np.testing.assert_allclose(ms.blendedness_closest(target, neighbours), each[1])
    # Batched, with a stamp that has no neighbour at all.
    batch_n = np.stack([neighbours, np.zeros_like(neighbours)])
    batch_d = np.stack([d, np.full(3, np.nan)])
    got = ms.blendedness_closest(np.stack([target, target]), batch_n, batch_d)
    np.testing.assert_allclose(got, [each[1], 0.0])


# ------------------------------------------------------------------ SSIM and residuals


def _ssim_brute_force(x: np.ndarray, y: np.ndarray, data_range: float, sigma=1.5) -> float:
    """Explicit window loop (Wang et al. 2004, Gaussian window, radius 5), interior pixels."""
    r = int(3.5 * sigma + 0.5)
    u = np.arange(-r, r + 1)
    w = np.exp(-0.5 * (u[:, None] ** 2 + u[None, :] ** 2) / sigma**2)
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(r, x.shape[0] - r):
        for j in range(r, x.shape[1] - r):
            a, b = x[i - r : i + r + 1, j - r : j + r + 1], y[i - r : i + r + 1, j - r : j + r + 1]
            ma, mb = np.sum(w * a), np.sum(w * b)
            va, vb = np.sum(w * a * a) - ma**2, np.sum(w * b * b) - mb**2
            cab = np.sum(w * a * b) - ma * mb
            num = (2 * ma * mb + c1) * (2 * cab + c2)
            vals.append(num / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_known_answers():
    rng = np.random.default_rng(0)
    x = _gal_image()[20:44, 20:44] + rng.normal(0, 5, (24, 24))
    np.testing.assert_allclose(ms.ssim(x, x), 1.0, rtol=1e-12)
    y = 0.8 * x + rng.normal(0, 20, x.shape)
    lr = float(x.max() - x.min())
    np.testing.assert_allclose(ms.ssim(x, y), _ssim_brute_force(x, y, lr), rtol=1e-10)
    np.testing.assert_allclose(ms.ssim(x, y), ms.ssim(x, y, data_range=lr), rtol=1e-12)
    assert ms.ssim(x, y) < 1.0
    # Constant images a and b: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1).
    a, b, lr = 2.0, 3.0, 10.0
    c1 = (0.01 * lr) ** 2
    got = ms.ssim(np.full((20, 20), a), np.full((20, 20), b), data_range=lr)
    np.testing.assert_allclose(got, (2 * a * b + c1) / (a * a + b * b + c1), rtol=1e-12)
    # Batched over (N, C, H, W).
    stack = np.stack([[x, x], [x, y]])
    out = ms.ssim(stack, np.stack([[x, x], [y, y]]))
    assert out.shape == (2, 2) and np.allclose(out[0], 1.0) and out[1, 0] < 1.0


def test_residual_stats():
    t = _gal_image()[None]
    st = ms.residual_stats(t, t, 100.0)
    assert all(np.all(v == 0) for v in st.values())
    st = ms.residual_stats(t + 3.0, t, 4.0)
    np.testing.assert_allclose([st["mean"], st["rms"], st["chi_mean"], st["chi_rms"]],
                               [[3.0], [3.0], [1.5], [1.5]])  # fmt: skip
