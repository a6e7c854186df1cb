"""Output heads, their losses, the warm-up + cosine schedule and training that continues a model
(``init_from``) with its lineage (issue 12)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_stamps import TINY_NETWORK, write_tiny_dataset

from vaedeblend.evaluation.bias import linear_fit
from vaedeblend.measure import measure_shapes
from vaedeblend.models import load_model
from vaedeblend.models.ksb_control import TARGET_BOUNDS, KsbSlopeControl
from vaedeblend.models.lightning import warmup_cosine_factor
from vaedeblend.models.losses import (
    SHAPE_WINDOW_PX,
    RunningResponse,
    asinh_chi2_weight,
    asinh_loss,
    gaussian_loss,
    noise_variance,
    response_penalty,
    shape_penalty,
)
from vaedeblend.models.normalisation import Intensity, asinh_constants
from vaedeblend.models.training import train_deblender, train_vae

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SKY = np.array([40.0, 80.0, 120.0])


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    return {
        "isolated": write_tiny_dataset(root / "iso.h5", n=160, seed=0),
        "blended": write_tiny_dataset(root / "blend.h5", n=160, blended=True, seed=1),
    }


@pytest.fixture(scope="module")
def asinh_vae(sets, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "vae"
    train_vae(sets["isolated"], out, loss="chi2", max_steps=30, steps_per_epoch=10, **TINY_NETWORK)
    return out


def test_asinh_head_reaches_zero_exactly_and_has_no_ceiling():
    intensity = Intensity("asinh", asinh_constants(SKY))
    x = np.array([0.0, -3.0, 1.0, 1e3, 1e6, 1e9])[None, None, None, :].repeat(3, axis=1)
    s = intensity.network_input(x)
    assert np.all(s[..., 0] == 0)  # the empty sky is exactly s = 0
    # float64 round trip: asinh/sinh lose at most a few ulps, even at 1e9 electrons, where the
    # sigmoid head's y would be 1 - 1e-16 (beyond float32 and its clip at 1 - 1e-6)
    np.testing.assert_allclose(intensity.electrons(s), x, rtol=1e-12, atol=1e-9)


def test_chi2_loss_is_the_gaussian_likelihood_to_first_order():
    """For small errors the asinh-space chi2 equals the electrons chi^2 with the true variance;
    the relative difference is of the order of the error in s (here 1e-3)."""
    g = torch.Generator().manual_seed(0)
    a = torch.tensor(asinh_constants(SKY), dtype=torch.float64)
    target = torch.rand((4, 3, 8, 8), generator=g, dtype=torch.float64) * 1e4
    intensity = Intensity("asinh", a)
    s_t = intensity.target(target)
    s = s_t + 1e-3 * torch.randn(s_t.shape, generator=g, dtype=torch.float64)
    var = noise_variance(target, torch.tensor(SKY))
    mu, sigma = torch.zeros(4, 2, dtype=torch.float64), torch.ones(4, 2, dtype=torch.float64)
    ours = asinh_loss(s, s_t, asinh_chi2_weight(target, a, var), mu, sigma, 0.0)
    exact = gaussian_loss(intensity.electrons(s), target, var, mu, sigma, 0.0)
    assert ours.recon.item() == pytest.approx(exact.recon.item(), rel=1e-2)
    # the weight is (a cosh s_t)^2 / variance, computed without cosh
    cosh_form = (a.reshape(1, -1, 1, 1) * torch.cosh(s_t)).square() / var
    torch.testing.assert_close(asinh_chi2_weight(target, a, var), cosh_form, rtol=1e-10, atol=0)


def test_warmup_cosine_schedule_and_its_continuation():
    assert warmup_cosine_factor(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine_factor(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine_factor(55, 10, 100) == pytest.approx(0.05 + 0.95 * 0.5)
    assert warmup_cosine_factor(100, 10, 100) == pytest.approx(0.05)
    assert warmup_cosine_factor(500, 10, 100) == pytest.approx(0.05)
    factors = [warmup_cosine_factor(k, 10, 100) for k in range(10, 101)]
    assert all(b <= a for a, b in zip(factors, factors[1:], strict=False))  # never rises


def test_asinh_model_is_recorded_and_loads(asinh_vae):
    model = load_model(asinh_vae)
    assert model.head == "asinh" and model.config["output_head"] == "asinh"
    np.testing.assert_allclose(model.norm_constants, np.sqrt(SKY))
    lineage = model.config["training"]["lineage"]
    assert lineage["steps"] == 30 and len(lineage["runs"]) == 1
    assert lineage["cpu_hours"] > 0
    # an output of s = 0 is exactly 0 electrons (the sigmoid head's floor is not 0)
    zeros = model.intensity.electrons(np.zeros((1, 3, 16, 16)))
    assert np.all(zeros == 0)


def test_init_from_continues_weights_and_lineage(sets, asinh_vae, tmp_path):
    out = tmp_path / "continued"
    # lr 1e-12: Adam moves each weight by about lr per step, so after one step the weights
    # must still equal the source's to 1e-9; a fresh initialisation would differ by O(0.1)
    train_vae(sets["isolated"], out, init_from=str(asinh_vae), max_steps=1, lr=1e-12,
              batch_size=32, accelerator="cpu", progress=False)  # fmt: skip
    # parameters only: BatchNorm's running statistics move with every batch whatever the lr
    before = dict(load_model(asinh_vae).net.named_parameters())
    after = dict(load_model(out).net.named_parameters())
    for name, tensor in before.items():
        torch.testing.assert_close(after[name], tensor, atol=1e-9, rtol=0)
    lineage = load_model(out).config["training"]["lineage"]
    assert lineage["steps"] == 31
    assert [r["init_from"] for r in lineage["runs"]] == [None, str(asinh_vae)]
    assert load_model(out).config["loss"] == "chi2"  # inherited
    with pytest.raises(ValueError, match="drop \\['latent_dim'\\]"):
        train_vae(sets["isolated"], tmp_path / "x", init_from=str(asinh_vae), latent_dim=4)


def test_lineage_hours_keep_cpu_and_accelerator_time_apart():
    """A lineage that mixes CPU runs and a run on a GPU: CPU-hours sum the CPU runs only (an
    hour of an accelerator is not an hour of a core), accelerator hours the others; a GPU
    record written before they were counted gives its wall time; an unknown CPU run makes the
    CPU total unknown rather than too small."""
    from vaedeblend.models.training import lineage_hours

    old = {"init_from": None, "steps": 10, "cpu_hours": 0.5}  # no device recorded: a CPU run
    cpu = {"device": "cpu", "steps": 20, "cpu_hours": 0.25, "wall_s": 900.0}
    gpu_old = {"device": "cuda", "steps": 30, "cpu_hours": None, "wall_s": 72.0}
    gpu = {"device": "cuda", "steps": 40, "cpu_hours": None, "accelerator_hours": 0.1}
    assert lineage_hours([old, cpu, gpu_old, gpu]) == (0.75, 0.12)
    assert lineage_hours([old, cpu]) == (0.75, 0.0)
    assert lineage_hours([{**old, "cpu_hours": None}, gpu])[0] is None


def test_deblender_continues_its_encoder_on_a_new_decoder(sets, asinh_vae, tmp_path):
    first = tmp_path / "deb1"
    kw = dict(max_steps=5, steps_per_epoch=5, batch_size=32, accelerator="cpu", progress=False)
    train_deblender(asinh_vae, sets["blended"], first, **kw)
    # a continued VAE (new decoder) and the deblender continued on it
    vae2 = tmp_path / "vae2"
    train_vae(sets["isolated"], vae2, init_from=str(asinh_vae), **kw)
    second = tmp_path / "deb2"
    train_deblender(vae2, sets["blended"], second, init_from=str(first), lr=1e-12, **kw)
    deb2, deb1, v2 = (load_model(p).net.state_dict() for p in (second, first, vae2))
    for name in deb2:
        if name.startswith("decoder."):
            assert torch.equal(deb2[name], v2[name]), name  # frozen: bit-identical
        elif name.endswith("weight") and not name.startswith("encoder.input_norm"):
            torch.testing.assert_close(deb2[name], deb1[name], atol=1e-8, rtol=0)
    assert load_model(second).config["training"]["lineage"]["steps"] == 10


def test_encoder_only_continues_a_vae_and_keeps_its_decoder(sets, tmp_path):
    """A VAE continued with encoder_only trains its encoder and keeps its decoder
    bit-identical, so the deblenders on that decoder still start from their own steering."""
    first = tmp_path / "vae"
    train_vae(sets["isolated"], first, max_steps=2, steps_per_epoch=2, **TINY_NETWORK)
    out = tmp_path / "encoder_only"
    # a large constant step and EMA: both must leave the decoder exactly as it was
    train_vae(sets["isolated"], out, init_from=str(first), encoder_only=True, max_steps=3,
              steps_per_epoch=3, lr=0.01, scheduler="none", ema_decay=0.9)  # fmt: skip
    before, after = (load_model(p).net.state_dict() for p in (first, out))
    decoder = [k for k in before if k.startswith("decoder.")]
    assert decoder and all(torch.equal(before[k], after[k]) for k in decoder)
    encoder = [k for k in before if k.startswith("encoder.")]
    assert any(not torch.equal(before[k], after[k]) for k in encoder)  # the encoder did train
    assert load_model(out).config["training"]["settings"]["encoder_only"] is True
    with pytest.raises(ValueError, match="needs init_from"):
        train_vae(sets["isolated"], tmp_path / "x", encoder_only=True, **TINY_NETWORK)


def test_models_without_a_head_load_as_sigmoid(sets, tmp_path):
    out = tmp_path / "bce"
    train_vae(sets["isolated"], out, max_steps=2, steps_per_epoch=2, **TINY_NETWORK)
    config = json.loads((out / "config.json").read_text())
    assert config["output_head"] == "sigmoid"
    old = tmp_path / "old"
    shutil.copytree(out, old)
    del config["output_head"], config["architecture"]["head"]
    (old / "config.json").write_text(json.dumps(config))
    stamps = np.random.default_rng(1).normal(100, 10, (2, 3, 16, 16))
    assert load_model(old).head == "sigmoid"
    np.testing.assert_array_equal(load_model(old).deblend(stamps), load_model(out).deblend(stamps))


def test_intensity_scale_widens_a_continued_sigmoid_head(sets, asinh_vae, tmp_path):
    first = tmp_path / "bce"
    train_vae(sets["isolated"], first, max_steps=2, steps_per_epoch=2, **TINY_NETWORK)
    out = tmp_path / "scaled"
    train_vae(sets["isolated"], out, init_from=str(first), intensity_scale=4.0, max_steps=1,
              batch_size=32, accelerator="cpu", progress=False)  # fmt: skip
    before = np.array(load_model(first).config["norm_constants_electrons"])
    after = np.array(load_model(out).config["norm_constants_electrons"])
    np.testing.assert_allclose(after, 4 * before, rtol=1e-6)  # float32 buffer: 1e-7 relative
    with pytest.raises(ValueError, match="sigmoid head's I_b only"):
        train_vae(sets["isolated"], tmp_path / "a", init_from=str(asinh_vae), intensity_scale=2.0)
    with pytest.raises(ValueError, match="keeps its VAE's I_b"):
        train_deblender(out, sets["blended"], tmp_path / "d", intensity_scale=2.0)


def test_bce_refuses_the_asinh_head(sets, tmp_path):
    with pytest.raises(ValueError, match="loss 'bce' needs the output head sigmoid"):
        train_vae(sets["isolated"], tmp_path / "r", loss="bce", head="asinh", **TINY_NETWORK)


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_float16_weights_change_outputs_little(sets, tmp_path, loss):
    """Shipped models store float16 weights (half the size). float16 keeps 11 significant bits
    (relative rounding 2^-11 = 5e-4 per weight); through the network's layers the outputs move
    by far less than 1 % of a stamp's peak, the bound asserted here (measured: a few 1e-4)."""
    from vaedeblend.models.io import export_model

    out = tmp_path / loss
    train_vae(sets["isolated"], out, loss=loss, max_steps=10, steps_per_epoch=10, **TINY_NETWORK)
    full = load_model(out)
    config = {**full.config, "weights": {**full.config["weights"], "dtype": "float16"}}
    export_model(full.net, tmp_path / "half", config)
    half = load_model(tmp_path / "half")
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.6 * (
        out / "model.safetensors"
    ).stat().st_size
    stamps = np.random.default_rng(3).normal(0, 1, (8, 3, 16, 16)) * np.sqrt(SKY)[:, None, None]
    stamps += full.sample(8, seed=2)
    a, b = full.deblend(stamps), half.deblend(stamps)
    peak = np.abs(a).max(axis=(1, 2, 3), keepdims=True)
    assert np.max(np.abs(a - b) / peak) < 1e-2


