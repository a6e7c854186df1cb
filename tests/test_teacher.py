"""The teacher penalty of deblender training (``teacher_weight``): the deblender's latent means
pulled towards those its VAE's own encoder gives the stamp without the target's neighbours."""

import h5py
import numpy as np
import pytest
import torch
from tiny_stamps import TINY_NETWORK, write_tiny_dataset

from vaedeblend.models import load_model
from vaedeblend.models.losses import teacher_penalty
from vaedeblend.models.training import train_deblender, train_vae

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_teacher_penalty_is_half_the_squared_distance_in_teacher_widths():
    mu_teacher = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    sigma_teacher = torch.tensor([[0.5, 2.0], [1.0, 0.1]])
    assert torch.equal(teacher_penalty(mu_teacher, mu_teacher, sigma_teacher), torch.zeros(2))
    mu = mu_teacher + torch.tensor([[1.0, 2.0], [0.0, 0.1]])
    # (1 / 0.5)^2 + (2 / 2)^2 = 5 and (0.1 / 0.1)^2 = 1, halved; float32 rounding only
    torch.testing.assert_close(teacher_penalty(mu, mu_teacher, sigma_teacher),
                               torch.tensor([2.5, 0.5]), rtol=1e-6, atol=0)  # fmt: skip


def _mean_penalty(deblender, vae, data) -> float:
    """The teacher penalty of ``deblender`` on every stamp of ``data``, averaged."""
    with h5py.File(data) as f:
        blend, others = f["blend"][:], f["others"][:]
    mu, _ = load_model(deblender).encode(blend)
    mu_t, sigma_t = load_model(vae).encode(blend - others)
    return float(teacher_penalty(*(torch.from_numpy(a) for a in (mu, mu_t, sigma_t))).mean())


def test_teacher_weight_pulls_the_latents_and_leaves_the_decoder(tmp_path):
    vae, isolated = tmp_path / "vae", write_tiny_dataset(tmp_path / "iso.h5", n=120, seed=5)
    train_vae(isolated, vae, max_steps=4,
              steps_per_epoch=4, **TINY_NETWORK)  # fmt: skip
    data = write_tiny_dataset(tmp_path / "blend.h5", n=120, blended=True, seed=4)
    runs = {}
    for weight in (0.0, 50.0):  # same seed: the runs differ by the penalty alone
        runs[weight] = tmp_path / f"teacher_{weight:g}"
        train_deblender(vae, data, runs[weight], teacher_weight=weight, max_steps=8,
                        steps_per_epoch=4, seed=3, **TINY_NETWORK)  # fmt: skip
    # Both start from the VAE's encoder; after eight steps the pulled one ends nearer its
    # teacher on these stamps (measured: 0.22 of the free run's penalty; 0.9 leaves a wide
    # margin for other platforms' float rounding).
    pulled, free = (_mean_penalty(runs[w], vae, data) for w in (50.0, 0.0))
    assert pulled < 0.9 * free
    header = next(runs[50.0].glob("logs/version_*/metrics.csv")).read_text().splitlines()[0]
    assert "train_teacher" in header.split(",")
    assert load_model(runs[50.0]).config["training"]["settings"]["teacher_weight"] == 50.0
    # the decoder is the VAE's, bit for bit; the teacher is not exported with the encoder
    before, after = (load_model(p).net.state_dict() for p in (vae, runs[50.0]))
    assert set(before) == set(after)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    with pytest.raises(ValueError, match="teacher_weight must be >= 0"):
        train_deblender(vae, data, tmp_path / "bad", teacher_weight=-1.0, **TINY_NETWORK)
    with pytest.raises(ValueError, match="teacher_weight is a deblender's"):
        train_vae(isolated, tmp_path / "bad_vae", teacher_weight=1.0, **TINY_NETWORK)
    assert np.isfinite(_mean_penalty(runs[0.0], vae, data))
