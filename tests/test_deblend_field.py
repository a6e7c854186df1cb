"""Field mode: ``vaedeblend deblend`` and :func:`vaedeblend.fieldmode.deblend_field`.

What is checked, and against what:

- simulated LSST fields (``vaedeblend simulate --kind field``): detection completeness and
  purity (one-to-one match within 0.6"), flux and ellipticity errors against the truth table,
  with the shipped LSST deblender when this installation has it (or ``VAEDEBLEND_TEST_LSST_MODEL``
  names a model directory), else with a tiny network trained here in a few seconds; the
  thresholds depend on which (:data:`THRESHOLDS`);
- an LSST + Euclid field (with the shipped LSST + Euclid model, or the one named by
  ``VAEDEBLEND_TEST_LSST_EUCLID_MODEL``, else a stand-in) and a three-grid scene: grids related
  through the WCS, every band's stamp centred on one sky position, models pasted back where
  they came from;
- the iterative mode on a constructed pair (a faint galaxy beside a bright one) with an oracle
  deblender (and with the trained model when there is one);
- tiles, in this process and on a Dask cluster, give the single-tile catalog;
- bad inputs, the CLI and its files, the real HSC scene.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import galsim
import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.table import Table
from scipy.spatial import cKDTree
from tiny_stamps import TINY_NETWORK

import vaedeblend
from vaedeblend import cli
from vaedeblend.evaluation.fields import field_scores, match
from vaedeblend.fieldmode import (
    FLAGS,
    Execution,
    FieldInputError,
    apply_image_zeropoint,
    deblend_field,
    from_arrays,
    make_settings,
    read_fits,
)
from vaedeblend.instruments import band_at_depth, make_setup
from vaedeblend.models.api import BandMismatchError
from vaedeblend.simulation.field import field_wcs

TESTS = Path(__file__).resolve().parent
LSST = ["lsst_u", "lsst_g", "lsst_r", "lsst_i", "lsst_z", "lsst_y"]
HSC = ["hsc_g", "hsc_r", "hsc_i", "hsc_z", "hsc_y"]
# Share of the HSC scene's excess chi^2 (above noise) the residual may keep in r, i and z. The
# shipped, under-trained HSC model leaves 0.39, 0.61 and 0.70 (RESULTS.md, "HSC scene": it
# models the bright central galaxy's core too faint); 0.8 fails a model that takes out less
# than a fifth of the structure in any of them. Lower it as the models improve.
HSC_STRUCTURE_LEFT = 0.8
LSST_SCALE = 0.2
FIELD_SEEDS = (101, 102)

# Thresholds per model kind, from the values measured on the two test fields (seeds 101, 102:
# 30 galaxies with r < 25, docs/field_mode.md), with margin. completeness: truth r < 25 (the
# first pass alone, which does not depend on the model, finds 97 %); flux: median |dF/F| in r of
# the matched r < 25 galaxies, model flux and data flux; shape: median |e_ksb - e_true| of the
# matched r < 24.5 galaxies (KSB on the model against the intrinsic ellipticity; predicting
# e = 0 gives 0.28, KSB on the noiseless image 0.02-0.08).
# Measured (completeness, purity, flux, data flux, shape):
# - tiny: the network trained here (200 steps): 0.97, 1.00, 0.40, 0.077, 0.26.
# - vae: the LSST VAE of benchmarks/train_pretrained.sh (40 min), used on blends, which it was
#   not trained for: 1.00, 1.00, 0.34, 0.079, 0.22.
# - deblender: not measured yet (its training had not run); provisionally held to the VAE's
#   level, which a deblender trained on blends should reach.
THRESHOLDS = {
    "deblender": dict(purity=0.9, completeness=0.9, flux=0.4, flux_data=0.12, shape=0.26),
    "vae": dict(purity=0.9, completeness=0.9, flux=0.45, flux_data=0.12, shape=0.26),
    "tiny": dict(purity=0.85, completeness=0.85, flux=0.6, flux_data=0.12, shape=0.35),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # small networks gain nothing from threads on a shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class StubModel:
    """A stand-in deblender with the model interface (``band_ids``, ``stamp_size``,
    ``config['pixel_scales_arcsec']``, ``deblend``): it returns its input stamps inside a disc
    of ``radius_arcsec`` (None: the whole stamp) and records every batch it was given."""

    def __init__(self, bands, scales, stamp_size=32, radius_arcsec=None):
        self.band_ids = list(bands)
        self.stamp_size = stamp_size
        self.config = {"pixel_scales_arcsec": list(scales)}
        self.radius_arcsec = radius_arcsec
        self.calls: list[np.ndarray] = []

    def deblend(self, stamps, bands=None, context=None, batch_size=None):
        stamps = np.asarray(stamps, dtype=np.float32)
        self.calls.append(stamps.copy())
        if self.radius_arcsec is None:
            return stamps.copy()
        scale = dict(zip(self.band_ids, self.config["pixel_scales_arcsec"], strict=True))
        s = self.stamp_size
        yy, xx = np.mgrid[:s, :s] - (s - 1) / 2
        r = np.hypot(xx, yy)
        window = np.stack([r * scale[b] <= self.radius_arcsec for b in bands or self.band_ids])
        return stamps * window


class OracleModel(StubModel):
    """A perfect deblender for a constructed scene: it finds where each stamp was cut (the
    stamps are exact copies of the noisy image on one grid) and returns the noiseless image of
    the galaxy nearest the stamp centre (within 2 pixels), else zeros."""

    def __init__(self, noisy, galaxies, xy, bands, stamp_size=32):
        super().__init__(bands, [LSST_SCALE] * len(bands), stamp_size)
        s = stamp_size
        self.noisy = np.pad(noisy, ((0, 0), (s, s), (s, s)))
        self.galaxies = np.pad(galaxies, ((0, 0), (0, 0), (s, s), (s, s)))
        self.xy = np.asarray(xy, float)

    def _locate(self, stamp):
        s, c = self.stamp_size, self.stamp_size // 2
        ys, xs = np.nonzero(self.noisy[0, c:-c, c:-c] == stamp[0, c, c])
        for y0, x0 in zip(ys, xs, strict=True):
            if np.array_equal(self.noisy[:, y0 : y0 + s, x0 : x0 + s], stamp):
                return x0 - s, y0 - s
        raise AssertionError("stamp not found in the image")

    def deblend(self, stamps, bands=None, context=None, batch_size=None):
        stamps = np.asarray(stamps, dtype=np.float32)
        self.calls.append(stamps.copy())
        s, out = self.stamp_size, np.zeros_like(stamps)
        for i, stamp in enumerate(stamps):
            x0, y0 = self._locate(stamp)
            d = np.hypot(*(self.xy - [x0 + (s - 1) / 2, y0 + (s - 1) / 2]).T)
            if d.min() < 2.0:
                k = int(np.argmin(d))
                out[i] = self.galaxies[k, :, y0 + s : y0 + 2 * s, x0 + s : x0 + 2 * s]
        return out


def _train_tiny_lsst(root: Path):
    """A tiny LSST network (32x32 stamps), trained in a few seconds on simulated blends: a
    working model for the plumbing, not a good deblender."""
    from vaedeblend.models.training import train_vae

    data = root / "blends.h5"
    cli.main(
        [
            "simulate",
            "--kind",
            "blended",
            "--preset",
            "paper",
            "--instruments",
            "lsst",
            "--stamp-size",
            "32",
            "--centring",
            "detected",
            "--n",
            "400",
            "--seed",
            "5",
            "--out",
            str(data),
            "--catalog-size",
            "3000",
            "--workers",
            "0",
            "--quiet",
        ]
    )
    result = train_vae(
        data,
        root / "tiny",
        **{**TINY_NETWORK, "widths": (8, 16, 32)},  # 32x32 stamps: one level more
        epochs=10,
        steps_per_epoch=20,
        validate_first=False,
        noise_draw="gaussian",
        patience=0,
    )
    return vaedeblend.load_model(result.out)


@pytest.fixture(scope="module")
def lsst_model(tmp_path_factory):
    """(kind, model): a model named by VAEDEBLEND_TEST_LSST_MODEL, else the shipped LSST
    deblender, else a tiny network trained here; kind is the model's (``deblender``, ``vae``)
    or ``tiny``."""
    given = os.environ.get("VAEDEBLEND_TEST_LSST_MODEL")
    if given:
        model = vaedeblend.load_model(given)
        return model.kind, model
    try:
        model = vaedeblend.load_pretrained("lsst")
        return model.kind, model
    except FileNotFoundError:
        return "tiny", _train_tiny_lsst(tmp_path_factory.mktemp("tiny_model"))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def simulate(out: Path, instruments: str, seed: int) -> Path:
    """``vaedeblend simulate --kind field`` as the issue gives it (40" wide, 60 per arcmin^2)."""
    code = cli.main(
        [
            "simulate",
            "--kind",
            "field",
            "--preset",
            "paper",
            "--instruments",
            instruments,
            "--field-size",
            "40",
            "--density",
            "60",
            "--n",
            "1",
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--catalog-size",
            "3000",
        ]
    )
    assert code == 0
    return out


def band_files(field_dir: Path, bands=None) -> list[Path]:
    """The noisy image files of a simulated field (all bands, or ``bands`` in that order)."""
    if bands is not None:
        return [field_dir / f"{b}.fits" for b in bands]
    return sorted(
        p
        for p in field_dir.glob("*.fits")
        if not p.name.endswith("_noiseless.fits") and p.name != "truth.fits"
    )


@pytest.fixture(scope="module")
def lsst_fields(tmp_path_factory):
    root = tmp_path_factory.mktemp("fields")
    return [simulate(root / f"lsst_{s}", "lsst", s) for s in FIELD_SEEDS]


def draw_scene(galaxies, size=96, seed=0, bands=LSST, psf_fwhm=0.65):
    """A constructed LSST scene on one grid (0.2"), flat-spectrum exponential galaxies.

    ``galaxies``: (x, y, r mag, hlr arcsec, g1, g2), 0-based pixels. Returns (noisy (C, H, W),
    noiseless per galaxy (K, C, H, W), sky (C,), psf (C, P, P)), electrons.
    """
    setup = {b.band_id: b for b in make_setup("paper", "lsst").bands}
    psf = galsim.Kolmogorov(fwhm=psf_fwhm)
    each = np.zeros((len(galaxies), len(bands), size, size), np.float32)
    for k, (x, y, mag, hlr, g1, g2) in enumerate(galaxies):
        shape = galsim.Exponential(half_light_radius=hlr).shear(g1=g1, g2=g2)
        for c, band in enumerate(bands):
            flux = float(setup[band].mag_to_electrons(mag))
            img = galsim.ImageF(size, size, scale=LSST_SCALE)
            offset = (x - (size - 1) / 2, y - (size - 1) / 2)
            galsim.Convolve(shape.withFlux(flux), psf).drawImage(image=img, offset=offset)
            each[k, c] = img.array
    sky = np.array([setup[b].sky_level_electrons for b in bands])
    rng = np.random.default_rng(seed)
    total = each.sum(axis=0)
    noisy = (rng.poisson(np.clip(total, 0, None) + sky[:, None, None]) - sky[:, None, None]).astype(
        np.float32
    )
    psf_img = psf.drawImage(nx=41, ny=41, scale=LSST_SCALE).array
    return noisy, each, sky, np.stack([psf_img] * len(bands))


def write_band(path: Path, image, band, scale, sky=None, psf=None, wcs=True) -> Path:
    """One band as ``vaedeblend simulate`` writes it (square image, TAN WCS, SKYLEVEL, PSF)."""
    header = field_wcs(scale, image.shape[0]).to_header() if wcs else fits.Header()
    header["BAND"] = band
    header["BUNIT"] = "electron"
    header["PIXSCALE"] = scale
    if sky is not None:
        header["SKYLEVEL"] = sky
    hdus = [fits.PrimaryHDU(np.asarray(image, np.float32), header=header)]
    if psf is not None:
        hdus.append(fits.ImageHDU(psf, name="PSF"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


# --------------------------------------------------------------------------------------------
# Matching against the truth
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Simulated fields
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lsst_runs(lsst_model, lsst_fields):
    """(catalog with 3 passes, catalog with 1 pass, truth) per simulated LSST field."""
    _, model = lsst_model
    runs = []
    for d in lsst_fields:
        full = deblend_field(band_files(d), model)
        single = deblend_field(band_files(d), model, settings=make_settings(max_iterations=1))
        runs.append((full, single.catalog, Table.read(d / "truth.fits")))
    return runs


def test_simulated_lsst_fields_against_truth(lsst_model, lsst_runs):
    kind, model = lsst_model
    scores = field_scores([(r.catalog, t) for r, _, t in lsst_runs])
    first_pass = field_scores([(c, t) for _, c, t in lsst_runs])
    print(f"\nmodel {kind} ({model.path}): all passes {scores}; first pass {first_pass}")
    limits = THRESHOLDS[kind]
    assert scores["purity"] >= limits["purity"]
    assert scores["completeness"] >= limits["completeness"]
    assert scores["completeness"] >= first_pass["completeness"]
    assert scores["flux"] <= limits["flux"]
    assert scores["flux_data"] <= limits["flux_data"]
    assert scores["shape"] <= limits["shape"]
    for result, _, _ in lsst_runs:
        cat = result.catalog
        assert set(cat["iteration"]) <= {1, 2, 3}
        assert np.all(np.isfinite(cat["flux_lsst_r"])) and np.all(cat["flux_err_lsst_r"] > 0)
        assert np.all((cat["blendedness"] >= 0) & (cat["blendedness"] <= 1))
        assert result.stamps.shape == (len(cat), 6, model.stamp_size, model.stamp_size)
        assert np.all(np.isfinite(result.stamps))


def test_refined_field_mode_lowers_the_flux_error(lsst_model, lsst_runs, lsst_fields, tmp_path):
    """``vaedeblend deblend --refine`` (issue 15): each galaxy's stamp fitted jointly with the
    neighbours found in it, under the shipped prior. On the two test fields (one pass, 33
    galaxies) the median |dF/F| in r went 0.32 -> 0.17 with the lsst model of 2026-12-03
    morning, 0.235 -> 0.178 (0.76x) with the afternoon's (RESULTS.md "Refined field mode:
    lsst", four fresh fields: 0.68x; MADNESS's gain over a one-pass deblender is about 2x)
    and 0.186 -> 0.159 (0.85x) with the deblender continued with the shape-response penalty
    (2026-12-05: a better one pass leaves less to gain), with the same detections. Limits: at
    most 0.9x the one-pass error (a median over ~30 galaxies moves by about 10 % between
    models), shapes no worse than 0.02 (their median's scatter over re-shipped models)."""
    kind, model = lsst_model
    if kind != "deblender" or os.environ.get("VAEDEBLEND_TEST_LSST_MODEL"):
        pytest.skip("needs the shipped LSST deblender and its latent prior")
    files = list(map(str, band_files(lsst_fields[0])))
    alone = ["deblend", *files, "--model", "lsst", "--posterior", "--out", str(tmp_path / "p")]
    assert cli.main(alone) == 2  # --posterior needs --refine: one line, exit code 2
    runs = []
    for k, d in enumerate(lsst_fields):
        out = tmp_path / f"refined_{k}"
        args = ["deblend", *map(str, band_files(d)), "--model", "lsst", "--refine", "--quiet",
                "--max-iterations", "1", "--workers", "0", "--out", str(out)]  # fmt: skip
        assert cli.main(args) == 0
        cat = Table.read(out / "catalog.fits")  # NaN floats come back masked: fill them
        cat = Table({k: np.ma.filled(cat[k], np.nan) for k in cat.colnames}, meta=cat.meta)
        runs.append((cat, Table.read(d / "truth.fits")))
        assert runs[-1][0].meta["DEBLENDR"] == f"{model.name} refined"
    refined = field_scores(runs)
    plain = field_scores([(c, t) for _, c, t in lsst_runs])
    print(f"\none pass {plain}; refined {refined}")
    assert refined["n_detected"] == plain["n_detected"]  # the first pass's detections
    assert refined["flux"] <= 0.9 * plain["flux"]
    assert refined["shape"] <= plain["shape"] + 0.02


def _catalogue(field: Path, tmp_path: Path, columns=("ra", "dec")) -> Path:
    """Every simulated galaxy of a field as a source catalogue file (ECSV): sky positions
    (degrees) or reference pixels."""
    truth = Table.read(field / "truth.fits")
    source = {"ra": "ra_deg", "dec": "dec_deg", "x": "x_lsst_r", "y": "y_lsst_r"}
    path = tmp_path / f"sources_{field.name}_{columns[0]}.ecsv"
    Table({c: truth[source[c]] for c in columns}).write(path, overwrite=True)
    return path


def test_a_source_catalogue_replaces_the_first_pass_detection(lsst_model, lsst_fields, tmp_path):
    """``deblend --sources`` (issue 15): the galaxies of a catalogue are deblended where it puts
    them, every one once, whether it gives sky positions (through the WCS) or reference
    pixels; a later pass may still add what the catalogue left."""
    field = lsst_fields[0]
    truth = Table.read(field / "truth.fits")
    files = list(map(str, band_files(field)))
    catalogues = {}
    for columns in (("ra", "dec"), ("x", "y")):
        out = tmp_path / f"with_{columns[0]}"
        args = ["deblend", *files, "--model", "lsst", "--quiet", "--workers", "0",
                "--max-iterations", "1", "--sources", str(_catalogue(field, tmp_path, columns)),
                "--out", str(out)]  # fmt: skip
        assert cli.main(args) == 0
        catalogues[columns] = cat = Table.read(out / "catalog.fits")
        assert len(cat) == len(truth) and cat.meta["NKNOWN"] == len(truth)
        assert set(cat["iteration"]) == {1}
        # each row sits on one true galaxy: the WCS round trip is exact to ~1e-12 pixels
        dist, nearest = cKDTree(np.c_[truth["x_lsst_r"], truth["y_lsst_r"]]).query(
            np.c_[cat["x"], cat["y"]]
        )
        assert dist.max() < 1e-6 and len(set(nearest)) == len(truth)
    by_sky, by_pixel = catalogues.values()
    np.testing.assert_allclose(by_sky["flux_lsst_r"], by_pixel["flux_lsst_r"], rtol=1e-5)
    _, model = lsst_model
    sources = _catalogue(field, tmp_path)
    more = deblend_field(band_files(field), model, sources=sources)
    assert np.sum(more.catalog["iteration"] == 1) == len(truth) and len(more.catalog) >= len(truth)
    # tiles share the catalogue out: each source is deblended by the tile that owns it, once
    tiled = deblend_field(band_files(field), model, sources=sources,
                          execution=Execution(tile_pixels=50))  # fmt: skip
    _same_catalog(more.catalog, tiled.catalog)


def test_refinement_fits_the_catalogue_neighbours(lsst_model, lsst_fields, tmp_path):
    """``deblend --refine --sources`` (issue 15): each stamp fits its catalogue neighbours at
    their positions instead of detecting them, which removes refinement's flux damage from
    missed neighbours. On the two test fields (one pass, shipped lsst of 2026-12-05) the
    median |dF/F| in r of the r < 25 galaxies went 0.121 with detected neighbours -> 0.093 at
    the true positions, the shape error 0.196 -> 0.160 (RESULTS.md "Refined field mode: lsst"
    for fresh fields); with the detected deblender of 2026-12-06, flux 0.121 -> 0.116, and
    with the prior refitted on 2026-12-07, 0.111 -> 0.120 (detection improved; 30 galaxies),
    shapes 0.203 -> 0.170. Limits: flux and shapes each within 0.02 of detection's or better
    (their medians' scatter over re-shipped models and priors)."""
    kind, model = lsst_model
    if kind != "deblender" or os.environ.get("VAEDEBLEND_TEST_LSST_MODEL"):
        pytest.skip("needs the shipped LSST deblender and its latent prior")
    from vaedeblend.refinement import refined

    one_pass = make_settings(max_iterations=1)
    fitter = refined(model)
    known, detected = [], []
    for field in lsst_fields:
        truth = Table.read(field / "truth.fits")
        sources = _catalogue(field, tmp_path)
        cat = deblend_field(band_files(field), fitter, settings=one_pass, sources=sources)
        known.append((cat.catalog, truth))
        cat = deblend_field(band_files(field), fitter, settings=one_pass)
        detected.append((cat.catalog, truth))
    at_known, at_detected = field_scores(known), field_scores(detected)
    print(f"\nrefined at catalogue positions {at_known}; with detection {at_detected}")
    assert at_known["completeness"] == 1.0
    assert at_known["flux"] <= at_detected["flux"] + 0.02
    assert at_known["shape"] <= at_detected["shape"] + 0.02


def test_stamp_neighbours_are_the_nearest_known_galaxies_on_the_stamp():
    """The positions a refined deblender fits in field mode: slot 0 is the stamp's own
    galaxy at its offset from the stamp centre, then the nearest others whose centre is on
    the stamp, at most k in all, in arcsec."""
    from vaedeblend.fieldmode.sources import stamp_neighbours

    x = np.array([10.2, 14.0, 10.0, 30.0, 9.0])  # reference pixels
    y = np.array([20.0, 20.0, 25.0, 20.0, 19.0])
    got = stamp_neighbours(((10.0, 30.5), (20.0, 20.0)), (x, y), np.array([0, 3]), 8.0, 0.2, 3)
    # stamp 0: own galaxy 0 (+0.2 px), then galaxy 4 (1.4 px away) and 1 (3.8 px); galaxy 2
    # (5 px) is the fourth, beyond k = 3; galaxy 3 is off the stamp
    np.testing.assert_allclose(got.offsets_arcsec[0], [[0.04, 0.0], [-0.2, -0.2], [0.8, 0.0]])
    # stamp 1: its own galaxy 3 (-0.5 px) alone: the others are more than 8 px away in x
    assert got.used.tolist() == [[True, True, True], [True, False, False]]
    np.testing.assert_allclose(got.offsets_arcsec[1, 0], [-0.1, 0.0])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("sources.csv", "a,b\n1,2\n", "needs columns ra, dec"),
        ("sources.csv", "x,y\n1,nan\n", "NaN"),
        ("sources.csv", "x,y\n-100,-100\n", "none of the 1 sources"),
        ("sources.csv", "x,y\n1,abc\n", "not numeric"),
        ("sources.fits", "SIMPLE  = T truncated", "cannot read"),
    ],
)
def test_bad_source_catalogues_are_refused_in_one_line(tmp_path, lsst_fields, capsys, name,
                                                       content, message):  # fmt: skip
    path = tmp_path / name
    path.write_text(content)
    args = ["deblend", *map(str, band_files(lsst_fields[0])), "--model", "lsst", "--quiet",
            "--sources", str(path), "--out", str(tmp_path / "out")]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_posterior_columns_of_the_refined_field_mode(lsst_model):
    """``--refine --posterior`` (issue 15): every galaxy gets 16/50/84 % posterior quantiles of
    its flux per band and of e1, e2, ordered, around its own refined model (the Laplace
    posterior is centred on the refined latent: the model's flux and shape lie within one
    68 % width of the posterior median; measured 0.2-0.35 widths on this scene)."""
    from vaedeblend.refinement import refined

    kind, model = lsst_model
    if kind != "deblender" or os.environ.get("VAEDEBLEND_TEST_LSST_MODEL"):
        pytest.skip("needs the shipped LSST deblender and its latent prior")
    noisy, _, sky, psf = draw_scene(PAIR, seed=3)
    scene = from_arrays(noisy, LSST, pixel_scale_arcsec=LSST_SCALE, sky_level=list(sky),
                        psf=list(psf))  # fmt: skip
    with pytest.raises(FieldInputError, match="refined model"):
        deblend_field(scene, model, settings=make_settings(posterior=True))
    settings = make_settings(posterior=True, max_iterations=1)
    cat = deblend_field(scene, refined(model, posterior=True), settings=settings).catalog
    assert len(cat) == 2
    for name in ["flux_lsst_r", "flux_lsst_i", "e1", "e2"]:
        stem, band = (name[:4], name[4:]) if name.startswith("flux") else (name, "")
        q16, q50, q84 = (np.asarray(cat[f"{stem}_{q}{band}"]) for q in ("q16", "q50", "q84"))
        assert np.all(np.isfinite(q50)) and np.all(q16 <= q50) and np.all(q50 <= q84), name
        assert np.all(np.abs(np.asarray(cat[name]) - q50) <= q84 - q16), name
    assert cat["flux_q50_lsst_r"].description.startswith("posterior median")


def test_edge_galaxies_are_padded_and_flagged(lsst_runs):
    cats = [r.catalog for r, _, _ in lsst_runs]
    edge = np.concatenate([(c["flags"] & FLAGS["EDGE"]) != 0 for c in cats])
    assert edge.any(), "the simulated fields have galaxies at their edges"
    for result, _, _ in lsst_runs:
        near = (result.catalog["x"] < 15) | (result.catalog["y"] < 15)
        assert np.all(result.catalog["flags"][near] & FLAGS["EDGE"])
        assert np.all(np.isfinite(result.stamps))


def test_models_plus_residual_is_the_image(lsst_runs, lsst_fields):
    result = lsst_runs[0][0]
    for band in LSST:
        image = fits.getdata(lsst_fields[0] / f"{band}.fits")
        np.testing.assert_allclose(result.models[band] + result.residual[band], image, atol=0.05)
    assert float(result.models["lsst_r"].sum()) > 0


# --------------------------------------------------------------------------------------------
# Grids: LSST + Euclid
# --------------------------------------------------------------------------------------------


def test_stamps_share_one_sky_position_across_grids():
    """One galaxy drawn on three grids (0.2", 0.1", 0.3"): every band's stamp holds it at the
    same offset in arcsec from the stamp centre, and pasting the stamps back restores the
    image."""
    bands, scales, sizes = ["lsst_r", "euclid_vis", "euclid_h"], [0.2, 0.1, 0.3], [90, 180, 60]
    offset_arcsec = (1.37, -2.11)
    gal = galsim.Convolve(
        galsim.Exponential(half_light_radius=0.4, flux=1e5).shear(g1=0.2), galsim.Gaussian(fwhm=0.6)
    )
    images = []
    for scale, n in zip(scales, sizes, strict=True):
        img = galsim.ImageF(n, n, scale=scale)
        gal.drawImage(image=img, offset=(offset_arcsec[0] / scale, offset_arcsec[1] / scale))
        images.append(img.array.copy())
    model = StubModel(bands, scales, stamp_size=32)
    field = from_arrays(
        images,
        bands,
        wcs=[field_wcs(s, n) for s, n in zip(scales, sizes, strict=True)],
        sky_level=1.0,
    )
    result = deblend_field(field, model, settings=make_settings(max_iterations=1))
    assert len(result.catalog) == 1
    (stamps,) = model.calls
    centroids = []
    for c, scale in enumerate(scales):
        s = stamps[0, c]
        yy, xx = np.mgrid[: s.shape[0], : s.shape[1]] - (s.shape[0] - 1) / 2
        centroids.append(np.array([(s * xx).sum(), (s * yy).sum()]) / s.sum() * scale)
    assert np.all(np.abs(centroids[0]) <= 0.5 * scales[0] + 0.02)  # within half a pixel
    for c in (1, 2):
        np.testing.assert_allclose(centroids[c], centroids[0], atol=0.01)  # arcsec
    for band, image in zip(bands, images, strict=True):
        resid = result.residual[band]
        assert np.abs(resid).max() < 0.02 * image.max(), band


def test_lsst_euclid_field(tmp_path):
    """The simulated LSST + Euclid field: detection on the LSST grid, positions carried to
    every grid through the WCS, models and residuals on every band's own grid. Without the
    shipped LSST + Euclid model a window stub stands in (one pass)."""
    field = simulate(tmp_path / "le", "lsst+euclid", 103)
    truth = Table.read(field / "truth.fits")
    given = os.environ.get("VAEDEBLEND_TEST_LSST_EUCLID_MODEL")
    try:
        model = vaedeblend.load_model(given) if given else vaedeblend.load_pretrained("lsst+euclid")
        passes = 3
    except FileNotFoundError:
        bands = [*LSST, "euclid_vis", "euclid_y", "euclid_j", "euclid_h"]
        scales = [0.2] * 6 + [0.1, 0.3, 0.3, 0.3]
        model, passes = StubModel(bands, scales, stamp_size=32, radius_arcsec=1.0), 1
    result = deblend_field(band_files(field), model, settings=make_settings(max_iterations=passes))
    cat = result.catalog
    di, ti = match(cat, truth)
    # purity of the first pass (measured 9 of 9). Later passes of the LSST + Euclid model
    # shipped on 2026-12-03 add 5 detections, none within 0.6" of a true galaxy (residual
    # wings beyond the 12.8" stamps of a 17.6 mag galaxy, and faint galaxies placed 0.7-1.1"
    # off): test_lsst_euclid_field_later_passes_are_pure, a known failure (issue 12's note)
    first = np.asarray(cat["iteration"]) == 1
    assert np.isin(np.flatnonzero(first), di).sum() >= 0.9 * first.sum()
    bright = truth["mag_lsst_r"] < 25
    assert bright[ti].sum() >= 0.75 * bright.sum()  # measured 7 of 9 in one pass
    for band, scale in (("euclid_vis", 0.1), ("euclid_h", 0.3), ("lsst_r", 0.2)):
        err = (
            np.hypot(
                cat[f"x_{band}"][di] - truth[f"x_{band}"][ti],
                cat[f"y_{band}"][di] - truth[f"y_{band}"][ti],
            )
            * scale
        )
        assert np.median(err) < 0.1, band  # arcsec: the detection error, the same everywhere
        image = fits.getdata(field / f"{band}.fits")
        assert result.models[band].shape == image.shape
        np.testing.assert_allclose(result.models[band] + result.residual[band], image, atol=0.05)
    assert result.stamps.shape == (len(cat), 10, model.stamp_size, model.stamp_size)
    if passes == 3:
        keep = truth["mag_lsst_r"][ti] < 25
        for band in ("lsst_r", "euclid_vis", "euclid_h"):
            rel = np.abs(cat[f"flux_data_{band}"][di] / truth[f"flux_{band}"][ti] - 1)[keep]
            print(
                f"\nLSST+Euclid {model.kind}: median |dF/F| data flux {band} {np.median(rel):.3f}"
            )
            # one field, 7 galaxies with r < 25 (VAE: r 0.10, VIS 0.16, H 0.07): twice the bound
            assert np.median(rel) < 2 * THRESHOLDS[model.kind]["flux_data"], band


def test_lsst_euclid_field_later_passes_are_pure(tmp_path):
    """Later passes with the lsst+euclid model shipped 2026-12-03 took 5 spurious sources on
    this field (14 rows, 9 matched): re-detections inside a 17.6 mag galaxy's core and its
    light beyond its 12.8" stamp. The core and truncation vetoes of DeblendSettings remove
    them (measured: 9 rows, 9 matched)."""
    field = simulate(tmp_path / "le", "lsst+euclid", 103)
    truth = Table.read(field / "truth.fits")
    cat = deblend_field(band_files(field), vaedeblend.load_pretrained("lsst+euclid")).catalog
    di, _ = match(cat, truth)
    assert len(di) >= 0.9 * len(cat)


# --------------------------------------------------------------------------------------------
# The iterative mode
# --------------------------------------------------------------------------------------------

PAIR = [
    (40.3, 47.6, 20.5, 0.55, 0.1, -0.05),  # bright
    (45.9, 50.2, 24.0, 0.25, -0.2, 0.1),  # faint, 1.2" away: no peak of its own at first
    (78.0, 18.0, 22.5, 0.35, 0.0, 0.2),  # isolated
]


def test_iterative_mode_finds_the_faint_neighbour():
    noisy, each, sky, psf = draw_scene(PAIR, seed=3)
    xy = [g[:2] for g in PAIR]
    scene = from_arrays(
        noisy, LSST, pixel_scale_arcsec=LSST_SCALE, sky_level=list(sky), psf=list(psf)
    )
    oracle = OracleModel(noisy, each, xy, LSST)
    one = deblend_field(scene, oracle, settings=make_settings(max_iterations=1)).catalog
    assert len(one) == 2, "the first pass sees the bright galaxy and the isolated one"
    result = deblend_field(scene, OracleModel(noisy, each, xy, LSST))
    cat = result.catalog
    assert len(cat) == 3, "found once each: re-detections are not new galaxies"
    d = np.hypot(cat["x"] - PAIR[1][0], cat["y"] - PAIR[1][1])
    faint = int(np.argmin(d))
    assert d[faint] < 1.0 and cat["iteration"][faint] == 2
    flux_true = each[1, LSST.index("lsst_r")].sum()
    assert abs(cat["flux_lsst_r"][faint] / flux_true - 1) < 0.05


@pytest.mark.xfail(
    condition=not os.environ.get("VAEDEBLEND_TEST_LSST_MODEL"),
    strict=True,
    reason="the shipped LSST deblender (35 CPU minutes of training) is too weak: its model of "
    "the bright galaxy keeps the faint neighbour's light, so no residual is left to find it in "
    "(the oracle test above shows the iteration itself works); strict, so that a better model "
    "makes this fail until the marker is removed",
)
def test_iterative_mode_with_the_model(lsst_model):
    kind, model = lsst_model
    if kind != "deblender":
        pytest.skip(
            f"a {kind} network is no deblender (it keeps the neighbour's light in the "
            "bright galaxy's model): this test needs the shipped LSST deblender"
        )
    noisy, _, sky, psf = draw_scene(PAIR, seed=3)
    scene = from_arrays(
        noisy, LSST, pixel_scale_arcsec=LSST_SCALE, sky_level=list(sky), psf=list(psf)
    )
    cat = deblend_field(scene, model).catalog
    d = np.hypot(cat["x"] - PAIR[1][0], cat["y"] - PAIR[1][1])
    assert d.min() < 2.0, f"faint neighbour not found: {cat['x', 'y', 'iteration']}"


# --------------------------------------------------------------------------------------------
# Tiles and Dask
# --------------------------------------------------------------------------------------------


def _same_catalog(a: Table, b: Table, rtol=1e-3):
    assert len(a) == len(b)
    ia, ib = np.lexsort((a["y"], a["x"])), np.lexsort((b["y"], b["x"]))
    np.testing.assert_allclose(a["x"][ia], b["x"][ib], atol=1e-6)
    np.testing.assert_allclose(a["flux_lsst_r"][ia], b["flux_lsst_r"][ib], rtol=rtol)


def test_tiles_give_the_single_tile_catalog(lsst_model, lsst_runs, lsst_fields):
    _, model = lsst_model
    whole = lsst_runs[0][0]
    tiled = deblend_field(band_files(lsst_fields[0]), model, execution=Execution(tile_pixels=50))
    _same_catalog(whole.catalog, tiled.catalog)
    np.testing.assert_allclose(tiled.models["lsst_r"], whole.models["lsst_r"], atol=1.0)


def test_tiles_on_a_dask_cluster(lsst_model, lsst_runs, lsst_fields):
    from dask.distributed import LocalCluster

    _, model = lsst_model
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        execution = Execution(tile_pixels=100, scheduler=cluster.scheduler_address)
        result = deblend_field(band_files(lsst_fields[0]), model, execution=execution)
    _same_catalog(lsst_runs[0][0].catalog, result.catalog)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_nan_and_masked_pixels_are_flagged_not_propagated(lsst_model):
    _, model = lsst_model
    noisy, _, sky, psf = draw_scene(PAIR, seed=3)
    kw = dict(pixel_scale_arcsec=LSST_SCALE, sky_level=list(sky), psf=list(psf))
    one_pass = make_settings(max_iterations=1)
    clean = deblend_field(from_arrays(noisy, LSST, **kw), model, settings=one_pass)
    bad = noisy.copy()
    bad[1, 44:48, 33:37] = np.nan  # in the bright galaxy's stamp
    bad[3, 50, 30] = np.inf
    mask = np.zeros_like(noisy, dtype=np.uint8)
    mask[2, 60:62, 40:42] = 1
    result = deblend_field(from_arrays(bad, LSST, mask=list(mask), **kw), model, settings=one_pass)
    cat = result.catalog
    assert len(cat) == len(clean.catalog)
    assert all(np.all(np.isfinite(m)) for m in result.models.values())
    assert np.all(np.isfinite(result.stamps))
    assert np.isnan(result.residual["lsst_g"][44:48, 33:37]).all()
    assert np.isnan(result.residual["lsst_i"][50, 30])
    bright = int(np.argmin(np.hypot(cat["x"] - PAIR[0][0], cat["y"] - PAIR[0][1])))
    isolated = int(np.argmin(np.hypot(cat["x"] - PAIR[2][0], cat["y"] - PAIR[2][1])))
    assert cat["flags"][bright] & FLAGS["MASKED"]
    assert not cat["flags"][isolated] & FLAGS["MASKED"]
    k = int(np.argmin(np.hypot(clean.catalog["x"] - PAIR[2][0], clean.catalog["y"] - PAIR[2][1])))
    np.testing.assert_array_equal(result.stamps[isolated], clean.stamps[k])


def test_band_mismatch_and_order(lsst_model, lsst_runs, lsst_fields):
    _, model = lsst_model
    files = band_files(lsst_fields[0], LSST)
    with pytest.raises(BandMismatchError, match="lsst_y"):
        deblend_field(files[:-1], model)
    shuffled = deblend_field(band_files(lsst_fields[0], LSST[::-1]), model)
    _same_catalog(lsst_runs[0][0].catalog, shuffled.catalog, rtol=1e-5)
    with pytest.raises(BandMismatchError, match="hsc_g"), pytest.warns(UserWarning, match="BAND"):
        deblend_field(read_fits(files, bands=[*LSST[:-1], "hsc_g"]), model)


def test_pixel_scale_not_the_models():
    noisy, _, sky, _ = draw_scene(PAIR[:1], size=48)
    model = StubModel(LSST, [0.2] * 6)
    with pytest.raises(FieldInputError, match="0.2500.*0.2000"):
        deblend_field(from_arrays(noisy, LSST, pixel_scale_arcsec=0.25, sky_level=list(sky)), model)


def test_short_band_names_are_the_models():
    """``--bands u,g,r,i,z,y`` with the LSST model: the same catalogue as the full ids
    (issue 11, item 6: it was refused)."""
    noisy, _, sky, _ = draw_scene(PAIR[:1], size=48)
    model = StubModel(LSST, [0.2] * 6)
    kw = dict(pixel_scale_arcsec=0.2, sky_level=list(sky))
    short = deblend_field(from_arrays(noisy, ["u", "g", "r", "i", "z", "y"], **kw), model)
    full = deblend_field(from_arrays(noisy, LSST, **kw), model)
    assert short.catalog.colnames == full.catalog.colnames
    np.testing.assert_array_equal(short.catalog["flux_lsst_r"], full.catalog["flux_lsst_r"])


def test_empty_image_gives_an_empty_catalog(tmp_path):
    model = StubModel(LSST, [0.2] * 6)
    images = np.zeros((6, 64, 64), np.float32)
    field = from_arrays(images, LSST, pixel_scale_arcsec=0.2, sky_level=100.0)
    result = deblend_field(field, model, out=tmp_path / "out")
    assert len(result.catalog) == 0 and "flux_lsst_r" in result.catalog.colnames
    assert len(Table.read(tmp_path / "out" / "catalog.fits")) == 0
    assert result.stamps.shape == (0, 6, 32, 32)


def test_corrupt_truncated_and_misshapen_inputs(tmp_path, lsst_fields):
    model = StubModel(LSST, [0.2] * 6)
    files = band_files(lsst_fields[0], LSST)
    truncated = tmp_path / "lsst_r.fits"
    truncated.write_bytes(files[2].read_bytes()[:20_000])
    broken = [*files[:2], truncated, *files[3:]]
    with pytest.raises(FieldInputError, match="lsst_r.fits"):
        deblend_field(broken, model)
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"not a FITS file" * 300)
    with pytest.raises(FieldInputError, match="garbage.fits"):
        deblend_field([*files[:2], garbage, *files[3:]], model)
    with pytest.raises(FileNotFoundError):
        deblend_field([*files[:2], tmp_path / "absent.fits", *files[3:]], model)
    variance = fits.getdata(files[0])[:-1] ** 0 * 100.0
    with pytest.raises(FieldInputError, match="shape"):
        from_arrays(
            np.stack([fits.getdata(f) for f in files]),
            LSST,
            pixel_scale_arcsec=0.2,
            variance=[variance] * 6,
        )
    bad_var = tmp_path / "var.fits"
    fits.PrimaryHDU(variance.astype(np.float32)).writeto(bad_var)
    with pytest.raises(FieldInputError, match="shape"):
        deblend_field(read_fits(files, variance=[str(bad_var)] + [None] * 5), model)