def _gaussian_stamps(cov: np.ndarray, size: int = 48) -> torch.Tensor:
    """(1, 2, size, size) float64: an elliptical Gaussian of pixel covariance ``cov`` centred on
    the stamp, in two bands of different brightness."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    pos = np.stack([xx, yy], axis=-1)
    image = np.exp(-0.5 * np.einsum("...i,ij,...j", pos, np.linalg.inv(cov), pos))
    return torch.tensor(np.stack([image, 0.3 * image])[None])


def test_shape_penalty_is_the_squared_ellipticity_error_and_ignores_flux():
    cov = np.array([[9.0, 2.0], [2.0, 4.0]])  # pixels^2: chi = (0.38, 0.31) unwindowed
    target = _gaussian_stamps(cov)
    # Windows of a Gaussian multiply Gaussians: the windowed covariance is (C^-1 + I/s^2)^-1.
    # The window's sigma is the rms radius measured through a first 8-pixel window.
    first = np.linalg.inv(np.linalg.inv(cov) + np.eye(2) / 8.0**2)
    s2 = np.clip(0.5 * np.trace(first), SHAPE_WINDOW_PX[0] ** 2, SHAPE_WINDOW_PX[1] ** 2)
    windowed = np.linalg.inv(np.linalg.inv(cov) + np.eye(2) / s2)
    chi = np.array([windowed[0, 0] - windowed[1, 1], 2 * windowed[0, 1]]) / np.trace(windowed)
    round_output = _gaussian_stamps(np.eye(2) * 5.0)
    # A round output centred on the target has chi = 0 in any circular window: the penalty is
    # |chi_target|^2 (both bands the same shape). Pixelised moments of Gaussians wider than
    # 2 pixels match the integrals to ~1e-6, so 1e-4 relative is generous.
    assert shape_penalty(round_output, target).item() == pytest.approx(chi @ chi, rel=1e-4)
    # The right shape at another flux is not penalised: flux is the pixel loss's job.
    assert shape_penalty(3.7 * target, target).item() < 1e-12
    # A shifted output is penalised (moments are taken about the target's centroid).
    shifted = torch.roll(target, shifts=2, dims=-1)
    assert shape_penalty(shifted, target).item() > 1e-3


def test_response_penalty_is_the_squared_slope_error_of_the_batch():
    """(slope - 1)^2 of output on target ellipticities: 0 for the right shapes at any flux,
    1 for round outputs (slope 0), 4 for shapes turned by 90 degrees (slope -1, e -> -e)."""
    covs = [np.array([[9.0, 2.0], [2.0, 4.0]]), np.array([[4.0, -1.0], [-1.0, 6.0]])]
    target = torch.cat([_gaussian_stamps(c) for c in covs])
    turned = torch.cat([_gaussian_stamps(c[::-1, ::-1] * [[1, -1], [-1, 1]]) for c in covs])
    round_output = torch.cat([_gaussian_stamps(np.eye(2) * 5.0)] * 2)
    # exact identities of the moments up to float64 round-off and pixelisation (~1e-6, as in
    # the test above), so 1e-4 relative is generous
    assert response_penalty(2.5 * target, target).item() < 1e-12
    assert response_penalty(round_output, target).item() == pytest.approx(1.0, rel=1e-4)
    assert response_penalty(turned, target).item() == pytest.approx(4.0, rel=1e-4)
    # S/N groups: each group's slope counts alike; the right shape for the bright galaxy and a
    # round one for the faint galaxy give (0 + 1) / 2 whatever their ellipticities' sizes
    mixed = torch.cat([2.5 * target[:1], round_output[1:]])
    snr = torch.tensor([50.0, 5.0])
    assert response_penalty(mixed, target, snr, groups=2).item() == pytest.approx(0.5, rel=1e-4)
    with pytest.raises(ValueError, match="snr"):
        response_penalty(mixed, target, groups=2)
    # one slope per band: a band cannot make up for another. Band 1 made 3x band 0's flux (it
    # is 0.3x in _gaussian_stamps), so 3/4 of the windowed flux, and round; band 0 right:
    # 3/4 x (0 - 1)^2 + 1/4 x 0 = 0.75 (one slope pooled over bands: (1/4 - 1)^2 = 0.5625)
    bright = target * torch.tensor([1.0, 10.0], dtype=target.dtype).view(1, 2, 1, 1)
    half_round = torch.cat([bright[:, :1], round_output[:, 1:]], dim=1)
    assert response_penalty(half_round, bright).item() == pytest.approx(0.75, rel=1e-4)


def test_running_response_pulls_only_the_bins_whose_running_slope_is_off():
    """RunningResponse: the bright galaxy (its S/N bin at slope 1) gets no gradient while the
    faint one (round output, slope 0) is pulled; the value is the running (slope - 1)^2 averaged
    over the bins seen; and the running slope forgets with the memory's decay."""
    covs = [np.array([[9.0, 2.0], [2.0, 4.0]]), np.array([[4.0, -1.0], [-1.0, 6.0]])]
    target = torch.cat([_gaussian_stamps(c) for c in covs])
    round_output = torch.cat([_gaussian_stamps(np.eye(2) * 5.0)] * 2)
    snr = torch.tensor([500.0, 10.0])  # bins of edges (35, 90, 350): the last and the first
    output = torch.cat([2.5 * target[:1], round_output[1:]]).requires_grad_(True)
    running = RunningResponse((35.0, 90.0, 350.0), memory=4)
    value = running(output, target, snr)
    # bins: slope 1 (bright) and 0 (faint) -> (0 + 1) / 2, as response_penalty's two groups;
    # the moments are exact to ~1e-6 (see above), so 1e-4 relative is generous
    assert value.item() == pytest.approx(0.5, rel=1e-4)
    value.backward()
    assert output.grad[0].abs().max().item() < 1e-12  # the bright bin pulls nothing
    assert output.grad[1].abs().max().item() > 1e-6
    # the faint bin's running slope after k more batches of the right shape: the sums decay
    # by d = 1 - 1/memory per batch and each batch adds the same denominator D (numerator 0 in
    # the first, D after), so slope = (1 + d + .. + d^(k-1)) / (1 + d + .. + d^k)
    # = (1 - d^k) / (1 - d^(k+1)); k = 3: 0.578 / 0.684 = 0.846
    for _ in range(3):
        running(torch.cat([2.5 * target[:1], 2.5 * target[1:]]), target, snr)
    faint_r = running.slopes()[0]
    np.testing.assert_allclose(faint_r.numpy(), (1 - 0.75**3) / (1 - 0.75**4), rtol=1e-4)
    with pytest.raises(ValueError, match="memory"):
        RunningResponse((35.0,), memory=0)


