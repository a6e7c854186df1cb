"""Networks, normalisation, losses, data handling, export and loading (no training loop)."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_stamps import BANDS, SKY, write_tiny_dataset

from vaedeblend.models import (
    BandMismatchError,
    ModelFormatError,
    bce_loss,
    build_vae,
    count_parameters,
    denormalise,
    export_model,
    forward_flops,
    gaussian_loss,
    load_model,
    load_vae,
    noise_variance,
    normalise,
    preset,
)
from vaedeblend.models.data import EpochBatchSampler, add_noise, load_split, random_dihedral
from vaedeblend.models.io import model_config
from vaedeblend.models.lightning import VAEModule

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SMALL = dict(widths=(8, 16), latent_dim=4, dense_dim=16, out_width=8)


def small_vae(arch="fast", channels=3, stamp=16, seed=0):
    torch.manual_seed(seed)
    return build_vae(preset(arch, channels=channels, stamp_size=stamp, **SMALL))


def write_model(vae, path, norm=(500.0, 800.0, 1100.0), dtype="float32"):
    cfg = model_config(
        vae,
        kind="vae",
        band_ids=BANDS,
        pixel_scales_arcsec=[0.2] * 3,
        norm_constants=norm,
        sky_levels_electrons=SKY,
        loss="bce",
        beta=0.01,
        training={"fingerprint": "test"},
        dtype=dtype,
    )
    return export_model(vae, path, cfg)


# -- networks ---------------------------------------------------------------------------------
def test_paper_parameter_count_10_bands():
    assert count_parameters(build_vae(preset("paper", prelu="element"))) == 5_868_146
    assert count_parameters(build_vae(preset("paper", prelu="channel"))) == 5_066_741


@pytest.mark.parametrize("arch", ["paper", "fast"])
@pytest.mark.parametrize("stamp", [16, 32])
def test_shapes_and_ranges(arch, stamp):
    vae = small_vae(arch, channels=3, stamp=stamp).eval()
    x = torch.rand(5, 3, stamp, stamp)
    out, mu, sigma = vae(x)
    assert out.shape == x.shape and mu.shape == sigma.shape == (5, 4)
    assert (sigma > 0).all() and (out > 0).all() and (out < 1).all()


def test_fast_with_batchnorm_and_depth():
    cfg = preset("fast", channels=2, stamp_size=32, widths=(4, 8, 8), norm="batch")
    vae = build_vae(cfg)
    out, mu, _ = vae(torch.rand(3, 2, 32, 32))
    assert out.shape == (3, 2, 32, 32) and cfg.bottleneck_size == 4
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in vae.encoder.features)


def test_stamp_size_must_divide():
    with pytest.raises(ValueError, match="divisible"):
        preset("paper", stamp_size=40)


def test_fast_costs_a_fraction_of_paper():
    paper, fast = build_vae(preset("paper")), build_vae(preset("fast"))
    ratio = forward_flops(paper) / forward_flops(fast)
    assert 0.6e9 < forward_flops(paper) < 0.7e9  # paper_setup.md: 0.6-0.7 GFLOP per stamp
    assert ratio > 5


# -- normalisation ----------------------------------------------------------------------------
def test_normalisation_round_trip():
    constants = np.array([300.0, 1200.0])
    x = np.stack([np.linspace(-20, 200, 2001) * c for c in constants])[None, :, :, None]
    y = normalise(x, constants)
    assert np.all(np.abs(y) < 1)
    np.testing.assert_allclose(denormalise(y, constants), x, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(y, np.tanh(np.arcsinh(x * 2.5 / constants[None, :, None, None])))
    x32 = torch.tensor(x / 70, dtype=torch.float32)  # up to ~3 I_b: float32 range of use
    back = denormalise(normalise(x32, constants), constants)
    np.testing.assert_allclose(back.numpy(), x32.numpy(), rtol=1e-5, atol=1e-3)


def test_denormalise_clips_instead_of_inf():
    assert np.isfinite(denormalise(np.ones((1, 1, 1, 1)), [100.0])).all()


# -- losses -----------------------------------------------------------------------------------
def test_bce_matches_hand_computation():
    logits = torch.tensor([[[[0.3, -1.2]]], [[[2.0, 0.0]]]])  # (2, 1, 1, 2)
    target = torch.tensor([[[[0.25, 0.0]]], [[[0.9, 0.5]]]])
    mu = torch.tensor([[0.5], [-1.0]])
    sigma = torch.tensor([[0.8], [1.5]])

    def bce(lg, t):
        p = 1 / (1 + math.exp(-lg))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    def kl(m, s):
        return 0.5 * (m * m + s * s - 1 - 2 * math.log(s))

    per_image = [
        bce(0.3, 0.25) + bce(-1.2, 0.0) + 0.01 * kl(0.5, 0.8),
        bce(2.0, 0.9) + bce(0.0, 0.5) + 0.01 * kl(-1.0, 1.5),
    ]
    terms = bce_loss(logits, target, mu, sigma, beta=0.01)
    assert terms.total.item() == pytest.approx(sum(per_image) / 2, rel=1e-6)


def test_gaussian_loss_weights_by_true_variance():
    sky = torch.tensor([10.0, 20.0])
    target = torch.rand(3, 2, 4, 4) * 100
    others = torch.rand(3, 2, 4, 4) * 50
    pred = target + torch.randn(3, 2, 4, 4) * 5
    zero = torch.zeros(3, 1)
    var = noise_variance(target + others, sky)
    torch.testing.assert_close(var, target + others + sky.reshape(1, 2, 1, 1))
    expected = 0.5 * ((pred - target) ** 2 / var).flatten(1).sum(1).mean()
    terms = gaussian_loss(pred, target, var, zero, torch.ones(3, 1), beta=1.0)
    torch.testing.assert_close(terms.total, expected)

    # In the training module the weights come from the noiseless signal (target + others),
    # not from the network's prediction.
    vae_cfg = preset("fast", channels=2, stamp_size=4, widths=(4,), latent_dim=2, dense_dim=4)
    module = VAEModule(vae_cfg.to_dict(), [100.0, 100.0], sky.tolist(), loss="gaussian")
    module.eval()
    x = target + others
    terms = module._loss(x, target, target + others, sample=False)
    with torch.no_grad():
        logits, mu, sigma = module.net.forward_logits(normalise(x, [100.0, 100.0]), False)
        pred = denormalise(torch.sigmoid(logits), [100.0, 100.0])
    manual = gaussian_loss(pred, target, var, mu, sigma, beta=1.0)
    torch.testing.assert_close(terms.total, manual.total)


# -- data -------------------------------------------------------------------------------------
def test_batch_sampler_splits_ranks():
    train = [list(EpochBatchSampler(50, 4, steps=3, seed=1, rank=r, world=2)) for r in (0, 1)]
    seen = [torch.cat(batches).tolist() for batches in train]
    assert len(train[0]) == 3 and not set(seen[0]) & set(seen[1])
    val = [list(EpochBatchSampler(11, 4, None, 0, r, 2, shuffle=False)) for r in (0, 1)]
    assert len(val[0]) == len(val[1])
    assert sorted(torch.cat([torch.cat(v) for v in val]).tolist()) == list(range(11))
    sampler = EpochBatchSampler(50, 4, steps=3, seed=1)
    first = torch.cat(list(sampler))
    sampler.set_epoch(1)
    assert not torch.equal(first, torch.cat(list(sampler)))


def test_load_split_and_norm_constants(tmp_path):
    path = write_tiny_dataset(tmp_path / "d.h5", n=40, blended=True)
    split = load_split(path, val_fraction=0.25, seed=3)
    assert len(split.val["target"]) == 10 and len(split.train["target"]) == 30
    assert "blend" not in split.train and "others" in split.train
    import h5py

    with h5py.File(path) as f:
        blend = f["blend"][...]
    is_train = ~np.isin(blend.reshape(40, -1), split.val["blend"].reshape(10, -1)).all(1)
    expected = blend[is_train].max(axis=(2, 3)).mean(axis=0)
    np.testing.assert_allclose(split.norm_constants, expected, rtol=1e-6)
    again = load_split(path, val_fraction=0.25, seed=3, band_ids=BANDS[::-1])
    np.testing.assert_array_equal(again.val["target"], split.val["target"][:, ::-1])
    assert again.info.band_ids == BANDS[::-1]
    detected = write_tiny_dataset(tmp_path / "det.h5", n=20, blended=True, centring="detected")
    assert "blend" in load_split(detected, 0.2).train


def test_noise_and_augmentation():
    g = torch.Generator().manual_seed(0)
    signal = torch.full((2000, 2, 4, 4), 30.0)
    noisy = add_noise(signal, torch.tensor([10.0, 50.0]), "poisson", g)
    assert noisy.mean().item() == pytest.approx(30.0, abs=0.1)
    assert noisy[:, 1].var().item() == pytest.approx(80.0, rel=0.05)
    approx = add_noise(signal, torch.tensor([10.0, 50.0]), "poisson", g, draw="gaussian")
    assert approx[:, 1].var().item() == pytest.approx(80.0, rel=0.05)
    sky_only = add_noise(signal, torch.tensor([10.0, 50.0]), "gaussian", g)
    assert sky_only[:, 1].var().item() == pytest.approx(50.0, rel=0.05)
    a = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    flipped, again = random_dihedral([a, a.clone() * 2], g)
    torch.testing.assert_close(again, flipped * 2)


# -- export, load, deblend --------------------------------------------------------------------
def test_export_reload_identical(tmp_path):
    vae = small_vae()
    write_model(vae, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    reloaded, cfg = load_vae(tmp_path / "m")
    for k, v in vae.state_dict().items():
        assert torch.equal(v, reloaded.state_dict()[k]), k
    model = load_model(tmp_path / "m")
    stamps = np.random.default_rng(0).normal(200, 50, (7, 3, 16, 16)).astype(np.float32)
    out = model.deblend(stamps, batch_size=3)
    with torch.no_grad():
        y, _, _ = vae.eval()(normalise(torch.from_numpy(stamps), cfg["norm_constants_electrons"]))
    expected = denormalise(y.double().numpy(), cfg["norm_constants_electrons"])
    assert out.dtype == np.float32 and out.shape == stamps.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_array_equal(model.deblend(torch.from_numpy(stamps), batch_size=3), out)
    mu, sigma = model.encode(stamps)
    assert mu.shape == (7, 4) and (sigma > 0).all()
    assert model.sample(3, seed=2).shape == (3, 3, 16, 16)
    np.testing.assert_array_equal(model.sample(3, seed=2), model.sample(3, seed=2))


def test_exported_files_are_readable_by_the_group(tmp_path):
    """safetensors creates its files 0600; a model saved to a shared folder must get the
    permissions of any new file under the umask (here 022: readable by all), like config.json."""
    old = os.umask(0o022)
    try:
        write_model(small_vae(), tmp_path / "m")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == 0o644, name


def test_float16_weights_keep_flux(tmp_path):
    vae = small_vae()
    write_model(vae, tmp_path / "m32")
    write_model(vae, tmp_path / "m16", dtype="float16")
    stamps = np.random.default_rng(1).normal(300, 50, (4, 3, 16, 16)).astype(np.float32)
    f32 = load_model(tmp_path / "m32").deblend(stamps).sum(axis=(2, 3))
    f16 = load_model(tmp_path / "m16").deblend(stamps).sum(axis=(2, 3))
    np.testing.assert_allclose(f16, f32, rtol=1e-3)


def test_a_shipped_float32_model_is_restored_as_float16_in_place(tmp_path):
    """benchmarks/ship_pretrained.py --store-float16: half the bytes, the same outputs to
    float16 rounding, the training record kept, and a second re-store refused."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from ship_pretrained import store_float16

    write_model(small_vae(), tmp_path / "m")
    before = json.loads((tmp_path / "m" / "config.json").read_text())
    size = (tmp_path / "m" / "model.safetensors").stat().st_size
    # float16 keeps 11 significant bits: 1e-3 of the stamp peak is the contract's tolerance
    assert store_float16(tmp_path / "m") < 1e-3
    after = json.loads((tmp_path / "m" / "config.json").read_text())
    assert after["weights"]["dtype"] == "float16" and after["training"] == before["training"]
    # the header and the integer buffers stay as they are, so a little over half
    assert (tmp_path / "m" / "model.safetensors").stat().st_size < 0.55 * size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary left behind
    with pytest.raises(SystemExit, match="float16 already"):
        store_float16(tmp_path / "m")


