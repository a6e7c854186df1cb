"""Tests of vaedeblend.evaluation: biases, binned statistics, reports, comparison, file inputs.

Known answers: injected m and c recovered within their errors (synthetic and GalSim-drawn), a
perfect deblender gives zero errors and m = 0, a flux-scaled output gives its magnitude offset.
"""

from __future__ import annotations

import json

import galsim
import h5py
import numpy as np
import pytest

from vaedeblend.evaluation import (
    EvalConfig,
    compare_runs,
    ellipticity_bias,
    error_summary,
    evaluate_arrays,
    evaluate_dataset,
    linear_fit,
    load_deblended,
    paper_binned_statistic,
    shear_bias,
    shear_bias_from_images,
)
from vaedeblend.evaluation.binned import binned_stats
from vaedeblend.evaluation.report import _measure_pixels, make_eval_data

BANDS = ["lsst_r", "euclid_vis"]
SCALES = np.array([0.2, 0.1])  # arcsec per pixel
SKY = np.array([1500.0, 100.0])  # electrons per pixel
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ------------------------------------------------------------------ ellipticity bias


def test_regression_recovers_injected_m_and_c():
    rng = np.random.default_rng(1)
    g_true = rng.normal(0, 0.25, (5000, 2))
    g_true = g_true[np.hypot(*g_true.T) < 0.8][:4000]  # |g| <= 1 on both sides
    g_out = 1.05 * g_true + 0.002 + rng.normal(0, 0.02, g_true.shape)
    res = ellipticity_bias(g_true, g_out)
    for comp in res.components:
        assert abs(comp.m - 0.05) < 3 * comp.m_err
        assert abs(comp.c - 0.002) < 3 * comp.c_err
    assert abs(res.m - 0.05) < 3 * res.m_err and abs(res.c - 0.002) < 3 * res.c_err
    assert res.n_used == 4000 and res.n_excluded == 0


def test_regression_errors_match_scatter():
    """The standard error of m agrees with the scatter of m over independent realisations."""
    rng = np.random.default_rng(2)
    fits = []
    for _ in range(300):
        x = rng.normal(0, 0.25, 300)
        fits.append(linear_fit(x, 0.95 * x + rng.normal(0, 0.03, 300)))
    m = np.array([f.m for f in fits])
    m_err = np.array([f.m_err for f in fits])
    # 300 realisations: the scatter is known to ~4 %; allow 15 %.
    assert abs(m.std() / m_err.mean() - 1) < 0.15
    assert abs(m.mean() + 0.05) < 3 * m.std() / np.sqrt(len(m))


def test_regression_excludes_and_counts_failures():
    rng = np.random.default_rng(3)
    g = rng.normal(0, 0.2, (100, 2))
    g_out = g.copy()
    g_out[:3] = np.nan  # failed measurements
    g[3] = (0.9, 0.9)  # |g| > 1 on the target side
    res = ellipticity_bias(g, g_out)
    assert res.n_used == 96 and res.n_excluded == 4
    assert abs(res.m) < 1e-12 and abs(res.c) < 1e-12 and res.m_err < 1e-12


# ------------------------------------------------------------------ shear bias


def _sets(e: np.ndarray, m: float, c: float, g: float, noise) -> dict:
    shears = {"00": (0, 0), "p1": (g, 0), "m1": (-g, 0), "p2": (0, g), "m2": (0, -g)}
    return {k: (1 + m) * (e + np.array(s)) + c + noise[k] for k, s in shears.items()}