def _sheared_galaxies(n: int, shrink: float, seed: int = 0):
    """(output, target, psf): (n, 2, 32, 32) electrons of PSF-convolved exponential galaxies
    (band 1 carries them), the output's ellipticities ``shrink`` x the target's, and the
    (25, 25) PSF at 0.2 arcsec."""
    import galsim

    rng = np.random.default_rng(seed)
    psf = galsim.Moffat(beta=2.5, fwhm=0.7)
    stamps = np.zeros((2, n, 2, 32, 32))
    for i in range(n):
        g = rng.uniform(-0.35, 0.35, 2)
        hlr = rng.uniform(0.3, 0.6)
        for k, factor in enumerate((shrink, 1.0)):
            galaxy = galsim.Exponential(half_light_radius=hlr, flux=1e4)
            image = galsim.Convolve(galaxy.shear(g1=factor * g[0], g2=factor * g[1]), psf)
            stamps[k, i, 1] = image.drawImage(nx=32, ny=32, scale=0.2).array
    psf_image = psf.drawImage(nx=25, ny=25, scale=0.2).array
    return torch.tensor(stamps[0]), torch.tensor(stamps[1]), psf_image


def test_ksb_control_measures_evaluates_m_per_bin_and_steers_the_wanted_slopes():
    """KsbSlopeControl's m per S/N bin is evaluate's (KSB g of output against target, the OLS
    slope with intercept - 1, components averaged), added up batch by batch; each bin with
    enough pairs moves its wanted slope by -gain * m within the bounds, the others keep theirs."""
    n = 2 * 60  # 60 per bin: above MIN_PAIRS (50)
    output, target, psf = _sheared_galaxies(n, shrink=0.8)
    snr = torch.tensor([10.0] * 60 + [500.0] * 60)  # edges (35, 90, 350): bins 0 and 3
    control = KsbSlopeControl(psf, 0.2, band_index=1, snr_edges=(35.0, 90.0, 350.0), gain=0.5)
    for part in (slice(0, 50), slice(50, n)):  # sums over batches, one straddling the bins
        control.add(output[part], target[part], snr[part])
    m = KsbSlopeControl.m_per_bin(control.sums)
    shapes = [measure_shapes(a[:, 1].numpy(), psf, 0.2) for a in (output, target)]
    for b, rows in ((0, slice(0, 60)), (3, slice(60, n))):
        fits = [linear_fit(getattr(shapes[1], c)[rows], getattr(shapes[0], c)[rows])
                for c in ("g1", "g2")]  # fmt: skip
        # the same numbers by sums as by evaluate's least squares: float64 rounding only
        assert m[b].item() == pytest.approx(np.mean([f.m for f in fits]), abs=1e-9)
        # shapes shrunk by 0.8 give m near -0.2: KSB's response to noiseless shear of these
        # PSF-convolved exponentials is not exactly linear (measured -0.23 in both bins), so
        # 0.05; a control that ignored the shrink (m = 0) or doubled it would fail
        assert m[b].item() == pytest.approx(-0.2, abs=0.05)
    assert np.isnan(m[1].item()) and np.isnan(m[2].item())  # no galaxies there
    m, targets = control.updated(torch.ones(4), control.sums)
    np.testing.assert_allclose(targets.numpy()[[0, 3]], 1 - 0.5 * m.numpy()[[0, 3]], rtol=1e-6)
    assert targets[1].item() == targets[2].item() == 1.0
    steep = KsbSlopeControl(psf, 0.2, 1, (35.0, 90.0, 350.0), gain=10.0)
    assert steep.updated(torch.ones(4), control.sums)[1][0].item() == TARGET_BOUNDS[1]
    control.reset()
    assert control.sums.abs().sum().item() == 0
    with pytest.raises(ValueError, match="gain must be > 0"):
        KsbSlopeControl(psf, 0.2, 1, (35.0,), gain=0.0)