def test_cube_input_and_gain(tmp_path, lsst_fields):
    """A (C, H, W) cube with BANDS reads as the per-band files; ADU images need a gain."""
    model = StubModel(LSST, [0.2] * 6, radius_arcsec=1.0)
    files = band_files(lsst_fields[0], LSST)
    per_band = deblend_field(files, model, settings=make_settings(max_iterations=1))
    header = fits.getheader(files[0])
    header["BANDS"] = ",".join(LSST)
    del header["BAND"], header["SKYLEVEL"]
    for k, f in enumerate(files):
        header[f"SKYLEV{k + 1}"] = fits.getheader(f)["SKYLEVEL"]
    cube = np.stack([fits.getdata(f) for f in files])
    fits.PrimaryHDU(cube, header=header).writeto(tmp_path / "cube.fits")
    from_cube = deblend_field(
        tmp_path / "cube.fits", model, settings=make_settings(max_iterations=1)
    )
    _same_catalog(per_band.catalog, from_cube.catalog, rtol=1e-6)
    header["BUNIT"] = "adu"
    fits.PrimaryHDU(cube / 2, header=header).writeto(tmp_path / "adu.fits")
    with pytest.raises(FieldInputError, match="gain"):
        deblend_field(tmp_path / "adu.fits", model)
    one_pass = make_settings(max_iterations=1)
    in_adu = deblend_field(read_fits([tmp_path / "adu.fits"], gain=2.0), model, settings=one_pass)
    _same_catalog(per_band.catalog, in_adu.catalog, rtol=1e-5)
    # calibrated fluxes (LSST calexps are in nJy) are not electrons either: a gain is needed
    header["BUNIT"] = "nJy"
    fits.PrimaryHDU(cube, header=header).writeto(tmp_path / "njy.fits")
    with pytest.raises(FieldInputError, match="nJy.*gain"):
        deblend_field(tmp_path / "njy.fits", model)
    # ... or their zero point: 1 nJy is AB 31.4, and the gain is the paper depth's electrons
    gains = np.array([band_at_depth(b).mag_to_electrons(31.4) for b in LSST])
    fits.PrimaryHDU(cube / gains[:, None, None], header=header).writeto(tmp_path / "njy2.fits")
    calibrated = read_fits([tmp_path / "njy2.fits"], gain=1.0)
    apply_image_zeropoint(calibrated, 31.4)
    in_njy = deblend_field(calibrated, model, settings=one_pass)
    _same_catalog(per_band.catalog, in_njy.catalog, rtol=1e-5)  # float32 division rounding
    # magnitudes from the zero point alone: AB 31.4 - 2.5 log10(flux in nJy)
    flux_njy = in_njy.catalog["flux_lsst_r"] / gains[LSST.index("lsst_r")]
    assert np.allclose(
        in_njy.catalog["mag_lsst_r"], 31.4 - 2.5 * np.log10(flux_njy), atol=1e-4
    )  # float32 columns
    with pytest.raises(ValueError, match="tile size"):
        Execution(tile_pixels=0)


