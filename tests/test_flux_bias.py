"""The flux-bias penalty per blendedness bin (models/flux_bias.py) and its use in training."""

import numpy as np
import pytest
import torch
from tiny_stamps import TINY_NETWORK, write_tiny_dataset

from vaedeblend.measure import blendedness as blendedness_numpy
from vaedeblend.models import load_model
from vaedeblend.models.flux_bias import RunningFluxBias, blendedness
from vaedeblend.models.training import train_deblender, train_vae

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _blobs(n: int, seed: int) -> torch.Tensor:
    """(n, 2, 16, 16) float64 Gaussian blobs at random positions and fluxes, two bands."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    centres = rng.uniform(4, 12, size=(n, 2))
    images = np.exp(-0.5 * ((xx - centres[:, :1, None]) ** 2 + (yy - centres[:, 1:, None]) ** 2)
                    / 2.0**2)  # fmt: skip
    fluxes = rng.uniform(100, 1000, size=(n, 1, 1))
    return torch.tensor(np.stack([images * fluxes, 0.4 * images * fluxes], axis=1))


def test_blendedness_is_measures_b_tot():
    target, others = _blobs(20, 0)[:, 0], _blobs(20, 1)[:, 0]
    expected = blendedness_numpy(target.numpy(), others.numpy())
    assert expected.min() < 0.1 < expected.max()  # the blobs overlap in all degrees
    # the same formula in torch float64: rounding only
    np.testing.assert_allclose(blendedness(target, others).numpy(), expected, rtol=1e-12)
    zero = blendedness(torch.zeros(1, 16, 16, dtype=torch.float64), others[:1])
    assert zero.item() == 0.0  # no light: not blended (and no NaN)


def test_running_flux_bias_pulls_only_the_biased_bin_and_towards_the_truth():
    """Two bins: galaxies of the unblended bin are exact, those of the blended one 20 % too
    bright. The value is ln(1.2)^2 averaged over the two bins; only the biased galaxies get a
    gradient, and it lowers their flux; the running bias forgets with the memory's decay."""
    target = _blobs(4, 2)
    b_tot = torch.tensor([0.0, 0.01, 0.5, 0.6], dtype=torch.float64)  # first and last bins
    scale = torch.tensor([1.0, 1.0, 1.2, 1.2], dtype=torch.float64).reshape(4, 1, 1, 1)
    output = (target * scale).requires_grad_(True)
    running = RunningFluxBias(memory=4)
    value = running(output, target, b_tot)
    # the log of stamp sums of float64 images: exact to rounding, so 1e-9 relative
    assert value.item() == pytest.approx(np.log(1.2) ** 2 / 2, rel=1e-9)
    value.backward()
    assert output.grad[:2].abs().max().item() == 0.0  # the unbiased bin pulls nothing
    assert (output.grad[2:] > 0).all()  # descending lowers the too-bright fluxes
    np.testing.assert_allclose(running.biases().numpy()[[0, 4]], [0.0, np.log(1.2)], atol=1e-12)
    # exact fluxes from now on: the biased bin's sums decay by d = 1 - 1/memory per batch and
    # each batch adds the same count, so after k batches bias = ln 1.2 d^k (1 - d) / (1 - d^(k+1))
    for _ in range(3):
        running(target.clone(), target, b_tot)
    d = 0.75
    expected = np.log(1.2) * d**3 * (1 - d) / (1 - d**4)
    assert running.biases()[4].item() == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="memory"):
        RunningFluxBias(memory=0)
    with pytest.raises(ValueError, match="edges"):
        RunningFluxBias(edges=(0.3, 0.1))


def test_snr_edges_split_the_bins_so_only_the_biased_brightness_pulls():
    """Unblended galaxies only (a VAE's set): the bright ones 10 % too faint, the faint ones
    exact. Without S/N edges both share one bin, whose mean is biased, and the exact faint
    galaxies are brightened too; split at S/N 50 only the bright ones are."""
    target = _blobs(4, 3)
    b_tot = torch.zeros(4, dtype=torch.float64)
    snr = torch.tensor([10.0, 20.0, 100.0, 300.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 1.0, 0.9, 0.9], dtype=torch.float64).reshape(4, 1, 1, 1)
    grads = {}
    for edges in ((), (50.0,)):
        output = (target * scale).requires_grad_(True)
        running = RunningFluxBias(memory=4, snr_edges=edges)
        running(output, target, b_tot, snr).backward()
        grads[edges] = output.grad
    assert (grads[()][:2] < 0).all()  # one bin: its mean ln 0.95 brightens the exact ones too
    assert grads[(50.0,)][:2].abs().max().item() == 0.0  # split: the exact bin pulls nothing
    assert (grads[(50.0,)][2:] < 0).all()  # descending brightens the too-faint bright ones
    split = RunningFluxBias(memory=4, snr_edges=(50.0,))
    split(target * scale, target, b_tot, snr)
    # bins: blendedness bin x 2 S/N bins; the unblended bin's two halves hold 0 and ln 0.9
    np.testing.assert_allclose(split.biases().numpy()[:2], [0.0, np.log(0.9)], atol=1e-12)
    with pytest.raises(ValueError, match="S/N edges"):
        RunningFluxBias(snr_edges=(100.0, 50.0))
    with pytest.raises(ValueError, match="needs the targets' S/N"):
        split(target, target, b_tot)