def _with_psf(dataset, out):
    """A copy of a tiny dataset with (round, 1.2-pixel) PSF images, which KSB needs."""
    import h5py

    shutil.copy(dataset, out)
    yy, xx = np.mgrid[:9, :9] - 4.0
    psf = np.exp(-0.5 * (xx**2 + yy**2) / 1.2**2)
    with h5py.File(out, "a") as f:
        f.create_dataset("psf", data=np.stack([psf / psf.sum()] * 3))
    return out


def test_ksb_steering_runs_in_training_and_is_recorded(sets, tmp_path):
    """--response-ksb-gain: each validation logs KSB's m and the wanted slope per bin, the
    setting is recorded; without the running penalty or without PSF images it is refused."""
    data = _with_psf(sets["isolated"], tmp_path / "with_psf.h5")
    out = tmp_path / "ksb"
    train_vae(data, out, response_weight=50.0, response_memory=20, response_ksb_gain=0.5,
              response_snr_edges=(50.0,), max_steps=4, steps_per_epoch=2,
              **TINY_NETWORK)  # fmt: skip
    assert load_model(out).config["training"]["settings"]["response_ksb_gain"] == 0.5
    header = next(out.glob("logs/version_*/metrics.csv")).read_text().splitlines()[0]
    assert {"ksb_m_bin0", "ksb_m_bin1", "response_target_bin1"} <= set(header.split(","))
    with pytest.raises(ValueError, match="needs response_weight > 0 and response_memory"):
        train_vae(data, tmp_path / "bad", response_weight=50.0, response_ksb_gain=0.5,
                  **TINY_NETWORK)  # fmt: skip
    with pytest.raises(ValueError, match="has no PSF images"):
        train_vae(sets["isolated"], tmp_path / "bad2", response_weight=50.0, response_memory=20,
                  response_ksb_gain=0.5, max_steps=1, **TINY_NETWORK)  # fmt: skip


