"""Malformed arguments and files thrown at every command, in process, from a seeded loop: each
must end with a short error naming the problem (argparse's usage message counts), exit code 2,
no traceback, and nothing left behind in the output location (issue 11)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import h5py
import numpy as np
import pytest

from vaedeblend import cli

BAD_INTS = ["0", "-1", "-7", "abc", "1.5", ""]
BAD_FLOATS = ["nan?", "x", ""]


def _bad_files(root: Path) -> dict[str, Path]:
    """Files that are not what a command expects."""
    root.mkdir(exist_ok=True)
    text = root / "text.h5"
    text.write_text("not hdf5\n")
    empty = root / "empty.h5"
    with h5py.File(empty, "w"):
        pass
    no_meta = root / "no_meta.h5"
    with h5py.File(no_meta, "w") as f:
        f.create_dataset("blend", data=np.zeros((2, 3, 8, 8), np.float32))
    model = root / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    truncated = root / "truncated"
    truncated.mkdir(exist_ok=True)
    (truncated / "config.json").write_text('{"format": "vaedeblend-model"}')
    (truncated / "model.safetensors").write_bytes(b"\x08\x00\x00")
    fits_text = root / "image.fits"
    fits_text.write_text("SIMPLE = nonsense")
    return {
        "text": text, "empty": empty, "no_meta": no_meta, "missing": root / "missing.h5",
        "model": model, "truncated": truncated, "fits": fits_text, "dir": root,
    }  # fmt: skip


def _cases(rng: np.random.Generator, files: dict[str, Path], out: Path) -> list[list[str]]:
    sim = "simulate --instruments lsst --stamp-size 16 --workers 0 --quiet --kind isolated"
    sim = [*sim.split(), "--seed", "1", "--out", str(out / "sim.h5")]

    def pick(values):
        return str(values[rng.integers(len(values))])

    data_files = [files[k] for k in ("text", "empty", "no_meta", "missing", "dir")]
    models = [files["model"], files["truncated"], out / "nowhere", "not-a-shipped-name"]
    cases = []
    for _ in range(4):
        cases += [
            [*sim, "--n", pick(BAD_INTS)],
            [*sim, "--n", "4", "--shard-size", pick(BAD_INTS)],
            [*sim, "--n", "4", "--stamp-size", pick(["0", "30000", "-16", "x"])],
            [*sim, "--n", "4", "--preset", pick(["lsst", "", "PAPER"])],
            [*sim, "--n", "4", "--annulus", pick(["1", "a,b", "1,2,3"])],
            [*sim, "--n", "4", "--catalog", "catsim", "--catalog-path", pick(data_files)],
            [*sim, "--n", "4", "--count-probabilities", pick(["a,b", "-1,2", "0,0"])],
            ["evaluate", "--model", "none", "--data", pick(data_files), "--out", str(out / "e")],
            [
                "evaluate",
                "--model",
                pick(models),
                "--data",
                pick(data_files),
                "--out",
                str(out / "e"),
            ],  # fmt: skip
            [
                "evaluate",
                "--deblended",
                pick(data_files),
                "--data",
                pick(data_files),
                "--out",
                str(out / "e"),
            ],  # fmt: skip
            [
                "evaluate",
                "--model",
                "none",
                "--data",
                pick(data_files),
                "--out",
                str(out / "e"),
                "--batch-size",
                pick(BAD_INTS),
            ],  # fmt: skip
            ["train", "vae", "--data", pick(data_files), "--out", str(out / "t")],
            [
                "train",
                "vae",
                "--data",
                pick(data_files),
                "--out",
                str(out / "t"),
                "--max-steps",
                pick(BAD_INTS),
            ],  # fmt: skip
            [
                "train",
                "deblender",
                "--vae",
                pick(models),
                "--data",
                pick(data_files),
                "--out",
                str(out / "d"),
            ],  # fmt: skip
            [
                "deblend",
                pick([files["fits"], files["text"], out / "none.fits"]),
                "--model",
                pick(["lsst", *models]),
                "--out",
                str(out / "f"),
            ],  # fmt: skip
            ["compare", pick([files["dir"], out / "nowhere"]), "--out", str(out / "c")],
            [
                "baseline",
                pick(["sep", "none", "magic"]),
                "--data",
                pick(data_files),
                "--out",
                str(out / "b.h5"),
            ],  # fmt: skip
            [
                "shear-bias",
                "--model",
                "truth",
                "--data",
                pick(data_files),
                "--out",
                str(out / "s"),
            ],  # fmt: skip
        ]
    return cases


def _run(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(args)
        except SystemExit as exc:  # argparse's usage error
            code = exc.code
    return code, err.getvalue()


@pytest.mark.slow
def test_malformed_arguments_and_files(tmp_path, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    files = _bad_files(tmp_path / "inputs")
    out = tmp_path / "outputs"
    out.mkdir()
    rng = np.random.default_rng(20261202)
    for args in _cases(rng, files, out):
        code, err = _run(args)
        shown = " ".join(args)
        assert code == 2, f"{shown}: exit {code}\n{err}"
        assert "Traceback" not in err, f"{shown}:\n{err}"
        lines = [line for line in err.strip().splitlines() if line.strip()]
        # one line of ours, or argparse's usage line(s) ending in "error: ..."
        assert lines and "error" in lines[-1], f"{shown}: no error line\n{err}"
        assert len(lines) == 1 or lines[0].startswith("usage:"), f"{shown}:\n{err}"
        assert len(lines[-1]) < 400, f"{shown}: message too long\n{err}"
        left = sorted(p.name for p in out.iterdir())
        assert left == [], f"{shown}: left {left}"
