"""benchmarks/train_pretrained.sh, the script that trains the shipped models, on a tiny run."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_pretrained.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_train_script_runs_vae_then_deblender(tmp_path):
    env = dict(
        os.environ,
        VAEDEBLEND_HOME=str(tmp_path),
        N_ISO="24",
        N_BLEND="24",
        TRAIN_EXTRA="--max-steps 2 --steps-per-epoch 1 --batch-size 8",
    )
    subprocess.run(["bash", str(SCRIPT), "1", "1", "lsst"], env=env, check=True, timeout=900)
    runs = tmp_path / "runs"
    vae = json.loads((runs / "vae_lsst" / "config.json").read_text())
    deb = json.loads((runs / "deblender_lsst" / "config.json").read_text())
    assert (runs / "vae_lsst" / "DONE").exists() and (runs / "deblender_lsst" / "DONE").exists()
    # the deblender is the VAE's architecture, with its normalisation, on the detected set
    assert deb["architecture"] == vae["architecture"] and vae["architecture"]["arch"] == "fast"
    assert deb["norm_constants_electrons"] == vae["norm_constants_electrons"]
    assert deb["training"]["centring"] == "detected" and vae["training"]["centring"] == "uniform"
    assert deb["band_ids"] == [f"lsst_{b}" for b in "ugrizy"]
    # a second call finds everything done and trains nothing again
    before = (runs / "deblender_lsst" / "model.safetensors").stat().st_mtime_ns
    subprocess.run(["bash", str(SCRIPT), "1", "1", "lsst"], env=env, check=True, timeout=300)
    assert (runs / "deblender_lsst" / "model.safetensors").stat().st_mtime_ns == before


def test_train_script_refuses_an_unknown_model_name(tmp_path):
    env = dict(os.environ, VAEDEBLEND_HOME=str(tmp_path))
    done = subprocess.run(
        ["bash", str(SCRIPT), "1", "1", "lsst", "hsc-deep"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "hsc-deep" in done.stderr
    assert not (tmp_path / "data" / "iso_lsst.h5").exists()  # refused before simulating anything


CENTRINGS = SCRIPT.parent / "train_centrings.sh"
PRETRAINED = SCRIPT.parents[1] / "src" / "vaedeblend" / "pretrained"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_centrings_script_trains_from_the_shipped_vae(tmp_path):
    """benchmarks/train_centrings.sh: a deblender for the paper table's centred row, trained on
    centred blends, keeps the shipped LSST VAE's decoder bit for bit and continues the shipped
    detected deblender (its encoder, and its lineage's step count)."""
    from safetensors.numpy import load_file

    env = dict(
        os.environ,
        VAEDEBLEND_HOME=str(tmp_path),
        N_BLEND="16",
        TRAIN_EXTRA="--max-steps 2 --steps-per-epoch 1 --batch-size 8",
    )
    subprocess.run(["bash", str(CENTRINGS), "1", "lsst_centred"], env=env, check=True, timeout=900)
    run = tmp_path / "runs" / "deblender_lsst_centred"
    deb = json.loads((run / "config.json").read_text())
    vae = json.loads((PRETRAINED / "lsst" / "vae" / "config.json").read_text())
    detected = json.loads((PRETRAINED / "lsst" / "deblender" / "config.json").read_text())
    assert (run / "DONE").exists() and deb["training"]["centring"] == "centred"
    assert deb["norm_constants_electrons"] == vae["norm_constants_electrons"]
    assert deb["training"]["lineage"]["steps"] == detected["training"]["lineage"]["steps"] + 2
    trained = load_file(run / "model.safetensors")
    shipped = load_file(PRETRAINED / "lsst" / "vae" / "model.safetensors")
    decoder = [k for k in shipped if k.startswith("decoder.")]
    assert decoder and all((trained[k] == shipped[k]).all() for k in decoder)
    # the encoder started from the detected deblender's and trained (2 steps of Adam move every
    # weight of the first convolution by about the learning rate)
    start = load_file(PRETRAINED / "lsst" / "deblender" / "model.safetensors")
    first = next(k for k in start if k.startswith("encoder.features") and k.endswith("weight"))
    moved = np.abs(trained[first] - start[first].astype(np.float32))
    assert 0 < moved.max() < 0.01


def test_centrings_script_refuses_an_unknown_name(tmp_path):
    env = dict(os.environ, VAEDEBLEND_HOME=str(tmp_path))
    done = subprocess.run(
        ["bash", str(CENTRINGS), "1", "hsc_centred"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "hsc_centred" in done.stderr
    assert not list((tmp_path / "data").glob("blend_*"))


GPU_SCRIPT = SCRIPT.parent / "gpu_continue.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_continues_the_shipped_models_on_cpu(tmp_path):
    """The prepared accelerator script, with a tiny budget on this CPU: it continues the shipped
    LSST VAE and deblender (lineage: the shipped run, then this one), the deblender on the
    continued VAE's decoder, and leaves only the models in the output folder."""
    from safetensors.numpy import load_file

    env = dict(
        os.environ, N_ISO="16", N_BLEND="16", WORKERS="0",
        TRAIN_EXTRA="--max-steps 2 --steps-per-epoch 1 --batch-size 8",
        ENCODER_WIDTHS="32,64,128,256", ENCODER_DENSE_DIM="384",
    )  # fmt: skip
    subprocess.run(["bash", str(GPU_SCRIPT), str(tmp_path), "1", "1", "lsst"], env=env,
                   check=True, timeout=900)  # fmt: skip
    vae = json.loads((tmp_path / "vae_lsst" / "config.json").read_text())
    deb = json.loads((tmp_path / "deblender_lsst" / "config.json").read_text())
    shipped = json.loads((PRETRAINED / "lsst" / "vae" / "config.json").read_text())
    lineage = vae["training"]["lineage"]
    before = shipped["training"].get("lineage") or {
        "steps": shipped["training"]["global_step"], "runs": [{"init_from": None}]
    }  # fmt: skip
    assert lineage["steps"] == before["steps"] + 2
    assert [r["init_from"] for r in lineage["runs"]] == [
        *(r["init_from"] for r in before["runs"]),
        "lsst",
    ]
    assert deb["training"]["lineage"]["runs"][-1]["init_from"] == "lsst"
    # the deblenders are continued with the shape and response penalties (SHAPE_WEIGHT and
    # RESPONSE_WEIGHT defaults), the VAE not
    assert deb["training"]["settings"]["shape_weight"] == 2000
    assert deb["training"]["settings"]["response_weight"] == 1000
    # the running per-bin penalty over ~3,200 galaxies: 13 batches of BATCH's 256 (the
    # script's default; TRAIN_EXTRA's --batch-size only shrinks the test's steps)
    assert deb["training"]["settings"]["response_memory"] == 13
    assert vae["training"]["settings"]["shape_weight"] == 0
    # the deblender's encoder grown wider than its VAE's (ENCODER_WIDTHS), the decoder the VAE's
    assert deb["architecture"]["encoder_widths"] == [32, 64, 128, 256]
    assert deb["architecture"]["encoder_dense_dim"] == 384
    assert deb["architecture"]["widths"] == vae["architecture"]["widths"]
    v, d = (
        load_file(tmp_path / "vae_lsst" / "model.safetensors"),
        load_file(tmp_path / "deblender_lsst" / "model.safetensors"),
    )
    assert all((v[k] == d[k]).all() for k in v if k.startswith("decoder."))
    assert not list((tmp_path / "data").iterdir())  # the simulated sets do not come back
    assert not (tmp_path / "vae_lsst" / "checkpoints").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_with_no_vae_minutes_continues_the_deblender_on_the_shipped_decoder(tmp_path):
    """VAE_MINUTES 0: no VAE is simulated for or trained; the deblender is continued on the
    shipped VAE's frozen decoder (its values exactly: the shipped float16 weights widened)."""
    from safetensors.numpy import load_file

    env = dict(
        os.environ, N_ISO="16", N_BLEND="16", WORKERS="0", FLUX_WEIGHT="200",
        EMA_DECAY="0.998", EXPORT_WEIGHTS="last",
        TRAIN_EXTRA="--max-steps 2 --steps-per-epoch 1 --batch-size 8",
    )  # fmt: skip
    subprocess.run(["bash", str(GPU_SCRIPT), str(tmp_path), "0", "0.25", "lsst"], env=env,
                   check=True, timeout=900)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "deblender_lsst"]
    # the recipe shipped in the ninth session of 2026-12-06 reaches the deblender's training
    settings = json.loads((tmp_path / "deblender_lsst" / "config.json").read_text())
    settings = settings["training"]["settings"]
    assert (settings["flux_weight"], settings["flux_memory"]) == (200, 13)
    assert (settings["ema_decay"], settings["export_weights"]) == (0.998, "last")
    shipped = load_file(PRETRAINED / "lsst" / "vae" / "model.safetensors")
    deb = load_file(tmp_path / "deblender_lsst" / "model.safetensors")
    decoder = [k for k in shipped if k.startswith("decoder.")]
    assert decoder and all((deb[k] == shipped[k].astype(deb[k].dtype)).all() for k in decoder)