def test_a_continued_steered_run_starts_from_the_slopes_its_source_ended_with(sets, tmp_path):
    """The wanted slopes a steered run ends with are exported (training.response_steering),
    equal to the last ones it logged; a run continued from it (init_from) with the same S/N
    bins starts from them, with other bins from 1, and a start outside the bounds is refused."""
    from vaedeblend.models.lightning import _start_targets

    data = _with_psf(sets["isolated"], tmp_path / "with_psf.h5")
    steer = dict(response_weight=50.0, response_memory=20, response_ksb_gain=0.5,
                 max_steps=4, steps_per_epoch=2, **TINY_NETWORK)  # fmt: skip
    first = tmp_path / "first"
    train_vae(data, first, response_snr_edges=(50.0,), **steer)
    record = load_model(first).config["training"]["response_steering"]
    rows = next(first.glob("logs/version_*/metrics.csv")).read_text().splitlines()
    header = rows[0].split(",")
    logged = [r.split(",") for r in rows[1:] if r.split(",")[header.index("response_target_bin0")]]
    last = [float(logged[-1][header.index(f"response_target_bin{b}")]) for b in range(2)]
    assert record["snr_edges"] == [50.0]
    np.testing.assert_allclose(record["targets"], last, atol=1e-6)
    same = train_vae(data, tmp_path / "same", init_from=str(first), response_snr_edges=(50.0,),
                     **{**steer, "max_steps": 1})  # fmt: skip
    assert same.module.hparams.response_targets_start == record["targets"]
    other = train_vae(data, tmp_path / "other", init_from=str(first),
                      response_snr_edges=(20.0, 50.0), **{**steer, "max_steps": 1})  # fmt: skip
    assert other.module.hparams.response_targets_start is None
    with pytest.raises(ValueError, match="response_targets_start must be 2 slopes"):
        _start_targets([1.0, TARGET_BOUNDS[1] + 0.1], (50.0,))