def test_shear_bias_recovers_injected_values_synthetic():
    rng = np.random.default_rng(4)
    n, g = 5000, 0.01
    e = rng.normal(0, 0.2, (n, 2))
    # Noise partly shared between the sets (as with a shared seed) and partly not, so that the
    # errors are finite and testable.
    shared = rng.normal(0, 0.05, (n, 2))
    noise = {k: shared + rng.normal(0, 0.005, (n, 2)) for k in ("00", "p1", "m1", "p2", "m2")}
    s = _sets(e, 0.05, 0.002, g, noise)
    res = shear_bias(s["00"], s["p1"], s["m1"], s["p2"], s["m2"], shear=g)
    for m, err in ((res.m1, res.m1_err), (res.m2, res.m2_err), (res.m, res.m_err)):
        assert abs(m - 0.05) < 3 * err
    for c, err in ((res.c1, res.c1_err), (res.c2, res.c2_err)):
        assert abs(c - 0.002) < 3 * err
    # Without the (0, 0) set, c comes from the mean of the +g and -g sets.
    res2 = shear_bias(None, s["p1"], s["m1"], s["p2"], s["m2"], shear=g)
    assert abs(res2.c1 - 0.002) < 3 * res2.c1_err and res2.m1 == res.m1
    boot = shear_bias(s["00"], s["p1"], s["m1"], s["p2"], s["m2"], shear=g, n_bootstrap=300)
    assert boot.error_method == "bootstrap" and abs(boot.m1_err / res.m1_err - 1) < 0.2


def test_shear_bias_drops_failed_galaxies_from_all_sets():
    e = np.zeros((10, 2))
    zero = {k: np.zeros((10, 2)) for k in ("00", "p1", "m1", "p2", "m2")}
    s = _sets(e, 0.0, 0.0, 0.01, zero)
    s["p2"][4] = np.nan
    res = shear_bias(s["00"], s["p1"], s["m1"], s["p2"], s["m2"])
    assert res.n_used == 9 and res.n_dropped == 1
    assert abs(res.m1) < 1e-12 and abs(res.m2) < 1e-12
    with pytest.raises(ValueError, match="same N"):
        shear_bias(s["00"], s["p1"][:5], s["m1"], s["p2"], s["m2"])


def test_shear_bias_from_galsim_images():
    """Real GalSim galaxies sheared by 0 and +/-0.01 with the same noise; KSB shapes.

    Gaussian galaxies and PSF with |e| <= 0.05, where KSB's response is 1 to < 0.5 %, so the
    shear bias of the raw measurement is ~0; then 1.05 e + 0.002 injects m = 0.05, c = 0.002.
    """
    rng = np.random.default_rng(5)
    psf = galsim.Gaussian(fwhm=0.65)
    gals = [
        galsim.Gaussian(half_light_radius=rng.uniform(0.4, 0.8), flux=1e5).shear(
            g=rng.uniform(0, 0.05), beta=rng.uniform(0, np.pi) * galsim.radians
        )
        for _ in range(16)
    ]
    noise = rng.normal(0, 20.0, (16, 48, 48))  # shared by all sets (same seed)
    shears = [(0.0, 0.0), (0.01, 0.0), (-0.01, 0.0), (0.0, 0.01), (0.0, -0.01)]
    images = {
        s: noise
        + np.stack(
            [
                galsim.Convolve(g.shear(g1=s[0], g2=s[1]), psf)
                .drawImage(nx=48, ny=48, scale=0.2)
                .array
                for g in gals
            ]
        )
        for s in shears
    }
    psf_img = psf.drawImage(nx=31, ny=31, scale=0.2).array
    raw, failures = shear_bias_from_images(images, psf_img, 0.2)
    assert sum(failures.values()) == 0 and raw.n_used == 16
    assert abs(raw.m1) < 3 * raw.m1_err + 2e-3 and abs(raw.m2) < 3 * raw.m2_err + 2e-3

    from vaedeblend.measure import measure_shapes

    meas = {}
    for s, img in images.items():
        r = measure_shapes(img, psf_img, 0.2)
        meas[s] = 1.05 * np.stack([r.g1, r.g2], axis=1) + 0.002
    inj = shear_bias(*(meas[s] for s in shears), shear=0.01)
    np.testing.assert_allclose(1 + inj.m1, 1.05 * (1 + raw.m1), rtol=1e-10)
    np.testing.assert_allclose(inj.c1, 1.05 * raw.c1 + 0.002, rtol=1e-10)
    assert abs(inj.m1 - 0.05) < 3 * inj.m1_err and abs(inj.m2 - 0.05) < 3 * inj.m2_err
    assert abs(inj.c1 - 0.002) < 3 * inj.c1_err and abs(inj.c2 - 0.002) < 3 * inj.c2_err


