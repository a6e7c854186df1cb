"""Wrong answers made impossible: leftovers of another run, bad sizes, NaN inputs, checkpoints
that would run code, and errors that end as one line with exit code 2 (issue 11). Each test here
failed on the code before the fix it names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from tiny_stamps import TINY_NETWORK, write_tiny_dataset

from vaedeblend import cli
from vaedeblend.dataset import open_dataset
from vaedeblend.models import load_model
from vaedeblend.models.training import train_vae

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SIM = ["simulate", "--instruments", "lsst", "--stamp-size", "16", "--workers", "0", "--quiet"]
SIM += ["--kind", "isolated", "--n", "20", "--shard-size", "10"]


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "isolated": write_tiny_dataset(root / "iso.h5", n=96, seed=0),
        "blended": write_tiny_dataset(root / "blend.h5", n=96, blended=True, seed=1),
    }


@pytest.fixture(scope="module")
def tiny_model(tiny_sets, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "vae"
    train_vae(tiny_sets["isolated"], out, max_steps=2, steps_per_epoch=2, **TINY_NETWORK)
    return load_model(out)


@pytest.fixture(scope="module")
def real_set(tmp_path_factory):
    """20 simulated LSST isolated stamps, 16x16 (the simulator's own layout, PSFs included)."""
    path = tmp_path_factory.mktemp("sim") / "iso.h5"
    assert cli.main([*SIM, "--seed", "1", "--out", str(path)]) == 0
    return path


# -- 1. a restarted simulate never reuses another run's shards -----------------------------------
def _spec(args):
    return cli.simulation_spec(cli.build_parser().parse_args(args))


def test_restart_with_another_seed_discards_the_old_shards(real_set, tmp_path, capsys):
    from vaedeblend.simulation import simulate_shard

    # A seed-1 run killed after its first shard leaves x.h5.parts/ with that shard ...
    out = tmp_path / "x.h5"
    parts = tmp_path / "x.h5.parts"
    parts.mkdir()
    seed1 = _spec([*SIM, "--seed", "1", "--out", str(out)])
    simulate_shard(seed1, 0, 10, str(parts / "shard_000000000_000000010.h5"))
    capsys.readouterr()
    # ... and a rerun with seed 2 must not take it as its own rows 0-9.
    assert cli.main([*SIM, "--seed", "2", "--out", str(out)]) == 0
    assert "discarded 1 leftover shard" in capsys.readouterr().err
    with open_dataset(out) as ds, open_dataset(real_set) as clean_seed1:
        assert ds.meta["seed"] == 2
        seed2_rows, seed1_rows = ds.read("blend"), clean_seed1.read("blend")
    # Before the fix rows 0-9 equalled seed 1's; no row may equal any seed-1 row now.
    assert not any(np.array_equal(a, b) for a in seed2_rows for b in seed1_rows)


def test_restart_with_the_same_arguments_keeps_its_shards(real_set, tmp_path):
    from vaedeblend.simulation import simulate_shard

    args = [*SIM, "--seed", "1", "--out", str(tmp_path / "y.h5")]
    spec = _spec(args)
    parts = tmp_path / "y.h5.parts"
    parts.mkdir()
    shard = parts / "shard_000000000_000000010.h5"
    simulate_shard(spec, 0, 10, str(shard))
    mtime = shard.stat().st_mtime_ns
    from vaedeblend.simulation import discard_foreign_shards

    assert discard_foreign_shards(parts, spec, [shard]) == []
    assert shard.stat().st_mtime_ns == mtime
    assert cli.main(args) == 0
    with open_dataset(tmp_path / "y.h5") as a, open_dataset(real_set) as b:
        np.testing.assert_array_equal(a.read("blend"), b.read("blend"))


# -- 2. sizes and counts are validated ------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_model_refuses_bad_batch_sizes(tiny_model, batch_size):
    stamps = np.ones((3, 3, 16, 16), np.float32)
    for call in (tiny_model.deblend, tiny_model.encode):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            call(stamps, batch_size=batch_size)
    with pytest.raises(ValueError, match="batch_size"):
        tiny_model.decode(np.zeros((2, tiny_model.latent_dim)), batch_size=batch_size)


def test_batch_size_does_not_change_results_and_empty_batches_work(tiny_model):
    stamps = np.random.default_rng(0).normal(100, 10, (5, 3, 16, 16)).astype(np.float32)
    # batched and whole runs of the same eval-mode network: equal to float32 rounding
    np.testing.assert_allclose(
        tiny_model.deblend(stamps, batch_size=2), tiny_model.deblend(stamps), rtol=1e-5
    )
    assert tiny_model.deblend(np.zeros((0, 3, 16, 16))).shape == (0, 3, 16, 16)
    mu, sigma = tiny_model.encode(np.zeros((0, 3, 16, 16)))
    assert mu.shape == sigma.shape == (0, tiny_model.latent_dim)


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "--model", "none", "--batch-size", "-1"],
        ["evaluate", "--model", "none", "--batch-size", "0"],
        ["evaluate", "--model", "none", "--limit", "0"],
        ["simulate", "--n", "10", "--seed", "1", "--shard-size", "-5"],
        ["simulate", "--n", "0", "--seed", "1"],
        ["train", "vae", "--steps-per-epoch", "0"],
        ["train", "vae", "--batch-size", "-3"],
    ],
)
def test_cli_refuses_non_positive_sizes(args, capsys, tmp_path):
    full = [*args, "--out", str(tmp_path / "o"), "--data", str(tmp_path / "d.h5")]
    if args[0] == "simulate":
        full = [*args, "--out", str(tmp_path / "o.h5")]
    with pytest.raises(SystemExit) as exc:
        cli.main(full)
    assert exc.value.code == 2
    assert ">= 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_training_api_refuses_zero_steps_per_epoch(tiny_sets, tmp_path):
    with pytest.raises(ValueError, match="steps_per_epoch"):
        train_vae(tiny_sets["isolated"], tmp_path / "r", steps_per_epoch=0, **TINY_NETWORK)