def test_the_earlier_keywords_still_work_with_a_warning(tmp_path, lsst_fields):
    """deblend_field's keywords before FieldImages/Execution/settings (issue 14): the same
    catalogue, a DeprecationWarning, and the same checks, for one release."""
    model = StubModel(LSST, [0.2] * 6, radius_arcsec=1.0)
    files = band_files(lsst_fields[0], LSST)
    new = deblend_field(
        read_fits(files, bands=LSST), model, settings=make_settings(max_iterations=1)
    )
    with pytest.warns(DeprecationWarning, match="FieldImages"):
        old = deblend_field(files, model, bands=LSST, max_iterations=1, tile_size=60, workers=0)
    _same_catalog(new.catalog, old.catalog, rtol=1e-6)
    with pytest.raises(FieldInputError, match="either"), pytest.warns(DeprecationWarning):
        deblend_field(files, model, gain=2.0, image_zeropoint_mag=31.4)
    with pytest.raises(FieldInputError, match="tile size"), pytest.warns(DeprecationWarning):
        deblend_field(files, model, tile_size=0)


# --------------------------------------------------------------------------------------------
# Command line and files
# --------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    """``vaedeblend deblend ...`` in this process."""
    return cli.main(["deblend", *argv])


def test_cli_writes_every_output(tmp_path, lsst_model, lsst_fields):
    _, model = lsst_model
    out = tmp_path / "out"
    files = [str(p) for p in band_files(lsst_fields[0])]
    code = _cli(
        [
            *files,
            "--model",
            model.path,
            "--out",
            str(out),
            "--tile-size",
            "100",
            "--workers",
            "0",
            "--quiet",
        ]
    )
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert {"catalog.fits", "catalog.ecsv", "models.fits", "residual.fits", "stamps.fits"} <= set(
        names
    )
    assert not [n for n in names if n.startswith(".")]
    cat = Table.read(out / "catalog.fits")
    assert len(cat) == len(Table.read(out / "catalog.ecsv", format="ascii.ecsv")) > 10
    with fits.open(out / "models.fits") as models, fits.open(out / "residual.fits") as resid:
        bands = [models[0].header[f"BAND{k + 1}"] for k in range(6)]
        for k, band in enumerate(bands):
            image = fits.getdata(lsst_fields[0] / f"{band}.fits")
            np.testing.assert_allclose(models[0].data[k] + resid[0].data[k], image, atol=0.05)
    assert fits.getdata(out / "stamps.fits").shape[:2] == (len(cat), 6)