def test_bands_are_reordered_or_rejected(tmp_path):
    write_model(small_vae(), tmp_path / "m")
    model = load_model(tmp_path / "m")
    stamps = np.random.default_rng(0).normal(200, 50, (2, 3, 16, 16)).astype(np.float32)
    out = model.deblend(stamps)
    order = [2, 0, 1]
    permuted = model.deblend(stamps[:, order], bands=[BANDS[i] for i in order])
    np.testing.assert_allclose(permuted, out[:, order], rtol=1e-6)
    with pytest.raises(BandMismatchError, match=r"missing bands \['lsst_i'\].*unknown.*euclid_vis"):
        model.deblend(stamps, bands=["lsst_g", "lsst_r", "euclid_vis"])
    with pytest.raises(BandMismatchError, match="4 channels"):
        model.deblend(np.zeros((1, 4, 16, 16)))
    with pytest.raises(ValueError, match="32x32"):
        model.deblend(np.zeros((1, 3, 32, 32)))
    stamps[1, 2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN.*index 1"):
        model.deblend(stamps)


def test_mismatched_weights_are_named(tmp_path):
    write_model(small_vae(), tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architecture"]["latent_dim"] = 6
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=r"wrong shapes: .*encoder\.mu\.weight"):
        load_model(tmp_path / "m")
    cfg["architecture"]["latent_dim"] = 4
    cfg["band_ids"] = BANDS[:2]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="band_ids has 2 entries for 3 channels"):
        load_model(tmp_path / "m")
    with pytest.raises(ModelFormatError, match="no config.json"):
        load_model(tmp_path)