# -- 3. NaN inputs are named where the data enters -------------------------------------------------
def _with_nan(src: Path, dst: Path, name: str, index: int) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        data = f[name][...]
        data[index, 0, 3, 3] = np.nan
        f[name][...] = data
    return dst


@pytest.mark.parametrize("name", ["blend", "target"])
def test_training_names_nan_samples(tiny_sets, tmp_path, name):
    bad = _with_nan(tiny_sets["isolated"], tmp_path / "nan.h5", name, 7)
    with pytest.raises(ValueError, match=rf"'{name}' has NaN .* 1 of 96 samples \(indices 7\)"):
        train_vae(bad, tmp_path / "r", max_steps=1, **TINY_NETWORK)
    assert not (tmp_path / "r" / "checkpoints").exists()  # a rerun is not blocked


@pytest.mark.parametrize("model", ["none", "truth"])
def test_evaluation_refuses_nan_stamps(real_set, tmp_path, model, capsys):
    name = "blend" if model == "none" else "target"
    bad = _with_nan(real_set, tmp_path / "nan.h5", name, 4)
    rc = cli.main(["evaluate", "--model", model, "--data", str(bad), "--out", str(tmp_path / "e")])
    assert rc == 2
    assert "1 of 20 stamps hold NaN or infinite pixels (indices 4)" in capsys.readouterr().err


def test_evaluation_refuses_nan_in_a_deblended_file(real_set, tmp_path, capsys):
    with open_dataset(real_set) as ds:
        out, fp = ds.read("target"), ds.meta["fingerprint"]
    out[11, 2] = np.inf
    path = tmp_path / "deb.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("deblended", data=out)
        f.attrs["fingerprint"] = fp
    args = ["evaluate", "--deblended", str(path), "--data", str(real_set), "--out", "e"]
    assert cli.main(args) == 2
    assert "output: 1 of 20 stamps hold NaN" in capsys.readouterr().err