def test_outliers_are_clipped_and_an_emptied_output_is_finite():
    """Each ln ratio counts within +/- 0.5 (a median-like, winsorised mean): one galaxy 100x
    too faint and one 10 % too bright give (-0.5 + ln 1.1) / 2, and only the bright one is
    pulled; an output with no light at all gives a finite penalty, 0.5^2, not inf or NaN."""
    target = _blobs(2, 3)
    scale = torch.tensor([0.01, 1.1], dtype=torch.float64).reshape(2, 1, 1, 1)
    output = (target * scale).requires_grad_(True)
    value = RunningFluxBias(memory=1)(output, target, torch.zeros(2, dtype=torch.float64))
    # float64 logs: rounding only
    assert value.item() == pytest.approx(((np.log(1.1) - 0.5) / 2) ** 2, rel=1e-9)
    value.backward()
    assert output.grad[0].abs().max().item() == 0.0 and output.grad[1].abs().max().item() > 0
    empty = RunningFluxBias(memory=1)(torch.zeros_like(target), target, torch.zeros(2))
    assert empty.item() == pytest.approx(0.25, rel=1e-9)


def test_flux_weight_trains_logs_the_bins_and_is_recorded(tmp_path):
    vae = tmp_path / "vae"
    train_vae(write_tiny_dataset(tmp_path / "iso.h5", n=120, seed=5), vae, max_steps=2,
              steps_per_epoch=2, **TINY_NETWORK)  # fmt: skip
    data = write_tiny_dataset(tmp_path / "blend.h5", n=120, blended=True, seed=4)
    out = tmp_path / "flux"
    train_deblender(vae, data, out, flux_weight=5.0, flux_memory=10, max_steps=4,
                    steps_per_epoch=2, **TINY_NETWORK)  # fmt: skip
    settings = load_model(out).config["training"]["settings"]
    assert (settings["flux_weight"], settings["flux_memory"]) == (5.0, 10)
    rows = next(out.glob("logs/version_*/metrics.csv")).read_text().splitlines()
    header = rows[0].split(",")
    assert {"train_flux", "flux_bias_bin0", "flux_bias_bin4"} <= set(header)
    logged = [r.split(",")[header.index("train_flux")] for r in rows[1:]]
    assert any(v and np.isfinite(float(v)) for v in logged)
    with pytest.raises(ValueError, match="flux_weight must be >= 0"):
        train_deblender(vae, data, tmp_path / "bad", flux_weight=-1.0, **TINY_NETWORK)
    # --flux-edges: one more edge, one more bin logged; edges outside (0, 1) are refused
    wider = tmp_path / "wider"
    train_deblender(vae, data, wider, flux_weight=5.0, flux_blendedness_edges=(0.02, 0.4, 0.55),
                    max_steps=2, steps_per_epoch=2, **TINY_NETWORK)  # fmt: skip
    header = next(wider.glob("logs/version_*/metrics.csv")).read_text().splitlines()[0]
    assert {"flux_bias_bin3"} <= set(header.split(",")) and "flux_bias_bin4" not in header
    with pytest.raises(ValueError, match="flux_blendedness_edges must be increasing"):
        train_deblender(vae, data, tmp_path / "bad2", flux_blendedness_edges=(0.4, 1.2),
                        **TINY_NETWORK)  # fmt: skip
    # S/N edges: each of the 4 blendedness bins split in 2 (bins 0-7 logged); a VAE trains
    # with them (its galaxies all unblended)
    split = tmp_path / "split"
    train_deblender(vae, data, split, flux_weight=5.0, flux_blendedness_edges=(0.02, 0.4, 0.55),
                    flux_snr_edges=(20.0,), max_steps=2, steps_per_epoch=2,
                    **TINY_NETWORK)  # fmt: skip
    header = next(split.glob("logs/version_*/metrics.csv")).read_text().splitlines()[0]
    assert "flux_bias_bin7" in header.split(",") and "flux_bias_bin8" not in header
    train_vae(write_tiny_dataset(tmp_path / "iso2.h5", n=120, seed=6), tmp_path / "vae_flux",
              flux_weight=5.0, flux_snr_edges=(20.0,), max_steps=2, steps_per_epoch=2,
              **TINY_NETWORK)  # fmt: skip
    with pytest.raises(ValueError, match="flux_snr_edges must be increasing"):
        train_deblender(vae, data, tmp_path / "bad3", flux_snr_edges=(50.0, 20.0),
                        **TINY_NETWORK)  # fmt: skip
