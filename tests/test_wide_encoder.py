"""A deblender whose encoder is wider than its VAE's (``encoder_widths``, ``encoder_dense_dim``):
grown from the narrow encoder computing the same function, trained, exported and continued."""

import csv
from dataclasses import replace

import pytest
import torch
from tiny_stamps import TINY_NETWORK, write_tiny_dataset

from vaedeblend.cli import build_parser
from vaedeblend.models import load_model
from vaedeblend.models.networks import build_vae, preset, widen_encoder
from vaedeblend.models.training import train_deblender, train_vae

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.mark.parametrize("arch", ["fast", "paper"])
def test_a_grown_encoder_computes_what_the_narrow_one_did(arch):
    narrow = preset(arch, channels=3, stamp_size=16, widths=(4, 8), latent_dim=5, dense_dim=16)
    wide = replace(narrow, encoder_widths=(6, 12), encoder_dense_dim=24)
    torch.manual_seed(1)
    before = build_vae(narrow).eval()
    grown = build_vae(wide)
    grown.load_state_dict(widen_encoder(before.state_dict(), narrow, wide, seed=2))
    grown.eval()
    x = torch.randn(7, 3, 16, 16)
    # The new channels' outgoing weights are zero, so only float32 summation order may differ
    # (sums of ~100 terms of order 1: 1e-5 is a hundred times their rounding).
    for got, want in zip(grown.encoder(x), before.encoder(x), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # ... and the new channels are live: their incoming weights are not zero
    assert grown.encoder.state_dict()["dense.1.weight"][16:].abs().sum() > 0
    same = {k: v for k, v in grown.state_dict().items() if k.startswith("decoder.")}
    assert all(torch.equal(v, before.state_dict()[k]) for k, v in same.items())
    with pytest.raises(ValueError, match="grows only in width"):
        widen_encoder(grown.state_dict(), wide, narrow, seed=2)


def _first_val_loss(run) -> float:
    rows = csv.DictReader(next(run.glob("logs/version_*/metrics.csv")).open())
    return float(next(r["val_loss"] for r in rows if r.get("val_loss")))


def test_a_wide_deblender_trains_exports_and_continues(tmp_path):
    vae, isolated = tmp_path / "vae", write_tiny_dataset(tmp_path / "iso.h5", n=120, seed=5)
    train_vae(isolated, vae, max_steps=4, steps_per_epoch=4, **TINY_NETWORK)
    data = write_tiny_dataset(tmp_path / "blend.h5", n=120, blended=True, seed=4)
    common = dict(max_steps=4, steps_per_epoch=4, seed=3, teacher_weight=1.0, **TINY_NETWORK)
    narrow, wide = tmp_path / "narrow", tmp_path / "wide"
    train_deblender(vae, data, narrow, **common)
    train_deblender(vae, data, wide, encoder_widths=[12, 24], encoder_dense_dim=48, **common)
    # grown from the VAE's encoder computing the same function: the same first validation
    # loss (the logged value of the untrained networks, float32 rounding only)
    assert _first_val_loss(wide) == pytest.approx(_first_val_loss(narrow), rel=1e-5)
    model = load_model(wide)
    arch = model.config["architecture"]
    assert (arch["encoder_widths"], arch["encoder_dense_dim"]) == ([12, 24], 48)
    assert arch["widths"] == list(TINY_NETWORK["widths"])  # the decoder stays the VAE's
    assert "encoder_widths" not in load_model(narrow).config["architecture"]
    before, after = (load_model(p).net.state_dict() for p in (vae, wide))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    bottleneck = model.config["stamp_size"] // 4  # two halvings
    assert after["encoder.dense.1.weight"].shape == (48, 24 * bottleneck**2)  # (dense, flat)
    # a continuation keeps the wide encoder; asking it narrower is refused
    more = tmp_path / "more"
    train_deblender(vae, data, more, init_from=str(wide), **common)
    assert load_model(more).config["architecture"]["encoder_widths"] == [12, 24]
    with pytest.raises(ValueError, match="grows only in width"):
        train_deblender(vae, data, tmp_path / "bad", init_from=str(wide),
                        encoder_widths=[8, 16], **common)  # fmt: skip
    assert not (tmp_path / "bad").exists()  # refused before the run directory is written
    with pytest.raises(ValueError, match="a deblender's"):
        train_vae(isolated, tmp_path / "bad_vae", encoder_widths=[12, 24], **TINY_NETWORK)


def test_the_command_line_reads_encoder_widths():
    parser = build_parser()
    base = ["train", "deblender", "--vae", "v", "--data", "d", "--out", "o"]
    args = parser.parse_args([*base, "--encoder-widths", "48,96", "--encoder-dense-dim", "512"])
    assert (args.encoder_widths, args.encoder_dense_dim) == ([48, 96], 512)
    for bad in ("48,0", "48,x", ""):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([*base, "--encoder-widths", bad])
        assert exit_info.value.code == 2