# -- 4. a training checkpoint cannot run code -----------------------------------------------------
class _Payload:
    """Unpickling this object would create the file ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_resume_refuses_a_checkpoint_that_would_run_code(tiny_sets, tmp_path):
    run = tmp_path / "run"
    train_vae(tiny_sets["isolated"], run, max_steps=2, steps_per_epoch=2, **TINY_NETWORK)
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)  # this run's own file: plain values
    marker = tmp_path / "code-ran"
    checkpoint["extra"] = _Payload(str(marker))
    torch.save(checkpoint, last)
    with pytest.raises(ValueError, match="refused to load this checkpoint"):
        train_vae(tiny_sets["isolated"], run, max_steps=4, resume=True, **TINY_NETWORK)
    assert not marker.exists()


def test_resume_still_works(tiny_sets, tmp_path):
    run = tmp_path / "run"
    train_vae(tiny_sets["isolated"], run, max_steps=2, steps_per_epoch=2, **TINY_NETWORK)
    result = train_vae(
        tiny_sets["isolated"], run, max_steps=4, steps_per_epoch=2, resume=True, **TINY_NETWORK
    )
    assert result.global_step == 4


# -- 5, 8, 12: short runs, --limit, data kinds ---------------------------------------------
def test_a_run_shorter_than_one_epoch_exports_its_model(tiny_sets, tmp_path):
    # default patience (early stopping on) and steps_per_epoch (128) > max_steps: before the
    # fix this failed with "Early stopping conditioned on metric `val_loss` which is not
    # available" and left no model
    result = train_vae(tiny_sets["isolated"], tmp_path / "r", max_steps=2, **TINY_NETWORK)
    assert result.global_step == 2
    assert load_model(tmp_path / "r").kind == "vae"


@pytest.mark.parametrize("model", ["none", "truth"])
def test_evaluate_limit_with_a_model(real_set, tmp_path, model):
    out = tmp_path / "e"
    args = ["evaluate", "--model", model, "--data", str(real_set), "--out", str(out)]
    assert cli.main([*args, "--limit", "10"]) == 0
    assert (out / "metrics.json").exists()
    assert np.load(out / "per_galaxy.npz")["snr"].shape == (10,)


def test_training_refuses_the_wrong_kind_of_data(tiny_sets, tmp_path, tiny_model):
    with pytest.raises(ValueError, match="holds blended stamps; a vae trains on isolated"):
        train_vae(tiny_sets["blended"], tmp_path / "v", max_steps=1, **TINY_NETWORK)
    from vaedeblend.models.training import train_deblender

    with pytest.raises(ValueError, match="holds isolated stamps; a deblender trains on blended"):
        train_deblender(tiny_model.path, tiny_sets["isolated"], tmp_path / "d", max_steps=1)


# -- 10. errors are one line ----------------------------------------------------------------------
def test_library_errors_are_one_line(real_set, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    not_h5 = tmp_path / "not.h5"
    not_h5.write_text("hello")
    cases = [
        ["evaluate", "--deblended", str(not_h5), "--data", str(real_set), "--out", "e"],
        ["evaluate", "--model", str(model), "--data", str(real_set), "--out", "e"],
        ["evaluate", "--model", "none", "--data", str(not_h5), "--out", "e"],
        [*SIM, "--seed", "1", "--out", str(tmp_path), "--n", "1"],
        [*SIM, "--seed", "1", "--out", str(tmp_path / "big.h5"), "--stamp-size", "30000"],
    ]
    os.environ.pop(cli.DEBUG_ENV, None)
    for args in cases:
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err


# -- 6. short band names ---------------------------------------------------------------------------
def test_short_band_names_map_onto_the_model(tiny_model):
    from vaedeblend.models.api import BandMismatchError, expand_band_names

    stamps = np.random.default_rng(2).normal(100, 10, (2, 3, 16, 16)).astype(np.float32)
    # the tiny model's bands are lsst_g, lsst_r, lsst_i; given as i, g, r (any case)
    short = tiny_model.deblend(stamps[:, [2, 0, 1]], bands=["I", "g", "r"])
    np.testing.assert_array_equal(short, tiny_model.deblend(stamps)[:, [2, 0, 1]])
    with pytest.raises(BandMismatchError, match="ambiguous"):
        expand_band_names(["y"], ["lsst_y", "euclid_y"])
    assert expand_band_names(["vis", "lsst_r", "q"], ["lsst_r", "euclid_vis"]) == [
        "euclid_vis",
        "lsst_r",
        "q",  # matches nothing: kept, so that the permutation check names it
    ]


# -- 11. one rule for existing outputs -------------------------------------------------------------
def test_simulate_refuses_to_replace_a_file_without_overwrite(real_set, tmp_path, capsys):
    out = tmp_path / "x.h5"
    out.write_text("my notes")
    assert cli.main([*SIM, "--seed", "1", "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "my notes"
    assert cli.main([*SIM, "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    with open_dataset(out) as ds, open_dataset(real_set) as same:
        np.testing.assert_array_equal(ds.read("blend"), same.read("blend"))


def test_output_folder_rule(tmp_path):
    from vaedeblend.fieldmode.outputs import MANIFEST, OutputDir

    out = tmp_path / "out"
    with OutputDir(out) as first:
        for name in ("catalog.fits", "stamps.fits"):
            first.path(name).write_text("run 1")
        first.commit()
    (out / "notes.txt").write_text("mine")
    # a killed run's temporary folder (no process has this pid)
    stale = out / ".vaedeblend-tmp-999999999-abc"
    stale.mkdir()
    with pytest.raises(FileExistsError, match="earlier run .*--overwrite"):
        OutputDir(out)
    with OutputDir(out, overwrite=True) as second:
        second.path("catalog.fits").write_text("run 2")
        second.commit()
    assert (out / "catalog.fits").read_text() == "run 2"
    assert not (out / "stamps.fits").exists()  # run 1's output, not rewritten: removed
    assert (out / "notes.txt").read_text() == "mine"  # not ours: never touched
    assert not stale.exists()
    assert json.loads((out / MANIFEST).read_text()) == ["catalog.fits"]


# -- 7. the start-up cache -------------------------------------------------------------------------
def test_disk_cache_gives_the_computed_value_and_survives_corruption(tmp_path, monkeypatch):
    from vaedeblend.cache import disk_cached

    monkeypatch.setenv("VAEDEBLEND_CACHE", str(tmp_path / "cache"))
    calls = []

    def compute():
        calls.append(1)
        return np.arange(5.0) ** 2

    first = disk_cached(("test", 1), compute)
    again = disk_cached(("test", 1), compute)
    np.testing.assert_array_equal(first, again)
    assert len(calls) == 1  # the second came from disk
    (entry,) = (tmp_path / "cache").glob("*.npy")
    entry.write_bytes(b"garbage")  # a corrupt entry is recomputed, not trusted
    np.testing.assert_array_equal(disk_cached(("test", 1), compute), first)
    assert len(calls) == 2
    monkeypatch.setenv("VAEDEBLEND_CACHE", "off")
    disk_cached(("test", 1), compute)
    assert len(calls) == 3