# ------------------------------------------------------------------ binned statistics


def test_paper_binned_statistic_known_answer():
    # Bin 0 [0, 0.055): errors 1, 2, 3 (median 2, Q1 1.5, Q3 2.5); bin 3: errors -4, -2
    # (median -3, Q1 -3.5, Q3 -2.5); other bins empty; B = 0.7 lies outside and is ignored.
    b = np.array([0.01, 0.02, 0.03, 0.17, 0.18, 0.7])
    err = np.array([1.0, 2.0, 3.0, -4.0, -2.0, 100.0])
    got = paper_binned_statistic(b, err)
    assert got["n_bins_used"] == 2
    np.testing.assert_allclose(got["binned_abs_median"], (2 + 3) / 2)
    np.testing.assert_allclose(got["binned_abs_q1"], (1.5 + 3.5) / 2)
    np.testing.assert_allclose(got["binned_abs_q3"], (2.5 + 2.5) / 2)
    # Not the same thing as the median of absolute errors (named differently in the report).
    plain = error_summary(err[:5])
    assert plain["median"] == 1.0 and plain["median_abs"] == 2.0 and plain["n"] == 5


def test_binned_stats_edges_and_nan():
    x = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    y = np.array([1.0, 3.0, 5.0, np.nan, 7.0, 9.0, 11.0])
    st = binned_stats(x, y, [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(st.count, [2, 1, 3])  # 3.0 == last edge is included
    np.testing.assert_allclose(st.median, [2.0, 5.0, 9.0])
    np.testing.assert_allclose(st.q1, [1.5, 5.0, 8.0])


# ------------------------------------------------------------------ reports


def _sample(n: int = 12, size: int = 48, seed: int = 0):
    """GalSim-drawn blends: (target, others, blend, psf images), (N, 2, size, size) electrons."""
    rng = np.random.default_rng(seed)
    psfs = [galsim.Kolmogorov(fwhm=0.65), galsim.Moffat(beta=2.5, fwhm=0.18)]
    target = np.zeros((n, 2, size, size), np.float32)
    others = np.zeros_like(target)
    for i in range(n):
        flux = 10 ** rng.uniform(3.5, 5.0)
        gal = galsim.Exponential(half_light_radius=rng.uniform(0.3, 0.7), flux=flux).shear(
            g=rng.uniform(0, 0.4), beta=rng.uniform(0, np.pi) * galsim.radians
        )
        r, a = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi)
        nb = galsim.Exponential(half_light_radius=0.4, flux=flux * rng.uniform(0.2, 1.0))
        nb = nb.shift(r * np.cos(a), r * np.sin(a)) if i % 3 else nb.shift(40.0, 0.0)
        for c, (psf, s) in enumerate(zip(psfs, SCALES, strict=True)):
            target[i, c] = galsim.Convolve(gal, psf).drawImage(nx=size, ny=size, scale=s).array
            others[i, c] = galsim.Convolve(nb, psf).drawImage(nx=size, ny=size, scale=s).array
    sigma = np.sqrt(SKY[None, :, None, None] + target + others)
    blend = (target + others + rng.normal(0, 1, target.shape) * sigma).astype(np.float32)
    psf_imgs = [p.drawImage(nx=31, ny=31, scale=s).array for p, s in zip(psfs, SCALES, strict=True)]
    return target, others, blend, psf_imgs


NO_FIG = EvalConfig(figures=False)


def test_perfect_deblender_gives_zero_errors(tmp_path):
    target, others, blend, psfs = _sample()
    m = evaluate_arrays(target, target, blend, BANDS, SCALES, psfs, SKY, tmp_path,
                        others=others, label="perfect", config=NO_FIG)  # fmt: skip
    head = m["headline"]
    assert head["ksb_failed_target"] == 0 and head["ksb_failed_output"] == 0
    assert abs(head["m"]) < 1e-12 and abs(head["c"]) < 1e-12
    for key in ("binned_abs_median_delta_abs_e", "median_abs_delta_abs_e",
                "binned_abs_median_delta_mag", "median_abs_delta_mag",
                "mean_abs_rel_flux_error_aperture", "sigma_g1_residual_adaptive"):  # fmt: skip
        assert head[key] == 0.0, key
    assert head["mean_ssim"] == pytest.approx(1.0, abs=1e-12)
    assert m["bands"]["euclid_vis"]["residual"]["chi_rms"]["median"] == 0.0
    # metrics.json is strict JSON and holds the same numbers; no temporary files are left.
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["headline"]["m"] == head["m"] and on_disk["n"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json", "per_galaxy.npz", "summary.md"]  # fmt: skip
    # S/N and B_tot were computed with the paper's formulas from target and others.
    per = np.load(tmp_path / "per_galaxy.npz")
    # Stamp 0's neighbour is 40" away: only the far wings of its profile reach the stamp.
    assert per["blendedness"][0] < 1e-6 and np.all(per["blendedness"][1:3] > 0.01)


def test_flux_scaled_output_known_offsets(tmp_path):
    """Output = 0.9 x truth: delta mag = -2.5 log10(0.9) exactly; shapes unchanged (m = 0)."""
    target, others, blend, psfs = _sample()
    output = 0.9 * target
    output[5] = 0.0  # a deblender that lost one galaxy: counted as a failure, not dropped
    m = evaluate_arrays(target, output, blend, BANDS, SCALES, psfs, SKY, tmp_path,
                        others=others, label="scaled", config=NO_FIG)  # fmt: skip
    dm = -2.5 * np.log10(0.9)
    r_band = m["bands"]["lsst_r"]
    for kind in ("flux_sum", "flux_aperture"):
        assert r_band[kind]["delta_mag"]["median"] == pytest.approx(dm, rel=1e-5)
        assert r_band[kind]["delta_mag"]["n_nan"] == 1
        assert r_band[kind]["delta_mag"]["paper_binned"]["binned_abs_median"] == pytest.approx(
            dm, rel=1e-5
        )
    ksb = m["shapes"]["ksb"]["lsst_r"]
    assert ksb["failures_output"]["n_failed"] == 1
    assert ksb["ellipticity_bias"]["n_excluded"] == 1 and ksb["ellipticity_bias"]["n_used"] == 11
    # HSM converges to 1e-6 relative precision; scaling the flux changes nothing else.
    assert abs(m["headline"]["m"]) < 1e-5


def test_report_figures_and_compare(tmp_path):
    target, others, blend, psfs = _sample(n=12)
    rng = np.random.default_rng(9)
    noisy = target * (1 + 0.05 * rng.normal(size=(12, 1, 1, 1))) + 0.1 * others
    mags = 24.0 - 2.5 * np.log10(target[:, 0].sum(axis=(1, 2)) / 1e4)
    # Figures for one run only (the comparison reads metrics.json): keeps the test short.
    runs = {
        "perfect": (target, NO_FIG),
        "leaky": (noisy.astype(np.float32), EvalConfig(n_gallery=3)),
    }
    for label, (out, cfg) in runs.items():
        evaluate_arrays(target, out, blend, BANDS, SCALES, psfs, SKY, tmp_path / label,
                        others=others, target_mag=mags, label=label, config=cfg)  # fmt: skip
    metrics = json.loads((tmp_path / "leaky" / "metrics.json").read_text())
    expected = {"error_vs_snr.png", "error_vs_blendedness.png", "error_vs_mag.png",
                "m_vs_snr.png", "gallery_lsst_r.png", "gallery_euclid_vis.png"}  # fmt: skip
    assert set(metrics["figures"]) == expected
    for name in expected:
        assert (tmp_path / "leaky" / name).read_bytes()[:8] == PNG_MAGIC
    summary = (tmp_path / "leaky" / "summary.md").read_text()
    assert "binned \\|median\\| (paper statistic)" in summary and "| euclid_vis |" in summary
    res = compare_runs([tmp_path / "perfect", tmp_path / "leaky"], tmp_path / "cmp")
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| perfect | leaky |" in table
    for name in res["figures"]:
        assert (tmp_path / "cmp" / name).read_bytes()[:8] == PNG_MAGIC
    assert "compare_error_vs_blendedness.png" in res["figures"]


def test_input_validation(tmp_path):
    target, others, blend, psfs = _sample(n=2, size=16)
    with pytest.raises(ValueError, match="one shape"):
        evaluate_arrays(target, target[:1], blend, BANDS, SCALES, psfs, SKY, tmp_path)
    with pytest.raises(ValueError, match="reference band"):
        evaluate_arrays(target, target, blend, BANDS, SCALES, psfs, SKY, tmp_path,
                        reference_band="lsst_i")  # fmt: skip
    with pytest.raises(ValueError, match=r"snr must be \(N,\)"):
        evaluate_arrays(target, target, blend, BANDS, SCALES, psfs, SKY, tmp_path,
                        snr=np.ones(3))  # fmt: skip
    with pytest.raises(ValueError, match="shape bands"):
        evaluate_arrays(target, target, blend, BANDS, SCALES, psfs, SKY, tmp_path,
                        config=EvalConfig(shape_bands=("lsst_i",), figures=False))  # fmt: skip


def test_pixel_metrics_do_not_depend_on_chunking():
    target, others, blend, psfs = _sample(n=7, size=24)
    data = make_eval_data(target, 0.9 * target + 0.1 * others, blend, BANDS, SCALES, psfs, SKY,
                          others=others)  # fmt: skip
    whole, chunked = {}, {}
    _measure_pixels(data, whole)
    _measure_pixels(data, chunked, chunk=3)
    assert whole.keys() == chunked.keys()
    for k in whole:
        np.testing.assert_array_equal(whole[k], chunked[k])


# ------------------------------------------------------------------ files


FINGERPRINT = "ab" * 32


def _write_test_set(path, target, others, blend, psfs, **extra_meta):
    """An HDF5 test set following docs/dataset_layout.md (the subset evaluation reads)."""
    n = len(target)
    meta = extra_meta | {
        "band_ids": BANDS, "pixel_scales_arcsec": SCALES.tolist(),
        "sky_levels_electrons": SKY.tolist(), "fingerprint": FINGERPRINT, "kind": "blended",
        "centring": "centred", "n": n, "seed": 1, "noise": "poisson",
    }  # fmt: skip
    truth = np.zeros(n, dtype=[("blend_index", "i8"), ("is_target", "?"), ("mag_lsst_r", "f8")])
    truth["blend_index"] = np.arange(n)[::-1]  # rows in any order: matched by blend_index
    truth["is_target"] = True
    truth["mag_lsst_r"] = 20.0 + truth["blend_index"] * 0.5
    with h5py.File(path, "w") as f:
        f.attrs["meta"] = json.dumps(meta)
        for name, arr in (("target", target), ("others", others), ("blend", blend)):
            f[name] = arr
        f["psf"] = np.stack([p[5:26, 5:26] for p in psfs])  # (C, P, P), as the simulator writes
        f["truth"] = truth


def test_evaluate_dataset_with_deblended_file(tmp_path):
    target, others, blend, psfs = _sample(n=6, size=32)
    ds_path = tmp_path / "test.h5"
    _write_test_set(ds_path, target, others, blend, psfs)
    out_path = tmp_path / "other.h5"
    with h5py.File(out_path, "w") as f:
        f["deblended"] = target
        f.attrs["meta"] = json.dumps({"fingerprint": FINGERPRINT, "band_ids": BANDS})
    m = evaluate_dataset(ds_path, out_path, tmp_path / "eval", label="other", config=NO_FIG)
    assert m["n"] == 6 and m["dataset"]["fingerprint"] == FINGERPRINT
    assert abs(m["headline"]["m"]) < 1e-12
    per = np.load(tmp_path / "eval" / "per_galaxy.npz")
    np.testing.assert_allclose(per["target_mag"], 20.0 + np.arange(6) * 0.5)
    assert "mag" in m["binned"]


def test_evaluation_takes_the_test_sets_reference_band(tmp_path):
    """A set simulated with another reference band (HSC sets rank and detect in hsc_i) is
    measured in that band unless told otherwise."""
    target, others, blend, psfs = _sample(n=6, size=32)
    other = next(b for b in BANDS if b != "lsst_r")
    _write_test_set(tmp_path / "t.h5", target, others, blend, psfs, reference_band=other)
    m = evaluate_dataset(tmp_path / "t.h5", target, tmp_path / "a", config=NO_FIG)
    assert m["reference_band"] == other
    m = evaluate_dataset(tmp_path / "t.h5", target, tmp_path / "b", config=NO_FIG,
                         reference_band="lsst_r")  # fmt: skip
    assert m["reference_band"] == "lsst_r"


def test_load_deblended_checks(tmp_path):
    arr = np.zeros((4, 2, 8, 8), np.float32)
    p = tmp_path / "d.h5"
    with h5py.File(p, "w") as f:
        f["deblended"] = arr
        f.attrs["fingerprint"] = FINGERPRINT
    assert load_deblended(p, 4, FINGERPRINT).shape == (4, 2, 8, 8)
    with pytest.raises(ValueError, match="N=5"):
        load_deblended(p, 5, FINGERPRINT)
    with pytest.raises(ValueError, match="does not match"):
        load_deblended(p, 4, "cd" * 32)
    with pytest.raises(ValueError, match="band ids"):
        with h5py.File(p, "a") as f:
            f.attrs["band_ids"] = json.dumps(BANDS[::-1])
        load_deblended(p, 4, FINGERPRINT, BANDS)
    q = tmp_path / "nofp.h5"
    with h5py.File(q, "w") as f:
        f["deblended"] = arr
    with pytest.raises(ValueError, match="no test-set fingerprint"):
        load_deblended(q, 4, FINGERPRINT)
    assert load_deblended(q, 4, FINGERPRINT, check_fingerprint=False).shape[0] == 4


def test_shear_bias_command_on_calibration_sets(tmp_path, capsys):
    """The sheared-set shear bias through the CLI: a perfect deblender has exactly the bias of
    the noiseless targets, and KSB's own bias on noiseless galaxies is small."""
    from vaedeblend.cli import main

    stem = tmp_path / "cal.h5"
    assert (
        main(
            [
                "simulate",
                "--calibration",
                "--kind",
                "isolated",
                "--n",
                "24",
                "--seed",
                "8",
                "--out",
                str(stem),
                "--workers",
                "0",
                "--quiet",
                "--stamp-size",
                "32",
                "--instruments",
                "lsst",
                "--catalog-size",
                "3000",
            ]
        )
        == 0
    )
    assert (
        main(["shear-bias", "--model", "truth", "--data", str(stem), "--out", str(tmp_path / "sb")])
        == 0
    )
    result = json.loads((tmp_path / "sb" / "shear_bias.json").read_text())
    out, truth = result["output"], result["noiseless_target"]
    assert out["m"] == truth["m"] and out["n_used"] == truth["n_used"] >= 20
    # paired +-0.01 shears cancel shape noise: m is measured to a few per cent; KSB on
    # noiseless, PSF-convolved galaxies is unbiased to ~5 % (test_measure shows 3 % at n = 2.5)
    assert abs(truth["m"]) < 0.1 and truth["m_err"] < 0.05
    assert "shear bias" in result["definition"] and "m = " in capsys.readouterr().out