def test_a_steered_deblender_restarts_its_slopes_on_another_decoder(sets, tmp_path):
    """The slopes a steered deblender ended with were measured through its decoder: continued
    on the same VAE it starts from them, on a continued (changed) VAE from 1."""
    iso = _with_psf(sets["isolated"], tmp_path / "iso.h5")
    blend = _with_psf(sets["blended"], tmp_path / "blend.h5")
    vae, changed = tmp_path / "vae", tmp_path / "vae_changed"
    train_vae(iso, vae, max_steps=2, steps_per_epoch=2, **TINY_NETWORK)
    # a large constant step, so that the continued decoder differs beyond float16 rounding
    train_vae(iso, changed, init_from=str(vae), max_steps=2, steps_per_epoch=2, lr=0.01,
              scheduler="none")  # fmt: skip
    steer = dict(response_weight=50.0, response_memory=20, response_ksb_gain=0.5,
                 response_snr_edges=(50.0,), max_steps=2, steps_per_epoch=2)  # fmt: skip
    first = tmp_path / "deblender"
    train_deblender(vae, blend, first, **steer)
    record = load_model(first).config["training"]["response_steering"]["targets"]
    same = train_deblender(vae, blend, tmp_path / "same", init_from=str(first), **steer)
    other = train_deblender(changed, blend, tmp_path / "other", init_from=str(first), **steer)
    assert same.module.hparams.response_targets_start == record
    assert other.module.hparams.response_targets_start is None