def test_cli_failure_leaves_no_output(tmp_path, lsst_fields):
    files = [str(p) for p in band_files(lsst_fields[0], LSST)]
    model = StubModel(LSST, [0.2] * 6)
    model_dir = tmp_path / "no_model"
    out = tmp_path / "out"
    assert _cli([*files, "--model", str(model_dir), "--out", str(out), "--quiet"]) == 2
    assert _cli([*files[:-1], "--model", "lsst", "--out", str(out), "--quiet"]) == 2
    both = ["--gain", "2", "--zero-point", "31.4"]
    assert _cli([*files, "--model", "lsst", "--out", str(out), "--quiet", *both]) == 2
    assert not out.exists()
    # a failure half-way (after the tiles ran) leaves an existing directory as it was
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    with pytest.raises(RuntimeError):
        deblend_field(files, _FailingAfter(model), out=out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


class _FailingAfter:
    """Wraps a model and fails when called: mid-run, after the output files were opened."""

    def __init__(self, model):
        self.band_ids, self.stamp_size, self.config = model.band_ids, 32, model.config

    def deblend(self, stamps, bands=None, context=None, batch_size=None):
        raise RuntimeError("model failed")


# --------------------------------------------------------------------------------------------
# Real data: the HSC scene
# --------------------------------------------------------------------------------------------


def _hsc_scene(shared_data):
    path = shared_data / "hsc_real" / "hsc_cosmos_scene.npz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    data = np.load(path, allow_pickle=False)
    return data["images"], data["psfs"], data["catalog"]


def test_hsc_scene_code_path(shared_data):
    """The real HSC g,r,i,z,y scene through field mode's code path alone (a window stub stands
    in for a network): sep background noise, no WCS, user pixel scale."""
    images, psfs, sep_catalog = _hsc_scene(shared_data)
    model = StubModel(HSC, [0.168] * 5, stamp_size=32, radius_arcsec=1.0)
    field = from_arrays(images, HSC, psf=list(psfs), pixel_scale_arcsec=0.168)
    result = deblend_field(field, model, settings=make_settings(max_iterations=1))
    cat = result.catalog
    assert np.all(np.isnan(cat["ra"]))
    d, _ = cKDTree(np.column_stack([cat["x"], cat["y"]])).query(
        np.column_stack([sep_catalog["x"], sep_catalog["y"]])
    )
    assert (d < 2.0).sum() >= 5, f"{d}"


def test_hsc_scene_with_the_hsc_model(shared_data):
    """The real HSC scene, in its zero-point-27 coadd units, deblended by the shipped HSC model
    (benchmarks/bench_hsc_scene.py): scarlet's sources are found, fluxes are positive, and the
    residual keeps much less structure than the image."""
    path = shared_data / "hsc_real" / "hsc_cosmos_scene.npz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    sys.path.insert(0, str(TESTS.parent / "benchmarks"))
    try:
        import bench_hsc_scene
    finally:
        sys.path.pop(0)
    result, structure = bench_hsc_scene.run("hsc", path)
    cat = result.catalog
    sep_catalog = np.load(path, allow_pickle=False)["catalog"]
    d, _ = cKDTree(np.column_stack([cat["x"], cat["y"]])).query(
        np.column_stack([sep_catalog["x"], sep_catalog["y"]])
    )
    assert (d < 2.0).sum() >= 5, f"{d}"  # 5 of scarlet's 6 sources within 2 pixels
    assert np.all(np.isfinite(cat["flux_hsc_i"])) and np.all(cat["flux_hsc_i"] > 0)
    assert np.all(np.isfinite(cat["mag_hsc_i"]))  # the zero point calibrates magnitudes
    for band in ("hsc_r", "hsc_i", "hsc_z"):  # the bands where the galaxies are brightest
        image, residual = structure[band]
        # The models must take out most of the structure: HSC_STRUCTURE_LEFT is the share of
        # the image's excess chi^2 (above noise) allowed to stay in the residual.
        assert residual.excess_chi2_per_pixel < HSC_STRUCTURE_LEFT * image.excess_chi2_per_pixel
        assert residual.n_sources < image.n_sources


# --------------------------------------------------------------------------------------------
# Large images
# --------------------------------------------------------------------------------------------


def test_big_field_helper_on_a_small_field(tmp_path):
    """benchmarks/bench_field.py's memory-mapped big field, at a small size: tiles over
    memory-mapped FITS inputs and outputs find every planted galaxy once."""
    sys.path.insert(0, str(TESTS.parent / "benchmarks"))
    try:
        import bench_field
    finally:
        sys.path.pop(0)
    result, planted, _ = bench_field.run(tmp_path, size=400, n_galaxies=6, tile_size=128, workers=0)
    cat = result.catalog
    assert len(cat) == len(planted)
    d, _ = cKDTree(np.column_stack([cat["x"], cat["y"]])).query(planted)
    assert np.all(d < 1.0)
    assert isinstance(result.models["lsst_r"], np.memmap)
    shutil.rmtree(tmp_path / "out")


def test_separate_variance_file_with_a_named_hdu(tmp_path, lsst_fields):
    """A variance map in its own file, in an HDU called VARIANCE (as pipelines write them), is
    read; with the sky's Poisson variance in it, detection matches the SKYLEVEL run."""
    model = StubModel(LSST, [0.2] * 6, radius_arcsec=1.0)
    files = band_files(lsst_fields[0], LSST)
    maps = []
    for f in files:
        sky = fits.getheader(f)["SKYLEVEL"]
        var = np.full(fits.getdata(f).shape, sky, np.float32)
        path = tmp_path / f"var_{f.name}"
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(var, name="VARIANCE")]).writeto(path)
        maps.append(str(path))
    from_sky = deblend_field(files, model, settings=make_settings(max_iterations=1)).catalog
    from_map = deblend_field(
        read_fits(files, variance=maps), model, settings=make_settings(max_iterations=1)
    ).catalog
    # the same noise level everywhere, so the same detections at the same positions
    assert len(from_map) == len(from_sky) > 0
    np.testing.assert_allclose(np.sort(from_map["x"]), np.sort(from_sky["x"]), atol=1e-6)
