"""TrainConfig (issue 14, step 4): one frozen, self-checking place for every training default,
used by the training entry points, the Lightning module and the command line."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from vaedeblend import cli
from vaedeblend.training_config import DEFAULTS, TrainConfig, defaults


def test_the_head_follows_the_loss_unless_given():
    assert TrainConfig().head == "sigmoid"
    assert TrainConfig(loss="mse").head == "asinh"
    assert TrainConfig(loss="gaussian", head="asinh").head == "asinh"
    assert defaults()["head"] is None  # the declared default: "the loss's own"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"steps_per_epoch": -3}, "steps_per_epoch"),
        ({"loss": "bce", "head": "asinh"}, "needs the output head"),
        ({"arch": "resnet"}, "arch must be one of"),
        ({"scheduler": "step"}, "unknown scheduler"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"patience": -1}, "patience"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"weights_dtype": "int8"}, "weights_dtype"),
        ({"flux_blendedness_edges": (0.3, 0.1)}, "flux_blendedness_edges must be increasing"),
        ({"flux_blendedness_edges": (0.1, 1.0)}, "flux_blendedness_edges must be increasing"),
    ],
)
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_unknown_keys_are_refused_and_configs_are_frozen():
    with pytest.raises(TypeError, match="unknown training settings"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.lr = 1.0
    assert TrainConfig.from_dict(DEFAULTS.to_dict()) == DEFAULTS


def test_the_module_and_the_command_line_take_their_defaults_from_it(capsys):
    from vaedeblend.models.lightning import VAEModule
    from vaedeblend.models.training import TRAIN_DEFAULTS

    assert TRAIN_DEFAULTS == defaults()
    signature = inspect.signature(VAEModule.__init__).parameters
    for name in ("loss", "lr", "scheduler", "patience", "epochs", "warmup_steps", "noise_draw",
                 "augment", "seed"):  # fmt: skip
        assert signature[name].default == getattr(DEFAULTS, name), name
    with pytest.raises(SystemExit):
        cli.main(["train", "vae", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (f"default {DEFAULTS.epochs}", f"default {DEFAULTS.batch_size}",
                  f"default {DEFAULTS.lr:g}", f"default {DEFAULTS.noise_draw}",
                  "(default 0.02,0.1,0.25,0.4;"):  # fmt: skip
        assert shown in text, shown


def test_flux_edges_on_the_command_line_are_checked_before_training(capsys):
    """--flux-edges: outside (0, 1) or not increasing is one usage line and exit code 2."""
    for bad in ("0.4,0.1", "0.1,1.5", "a,b"):
        with pytest.raises(SystemExit) as stop:
            cli.main(["train", "deblender", "--vae", "v", "--data", "d.h5", "--out", "o",
                      "--flux-edges", bad])  # fmt: skip
        assert stop.value.code == 2
        assert "--flux-edges" in capsys.readouterr().err
