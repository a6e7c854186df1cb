"""Datasets end to end: determinism, resume after kill -9, Dask, centring modes, calibration."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vaedeblend.cli import main
from vaedeblend.dataset import DatasetError, open_dataset

SMALL = ["--catalog-size", "3000", "--stamp-size", "32", "--quiet"]


def simulate(out, *extra, n=12, seed=3, workers=0):
    args = [
        "simulate",
        "--n",
        str(n),
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--shard-size",
        "4",
        *SMALL,
        *extra,
    ]
    assert main(args) == 0
    return out


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a = simulate(tmp_path / "a.h5")
    b = simulate(tmp_path / "b.h5")
    c = simulate(tmp_path / "c.h5", seed=4)
    assert digest(a) == digest(b)
    with open_dataset(a) as da, open_dataset(c) as dc:
        assert not np.array_equal(da.read("target"), dc.read("target"))


def test_dask_cluster_gives_the_same_file_as_one_process(tmp_path):
    one = simulate(tmp_path / "one.h5")
    dask = simulate(tmp_path / "dask.h5", workers=2)
    assert digest(one) == digest(dask)


def test_layout_and_physical_properties(tmp_path):
    path = simulate(tmp_path / "blends.h5", "--store-neighbours", n=16)
    with open_dataset(path) as data:
        assert len(data) == 16
        assert data.band_ids[:6] == [f"lsst_{b}" for b in "ugrizy"]
        assert data.band_ids[6:] == ["euclid_vis", "euclid_y", "euclid_j", "euclid_h"]
        blend, target, others = (data.read(k) for k in ("blend", "target", "others"))
        assert blend.shape == target.shape == (16, 10, 32, 32) and blend.dtype == np.float32
        np.testing.assert_allclose(data.read("neighbours").sum(axis=1), others, atol=1e-3)
        n_sources = data.read("n_sources")
        truth = data.truth
        assert len(truth) == n_sources.sum()
        # isolated targets have B_tot = 0 exactly; blended ones are in (0, 1)
        b_tot = data.read("blendedness")
        assert np.all(b_tot[n_sources == 1] == 0)
        assert np.all((b_tot[n_sources > 1] > 0) & (b_tot[n_sources > 1] < 1))
        # the target is the brightest galaxy in LSST r
        for i in range(16):
            rows = truth[truth["blend_index"] == i]
            assert rows["is_target"][0] and rows["flux_lsst_r"][0] == rows["flux_lsst_r"].max()
        # truth fluxes vs stamp sums: a 32-px stamp (6.4" LSST, 3.2" VIS) loses the wings of large
        # galaxies, so compare medians of the ratio in LSST r, where < 5 % is lost for most.
        targets = truth[truth["is_target"]]
        ratio = target[:, 2].sum(axis=(1, 2)) / targets["flux_lsst_r"]
        assert 0.9 < np.median(ratio) <= 1.0005
        assert data.psf.shape[0] == 10 and np.isclose(data.psf[2].sum(), 1, atol=1e-5)


def test_uniform_offsets_stay_within_half_an_lsst_pixel(tmp_path):
    path = simulate(tmp_path / "u.h5", "--centring", "uniform", n=16)
    with open_dataset(path) as data:
        targets = data.truth[data.truth["is_target"]]
    assert np.all(np.abs(targets["dx_arcsec"]) <= 0.1)
    assert np.all(np.abs(targets["dy_arcsec"]) <= 0.1)
    assert np.std(targets["dx_arcsec"]) > 0.02  # and they are really offset (uniform: 0.058)


def test_detected_centring_puts_a_peak_at_the_centre_and_counts_rejections(tmp_path):
    path = simulate(tmp_path / "d.h5", "--centring", "detected", n=16)
    with open_dataset(path) as data:
        meta, targets = data.meta, data.truth[data.truth["is_target"]]
        truth = data.truth
        assert data.read("detected").all()
    assert meta["centring"] == "detected"
    assert meta["n_no_peak"] >= 0 and meta["n_rejected_close"] >= 0
    # the target is the galaxy nearest the brightest peak, which is within half a pixel of the
    # centre: the target itself may sit a little further (a neighbour's light shifts the peak)
    offset_pixels = np.hypot(targets["x_pixel"] - 15.5, targets["y_pixel"] - 15.5)
    assert np.median(offset_pixels) < 1.0
    for i in range(16):
        rows = truth[truth["blend_index"] == i]
        separation = np.hypot(
            rows["dx_arcsec"][1:] - rows["dx_arcsec"][0],
            rows["dy_arcsec"][1:] - rows["dy_arcsec"][0],
        )
        assert np.all(separation >= 0.325)


def test_calibration_sets_share_galaxies_and_noise(tmp_path):
    out = tmp_path / "cal.h5"
    simulate(out, "--calibration", "--kind", "isolated", n=8)
    files = {label: tmp_path / f"cal_{label}.h5" for label in ("g0", "g1p", "g1m", "g2p", "g2m")}
    with open_dataset(files["g0"]) as g0, open_dataset(files["g1p"]) as g1p:
        noise0 = g0.read("blend") - g0.read("target")
        noise1 = g1p.read("blend") - g1p.read("target")
        np.testing.assert_allclose(noise0, noise1, atol=1e-2)  # float32 rounding of large values
        assert g1p.meta["shear"] == [0.01, 0.0] and g0.meta["noise"] == "gaussian"
        e0, e1 = g0.truth["e1"], g1p.truth["e1"]
    # a +0.01 shear raises e1 by about 0.01 (1 - |e|^2 factor aside)
    assert 0.005 < np.mean(e1 - e0) < 0.0105


def test_resume_after_kill_gives_the_same_file(tmp_path):
    reference = simulate(tmp_path / "ref.h5", n=24)
    out = tmp_path / "killed.h5"
    cmd = [
        sys.executable,
        "-m",
        "vaedeblend.cli",
        "simulate",
        "--n",
        "24",
        "--seed",
        "3",
        "--out",
        str(out),
        "--workers",
        "0",
        "--shard-size",
        "4",
        *SMALL,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "killed.h5.parts"
    deadline = time.time() + 120
    while time.time() < deadline:
        if parts.exists() and len(list(parts.glob("shard_*.h5"))) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(parts.glob("shard_*.h5")))
    assert not out.exists() and 2 <= finished < 6, "kill must land mid-run for this test"
    with pytest.raises(DatasetError, match="unfinished run"):
        open_dataset(out)
    simulate(out, n=24)
    assert digest(out) == digest(reference)
    assert not parts.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--centring", "middle"], "invalid choice"),
        (["--count-probabilities", "0.5,0.2"], "do not sum to 1"),
        (["--preset", "survey", "--instruments", "jwst"], "unknown survey"),
    ],
)
def test_bad_arguments_are_named(tmp_path, capsys, args, message):
    try:
        code = main(["simulate", "--n", "2", "--seed", "1", "--out", str(tmp_path / "x.h5"), *args])
    except SystemExit as exit_:
        code = exit_.code
    assert code != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_survey_preset_and_other_surveys(tmp_path):
    path = simulate(tmp_path / "hsc.h5", "--preset", "survey", "--instruments", "hsc", n=4)
    with open_dataset(path) as data:
        assert data.band_ids == [f"hsc_{b}" for b in "grizy"]
        assert np.allclose(data.pixel_scales_arcsec, 0.168)
    path = simulate(tmp_path / "survey.h5", "--preset", "survey", n=4)
    with open_dataset(path) as data:
        setup = data.meta["setup"]["bands"]
        fwhm = {b["band_id"]: b["psf"]["fwhm_arcsec"] for b in setup}
        assert fwhm["lsst_u"] > fwhm["lsst_y"]  # per-band seeing from surveycodex
        vis = next(b for b in setup if b["band_id"] == "euclid_vis")
        assert vis["exposure_s"] == pytest.approx(4 * 565.0)  # 4 exposures of the wide survey


def test_field_images_share_the_sky_and_hold_the_truth_flux(tmp_path):
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    out = tmp_path / "field"
    assert (
        main(
            [
                "simulate",
                "--kind",
                "field",
                "--n",
                "1",
                "--seed",
                "2",
                "--out",
                str(out),
                "--field-size",
                "30",
                "--density",
                "60",
                "--catalog-size",
                "3000",
            ]
        )
        == 0
    )
    truth = Table.read(out / "truth.fits")
    assert len(truth) > 5
    for band in ("lsst_r", "euclid_vis", "euclid_h"):
        image = fits.getdata(out / f"{band}_noiseless.fits")
        header = fits.getheader(out / f"{band}.fits")
        assert header["BAND"] == band and header["BUNIT"] == "electron"
        # galaxies near the edge lose light outside the field; those inside keep nearly all
        # of it (the 96-px stamp truncates < 2 %): the total lies between 85 % and 100.05 %
        ratio = image.sum() / truth[f"flux_{band}"].sum()
        assert 0.85 < ratio < 1.0005, (band, ratio)
        # the brightest galaxy's light-weighted centroid is at its WCS position (0.5 pixel)
        k = int(np.argmax(truth[f"flux_{band}"]))
        x, y = WCS(header).all_world2pix(truth["ra_deg"][k], truth["dec_deg"][k], 0)
        r = 8 if band != "euclid_vis" else 16
        yc, xc = int(np.round(y)), int(np.round(x))
        yy, xx = np.mgrid[yc - r : yc + r + 1, xc - r : xc + r + 1]
        inside = (yy >= 0) & (xx >= 0) & (yy < image.shape[0]) & (xx < image.shape[1])
        w = image[yy[inside], xx[inside]]
        if truth[f"x_{band}"][k] > r and truth[f"y_{band}"][k] > r:
            assert abs((w * xx[inside]).sum() / w.sum() - x) < 0.5
            assert abs((w * yy[inside]).sum() / w.sum() - y) < 0.5
    _observed_shapes_are_the_field_galaxies_own(out, truth)


def _observed_shapes_are_the_field_galaxies_own(out, truth) -> None:
    """truth.fits's g1_observed, g2_observed (reference band lsst_r) are what adaptive moments
    read on the galaxy in the noiseless field, checked on its three most isolated galaxies."""
    from astropy.io import fits

    from vaedeblend.measure import measure_shapes

    image = fits.getdata(out / "lsst_r_noiseless.fits").astype(float)
    x, y = np.asarray(truth["x_lsst_r"]), np.asarray(truth["y_lsst_r"])
    gap = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(gap, np.inf)
    half = 16  # a 32-pixel (6.4") cut-out
    inside = (np.minimum(x, y) > half + 2) & (np.maximum(x, y) < image.shape[0] - half - 2)
    for k in np.argsort(-np.where(inside, gap.min(axis=1), 0))[:3]:
        xc, yc = int(np.round(x[k])), int(np.round(y[k]))
        cut = image[yc - half : yc + half, xc - half : xc + half]
        shape = measure_shapes(cut[None], None, 0.2, method="adaptive")
        # measured: within 5e-5 (the pixel phase of the field's drawing); 1e-3 leaves room for
        # other platforms' GalSim builds, and is a hundred times below the shapes' spread (~0.1)
        assert abs(shape.g1[0] - truth["g1_observed"][k]) < 1e-3
        assert abs(shape.g2[0] - truth["g2_observed"][k]) < 1e-3


@pytest.mark.parametrize(
    "source, folder",
    [
        ("cosmos", "cosmos_23.5_example"),
        ("catsim", "catsim_sample/sample_input_catalog.fits"),
        ("real", "cosmos_real_26_dev"),
    ],
)
def test_simulate_from_every_catalog_source(tmp_path, shared_data, source, folder):
    """``vaedeblend simulate`` runs end to end from each real catalog, and the stamps hold the
    catalog's light: target fluxes in LSST r match the truth table."""
    path = tmp_path / f"{source}.h5"
    extra = ["--catalog", source, "--catalog-path", str(shared_data / folder)]
    if source == "catsim":
        extra += ["--mag-limit", "27"]  # the sample's median i is 26.2: keep most rows
    assert (
        main(
            [
                "simulate",
                "--n",
                "6",
                "--seed",
                "5",
                "--out",
                str(path),
                "--workers",
                "0",
                "--quiet",
                *extra,
            ]
        )
        == 0
    )
    with open_dataset(path) as data:
        assert data.meta["catalog"]["source"] == source
        targets = data.truth[data.truth["is_target"]]
        flux = data.read("target")[:, 2].sum(axis=(1, 2))
    # 64-pixel (12.8") stamps keep all but the far wings of these galaxies: within 3 %
    np.testing.assert_allclose(flux, targets["flux_lsst_r"], rtol=0.03)


def test_existing_dask_scheduler_by_address(tmp_path):
    """Users with a cluster pass its scheduler address; the file is the same as in one process."""
    from dask.distributed import LocalCluster

    reference = simulate(tmp_path / "ref.h5")
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        remote = simulate(
            tmp_path / "remote.h5", "--scheduler", cluster.scheduler_address, workers=0
        )
    assert digest(remote) == digest(reference)