def test_ema_weights_are_what_validation_measures_and_export_writes(sets, tmp_path):
    """--ema-decay d: after each step the average moves to d x average + (1 - d) x weights
    (the first step copies them); validation and export use it; the optimiser trains the
    network alone; the setting is recorded."""
    from safetensors.numpy import load_file

    out = tmp_path / "ema"
    result = train_vae(sets["isolated"], out, ema_decay=0.5, max_steps=4, steps_per_epoch=2,
                       **TINY_NETWORK)  # fmt: skip
    module = result.module
    assert load_model(out).config["training"]["settings"]["ema_decay"] == 0.5
    exported = load_file(out / "model.safetensors")
    best = {k: v.numpy() for k, v in module.export_state.items()}
    assert all(np.array_equal(exported[k], best[k]) for k in exported)
    trained = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups
               for p in g["params"]}  # fmt: skip
    assert trained == {id(p) for p in module.net.parameters() if p.requires_grad}
    # the moving average, by hand: weights w + 1 then w + 2 after a fresh start (0 updates)
    module._ema.n_averaged.zero_()
    name, weight = next(iter(module.net.named_parameters()))
    start = weight.detach().clone()
    with torch.no_grad():
        for shift in (1.0, 2.0):
            weight.copy_(start + shift)
            module.on_train_batch_end(None, None, 0)
    averaged = dict(module.measured_net().named_parameters())[name]
    np.testing.assert_allclose(averaged.detach().numpy(), (start + 1.5).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="ema_decay must be in"):
        train_vae(sets["isolated"], tmp_path / "bad", ema_decay=1.0, **TINY_NETWORK)


