"""Training: loss falls, frozen decoder, kill -9 + resume, DDP on two CPU processes, CLI."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_stamps import TINY_NETWORK, write_tiny_dataset

import vaedeblend
from vaedeblend.models import load_model
from vaedeblend.models.training import train_deblender, train_vae

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
TINY = dict(TINY_NETWORK)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {
        "isolated": write_tiny_dataset(root / "iso.h5", n=320, seed=0),
        "blended": write_tiny_dataset(root / "blend.h5", n=320, blended=True, seed=1),
    }


@pytest.fixture(scope="module")
def vae_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "vae"
    return train_vae(data["isolated"], out, epochs=10, steps_per_epoch=20, **TINY)


def test_training_lowers_validation_loss(vae_run):
    assert vae_run.global_step == 200
    assert vae_run.best_val_loss < 0.3 * vae_run.initial_val_loss
    out = vae_run.out
    exported = sorted(p.name for p in out.iterdir() if p.is_file())
    assert {"config.json", "model.safetensors"} <= set(exported)
    assert not [p for p in exported if p.endswith((".ckpt", ".pt", ".pkl"))]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "vae" and cfg["package_version"] == vaedeblend.__version__
    assert cfg["training"]["fingerprint"].startswith("tiny-0")
    assert cfg["training"]["best_val_loss"] == pytest.approx(vae_run.best_val_loss)
    metrics = (next((out / "logs").glob("version_*")) / "metrics.csv").read_text()
    assert "val_loss" in metrics and "train_loss" in metrics


def test_deblender_keeps_decoder_bit_identical(vae_run, data, tmp_path):
    result = train_deblender(
        vae_run.out,
        data["blended"],
        tmp_path / "deb",
        epochs=2,
        steps_per_epoch=10,
        batch_size=32,
        lr=3e-3,
        accelerator="cpu",
        progress=False,
    )
    before = load_file(vae_run.out / "model.safetensors")
    after = load_file(tmp_path / "deb" / "model.safetensors")
    decoder = [k for k in before if k.startswith("decoder.")]
    assert decoder and all(torch.equal(before[k], after[k]) for k in decoder)
    assert not torch.equal(before["encoder.mu.weight"], after["encoder.mu.weight"])
    assert result.best_val_loss < result.initial_val_loss
    model = load_model(tmp_path / "deb")
    cfg = model.config
    assert cfg["kind"] == "deblender" and cfg["vae"]["training"]["fingerprint"].startswith("tiny-0")
    vae_cfg = json.loads((vae_run.out / "config.json").read_text())
    assert cfg["norm_constants_electrons"] == vae_cfg["norm_constants_electrons"]
    blend = np.zeros((2, 3, 16, 16), np.float32)
    assert model.deblend(blend).shape == blend.shape


def test_deblender_rejects_wrong_bands(vae_run, tmp_path):
    bands = ["lsst_g", "lsst_r", "lsst_z"]
    other = write_tiny_dataset(tmp_path / "z.h5", n=20, blended=True, bands=bands)
    with pytest.raises(ValueError, match=r"missing bands \['lsst_i'\].*unknown bands \['lsst_z'\]"):
        train_deblender(vae_run.out, other, tmp_path / "deb", **{"accelerator": "cpu"})


def test_existing_run_needs_resume_and_same_settings(vae_run, data, tmp_path):
    with pytest.raises(FileExistsError, match="resume"):
        train_vae(data["isolated"], vae_run.out, **TINY)
    with pytest.raises(ValueError, match="lr: 0.003 -> 0.01"):
        train_vae(data["isolated"], vae_run.out, **{**TINY, "lr": 1e-2, "resume": True})
    other = write_tiny_dataset(tmp_path / "other.h5", n=40, seed=5)
    with pytest.raises(ValueError, match="fingerprint"):
        train_vae(other, vae_run.out, resume=True)


def _script(tmp_path: Path, body: str) -> Path:
    head = f"""
        import sys
        sys.path[:0] = [{str(SRC)!r}, {str(TESTS)!r}]
        from vaedeblend.models.training import train_vae
        TINY = {TINY!r}
    """
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(head) + textwrap.dedent(body))
    return path


def _ckpt_step(path: Path) -> int:
    # Our own Lightning checkpoint (a pickle written by this run): fine to load here.
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def test_kill_9_and_resume(data, tmp_path):
    out = tmp_path / "run"
    script = _script(
        tmp_path,
        f"""
        train_vae({str(data["isolated"])!r}, {str(out)!r}, epochs=10000, steps_per_epoch=20,
                  checkpoint_every=5, validate_first=False, patience=0, **TINY)
        """,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.DEVNULL, env=env)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 90
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # let it run past the checkpoint, so that kill -9 lands mid-interval
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists(), "no checkpoint appeared before the deadline"
    step = _ckpt_step(last)
    assert step > 0 and step % 5 == 0
    result = train_vae(
        data["isolated"], out, resume=True, max_steps=step + 7, checkpoint_every=5, patience=0
    )
    assert result.global_step == step + 7
    assert _ckpt_step(last) == step + 7
    versions = sorted((out / "logs").glob("version_*"))
    assert len(versions) == 2  # the resumed run logs next to the killed run's metrics
    assert (out / "model.safetensors").exists()


def test_ddp_two_cpu_ranks_end_identical(data, tmp_path):
    out = tmp_path / "ddp"
    script = _script(
        tmp_path,
        f"""
        from safetensors.torch import save_file
        TINY.update(arch="paper", batch_size=16)
        r = train_vae({str(data["isolated"])!r}, {str(out)!r}, epochs=2, steps_per_epoch=4,
                      devices=2, strategy="ddp", **TINY)
        assert r.module.trainer.world_size == 2
        state = {{k: v.contiguous() for k, v in r.module.net.state_dict().items()}}
        save_file(state, {str(out)!r} + f"/rank{{r.module.global_rank}}.safetensors")
        """,
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=150
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [load_file(out / f"rank{r}.safetensors") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    assert _ckpt_step(out / "checkpoints" / "last.ckpt") == 8


def test_cli_arguments(tmp_path):
    """Also covers the Gaussian loss and training on stored noise (``detected`` centring)."""
    from vaedeblend.cli_train import add_train_arguments

    detected = write_tiny_dataset(tmp_path / "det.h5", n=64, centring="detected")

    parser = argparse.ArgumentParser()
    add_train_arguments(parser.add_subparsers(dest="command"))
    argv = f"train vae --data {detected} --out {tmp_path / 'cli'} --arch fast --loss gaussian"
    argv += " --epochs 1 --steps-per-epoch 2 --batch-size 8 --accelerator cpu --devices 1"
    args = parser.parse_args([*argv.split(), "--max-time", "60", "--no-progress"])
    assert args.func(args) == 0
    cfg = load_model(tmp_path / "cli").config
    assert cfg["architecture"]["arch"] == "fast" and cfg["loss"] == "gaussian"
    assert cfg["beta"] == 1.0 and cfg["training"]["stored_noise"] is True
    assert cfg["training"]["settings"]["steps_per_epoch"] == 2
    assert cfg["training"]["settings"]["max_time"] == 60.0