def test_export_weights_last_exports_the_latest_validated_weights(sets, tmp_path):
    """--export-weights last: the exported model is the network as it was at the last
    validation (here the run's end), whatever the validation loss did, and the record says
    which step it is; the default exports the lowest validation loss's weights."""
    from safetensors.numpy import load_file

    # A learning rate far too high (no warm-up), so that the validation loss rises after its
    # first validation and the best and the last weights differ (asserted below).
    unstable = {**TINY_NETWORK, "lr": 5.0, "scheduler": "none"}
    for choice in ("last", "best"):
        out = tmp_path / choice
        result = train_vae(sets["isolated"], out, export_weights=choice, max_steps=6,
                           steps_per_epoch=2, **unstable)  # fmt: skip
        record = load_model(out).config["training"]
        exported = load_file(out / "model.safetensors")
        if choice == "last":
            assert record["exported_step"] == result.global_step == 6
            final = {k: v.numpy() for k, v in result.module.net.state_dict().items()}
            assert all(np.array_equal(exported[k], final[k]) for k in exported)
        else:
            assert record["exported_step"] == record["best_step"] == result.best_step < 6
    # a finished run resumed at its own step count with "last" exports its final weights
    # without training any further
    best_run = tmp_path / "best"
    resumed = train_vae(sets["isolated"], best_run, resume=True, export_weights="last",
                        max_steps=6, steps_per_epoch=2, **unstable)  # fmt: skip
    assert resumed.global_step == 6
    assert load_model(best_run).config["training"]["exported_step"] == 6
    final = {k: v.numpy() for k, v in resumed.module.net.state_dict().items()}
    exported = load_file(best_run / "model.safetensors")
    assert all(np.array_equal(exported[k], final[k]) for k in exported)
    with pytest.raises(ValueError, match="export_weights must be one of"):
        train_vae(sets["isolated"], tmp_path / "bad", export_weights="first", **TINY_NETWORK)


def test_shape_weight_adds_the_penalty_to_training(sets, tmp_path):
    out = tmp_path / "shape"
    train_vae(sets["isolated"], out, shape_weight=100.0, response_weight=50.0,
              response_groups=2, max_steps=2, steps_per_epoch=2, **TINY_NETWORK)  # fmt: skip
    running = tmp_path / "running"
    train_vae(sets["isolated"], running, response_weight=50.0, response_memory=20,
              response_snr_edges=(5.0, 50.0), max_steps=2, steps_per_epoch=2,
              **TINY_NETWORK)  # fmt: skip
    settings = load_model(running).config["training"]["settings"]
    assert (settings["response_memory"], settings["response_snr_edges"]) == (20, [5.0, 50.0])
    settings = load_model(out).config["training"]["settings"]
    assert (settings["shape_weight"], settings["response_weight"]) == (100.0, 50.0)
    assert settings["response_groups"] == 2
    metrics = next(out.glob("logs/version_*/metrics.csv")).read_text().splitlines()
    assert {"train_shape", "train_response"} <= set(metrics[0].split(","))
    with pytest.raises(ValueError, match="shape_weight must be >= 0"):
        train_vae(sets["isolated"], tmp_path / "bad", shape_weight=-1.0, **TINY_NETWORK)
    with pytest.raises(ValueError, match="response_weight must be >= 0"):
        train_vae(sets["isolated"], tmp_path / "bad", response_weight=-1.0, **TINY_NETWORK)
    with pytest.raises(ValueError, match="response_snr_edges must be increasing"):
        train_vae(sets["isolated"], tmp_path / "bad", response_snr_edges=(50.0, 5.0),
                  **TINY_NETWORK)  # fmt: skip
